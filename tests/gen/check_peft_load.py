#!/usr/bin/env python3
"""check_peft_load.py — load a LoRA adapter written by safe-update with PEFT, and compare.

    bin/safe-convert BASE base-hf                 # the base as a Hugging Face directory
    bin/safe-convert ADAPTER merged-hf            # safe's merge of the adapter onto it
    python3 tests/gen/check_peft_load.py ADAPTER base-hf merged-hf

Loads base-hf with transformers (fp32), puts the adapter on it with
peft.PeftModel.from_pretrained (PEFT's own reading of adapter_config.json and
adapter_model.safetensors, its own scale and low-rank path) and compares its logits on random
token sequences with those of merged-hf, safe's merge W + s B A. Prints the largest difference
relative to the largest logit; exit status 0 when it is below 1e-4 (fp32), 1 otherwise.
Needs torch, transformers and peft (pip); not part of make test.
"""
import argparse
import sys


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("adapter")
    ap.add_argument("base_hf")
    ap.add_argument("merged_hf")
    ap.add_argument("--seqs", type=int, default=4)
    ap.add_argument("--len", type=int, default=24)
    a = ap.parse_args()
    import peft
    import torch
    import transformers
    from transformers import AutoModelForCausalLM
    transformers.logging.set_verbosity_error()

    base = AutoModelForCausalLM.from_pretrained(a.base_hf, torch_dtype=torch.float32)
    with_adapter = peft.PeftModel.from_pretrained(base, a.adapter).eval()
    merged = AutoModelForCausalLM.from_pretrained(a.merged_hf, torch_dtype=torch.float32).eval()
    cfg = with_adapter.peft_config["default"]
    print(f"== peft {peft.__version__}: {a.adapter}: r {cfg.r}, lora_alpha {cfg.lora_alpha}, "
          f"targets {sorted(cfg.target_modules)}, rslora {cfg.use_rslora}")

    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, base.config.vocab_size, (a.seqs, a.len), generator=g)
    with torch.no_grad():
        lp = with_adapter(input_ids=ids).logits
        lm = merged(input_ids=ids).logits
        with with_adapter.disable_adapter():
            lb = with_adapter(input_ids=ids).logits
    scale = lm.abs().max().item()
    err = (lp - lm).abs().max().item() / scale
    print(f"== logits, {a.seqs} x {a.len} random tokens: max |peft - safe merged| = {err:.2e} of max |logit| {scale:.3g}")
    print(f"   (the adapter moves the logits by up to {(lp - lb).abs().max().item():.3g})")
    return 0 if err < 1e-4 else 1


if __name__ == "__main__":
    sys.exit(main())
