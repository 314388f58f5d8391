#!/usr/bin/env python3
"""check_transformers_load.py — load a checkpoint directory written by safe with transformers.

    python3 tests/gen/check_transformers_load.py DIR [--gguf MODEL.gguf] [--prompt TEXT]

Loads DIR with AutoModelForCausalLM (fp32), checks that every weight is finite and that the
config matches the tensors, and prints a short greedy completion. The tokenizer is DIR's own
tokenizer.json (with its tokenizer_config.json) when it has one: safe writes them for a run
that started from a GGUF too (from the GGUF's tokenizer metadata). Else (an older checkpoint
that carries DIR/tokenizer.gguf, which transformers does not read) the one transformers builds
from --gguf, the source model. Exit status 0 when the checkpoint loads and runs, 1 otherwise.
Used by `make demo-smollm`; needs torch and transformers (>= 4.45 for --gguf).
"""
import argparse
import os
import sys


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dir")
    ap.add_argument("--gguf", help="GGUF model to take the tokenizer from when DIR has no tokenizer.json")
    ap.add_argument("--prompt", default="<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n")
    ap.add_argument("--max-new-tokens", type=int, default=24)
    a = ap.parse_args()
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer
    transformers.logging.set_verbosity_error()

    model = AutoModelForCausalLM.from_pretrained(a.dir, torch_dtype=torch.float32)
    model.eval()
    cfg = model.config
    n = sum(p.numel() for p in model.parameters())
    bad = [k for k, v in model.state_dict().items() if not torch.isfinite(v).all()]
    if bad:
        print(f"check_transformers_load: non-finite weights in {bad[:5]}", file=sys.stderr)
        return 1
    print(f"== transformers {transformers.__version__} loaded {a.dir}: {cfg.architectures[0]}, {n:,} parameters, "
          f"{cfg.num_hidden_layers} layers, hidden {cfg.hidden_size}, heads {cfg.num_attention_heads}/"
          f"{cfg.num_key_value_heads}, tied {cfg.tie_word_embeddings}")

    if os.path.exists(os.path.join(a.dir, "tokenizer.json")):
        tok = AutoTokenizer.from_pretrained(a.dir)
        print(f"== tokenizer: {a.dir}/tokenizer.json ({type(tok).__name__}, {len(tok)} tokens"
              f"{', chat template' if tok.chat_template else ''})")
    elif a.gguf:
        d, f = os.path.split(os.path.abspath(a.gguf))
        tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
        print(f"== tokenizer: built by transformers from {a.gguf} ({a.dir} has no tokenizer.json)")
    else:
        print("== no tokenizer.json and no --gguf: loaded, not generating")
        return 0
    ids = tok(a.prompt, add_special_tokens=False, return_tensors="pt").input_ids
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=a.max_new_tokens,
                             do_sample=False, pad_token_id=tok.eos_token_id)
    text = tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
    print(f"== greedy completion by transformers: {a.prompt.strip()!r} -> {text!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
