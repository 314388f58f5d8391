#!/usr/bin/python3
"""gen_hf_ref.py — fixtures for tests/test_hf.c and tests/test_gguf.c, made with transformers.

Run once from the repository root, after `make bin/safe-convert`, with the Debian interpreter
(python3-torch 1.13) and these packages (fixture generation only; `make test` never needs them):

    apt-get install python3-pip
    /usr/bin/python3 -m pip install --break-system-packages transformers==4.45.2 accelerate==0.33.0 \
        safetensors gguf==0.10.0 sentencepiece tokenizers
    /usr/bin/python3 tests/gen/gen_hf_ref.py

(transformers 4.45 is the last minor release line that still runs on torch 1.13 and the first
that dequantises Q4_1 GGUF tensors — it calls gguf-py's dequantize.)

Writes under tests/fixtures/hf/:

  llama_untied/       LlamaForCausalLM, GQA 4/2 heads, untied head, F32, with a byte-level BPE
                      tokenizer.json (300 tokens, trained here with `tokenizers`) and companions
  llama_tied_sharded/ LlamaForCausalLM, tied, F16, sharded: model-0000X-of-0000N + index.json
  qwen2_tied/         Qwen2ForCausalLM, q/k/v bias, tied, BF16
  qwen2_untied/       Qwen2ForCausalLM, q/k/v bias, untied, F32
  rm_llama/           LlamaForSequenceClassification (num_labels 1, pad_token_id 0), F32,
                      the same tokenizer as llama_untied
  rm_qwen2/           Qwen2ForSequenceClassification (num_labels 1, pad_token_id 0), F32
  <name>.ref          SAFEFIX1 records: tokens (B,T), mask (B,T), logits (B,T,V) and logp (B,T)
                      (log p(tokens[t+1]) at t, temperature 1) computed by transformers in
                      float64, and fp32_err: transformers' own fp32 max relative error against
                      that (the floor any fp32 engine can reach)
  rm_<name>.ref       tokens (B,T) right-padded, lens (B), score (B), and score_trunc_right /
                      score_trunc_left for --rm-max-length 5 (keep the first / the last 5 tokens)
  rm_text.ref         prompt/response texts (for the text path), their HF token ids, scores
  roundtrip.json      the transformers-side round trip, checked here: bin/safe-convert DIR OUT
                      (our checkpoint_load + checkpoint_save), transformers loads OUT, logits
                      compared with the original's (bitwise) — and the tokenizer loads from OUT
  gguf_types.gguf     one tensor per type F32/F16/BF16/Q8_0/Q4_0/Q4_1 (random blocks, including
                      f16 subnormal/negative scales), alignment 64, metadata of every value type
  gguf_types.ref      the tensors dequantised by gguf-py's gguf.quants.dequantize (float32)
  tiny_llama.gguf     llama_untied in llama.cpp's layout (q/k rows permuted as
                      convert_hf_to_gguf.py does), F32 — must give llama_untied.ref's logits
  tiny_llama_q.gguf   the same weights with matrices in Q8_0 / Q4_0 / Q4_1 (gguf-py quantize)
  tiny_llama_q.ref    logits (float64) of transformers' own GGUF loader (gguf_file=) on it
  tiny_qwen2.gguf     qwen2_tied in llama.cpp's layout (no permutation for qwen2), BF16
  smollm2.ref         SmolLM2-135M-Instruct (models/, tests/setup-smollm2.sh): prompt ids, the 64
                      greedy tokens transformers generates from the same GGUF (gguf_file=), and
                      the top logits at the last prompt position. Skipped when the model is absent.
  gen_report.json     what was checked at generation time, with versions

transformers 4.45 loads GGUF models without an `output.weight` (tied, like SmolLM2) with a
randomly initialised lm_head and tie_word_embeddings false; llama.cpp uses token_embd as the
output then, so this script ties lm_head to the embeddings before generating (recorded in the
report).
"""
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import zlib

import numpy as np
import torch

import gguf
import transformers
from gguf import GGMLQuantizationType as QT
from transformers import (AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM,
                          LlamaForSequenceClassification, Qwen2Config, Qwen2ForCausalLM,
                          Qwen2ForSequenceClassification)

OUT = "tests/fixtures/hf"
SMOLLM = "models/SmolLM2-135M-Instruct.Q4_1.gguf"
V = 300
FLOOR = 1.0   # relative errors |a - b| / max(|b|, FLOOR): logits and log-probs are O(1)
REPORT = {"transformers": transformers.__version__, "torch": torch.__version__, "gguf": getattr(gguf, "__version__", "0.10.0")}


class Writer:
    """SAFEFIX1: b"SAFEFIX1", then u32 name length, name, u32 dtype (0 f32, 1 i32), u64 count, values."""

    def __init__(self, path):
        self.f = open(path, "wb")
        self.f.write(b"SAFEFIX1")

    def add(self, name, arr, dtype):
        a = np.ascontiguousarray(np.asarray(arr).reshape(-1), dtype=np.float32 if dtype == 0 else np.int32)
        nb = name.encode()
        self.f.write(struct.pack("<I", len(nb)) + nb + struct.pack("<IQ", dtype, a.size))
        self.f.write(a.astype("<f4" if dtype == 0 else "<i4").tobytes())

    def f32(self, name, arr):
        self.add(name, arr, 0)

    def i32(self, name, arr):
        self.add(name, arr, 1)

    def close(self):
        self.f.close()


# ------------------------------------------------------------------------------------------
# tiny models

def common_cfg(**kw):
    base = dict(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, max_position_embeddings=64, rms_norm_eps=1e-5, initializer_range=0.1,
                bos_token_id=1, eos_token_id=2)
    base.update(kw)
    return base


def perturb(model, seed):
    """Random norm weights and biases (the defaults 1 and 0 would hide layout mistakes)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1 + 0.2 * torch.randn(p.shape, generator=g))
            elif name.endswith("bias"):
                p.copy_(0.2 * torch.randn(p.shape, generator=g))


def make_tokenizer(dirs):
    """A byte-level BPE tokenizer.json of exactly V tokens, trained on TinyStories prompts."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    data = os.environ.get("SAFE_DATA", "../shared/data")
    texts = [json.loads(l)["prompt"] for l in open(os.path.join(data, "tinystories/prompts.jsonl"))]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=V, special_tokens=["<pad>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer)
    assert tok.get_vocab_size() == V, tok.get_vocab_size()
    from transformers import PreTrainedTokenizerFast
    # model_max_length: transformers otherwise writes int(1e30), which strict JSON readers
    # (jansson) refuse as "too big integer"
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   model_max_length=64)
    for d in dirs:
        fast.save_pretrained(d)
    return fast


def batch_tokens(rng, B=4, T=12):
    """Left-, right- and both-padded rows of a (B, T) batch; pads hold token 0."""
    pads = [(0, 0), (3, 0), (0, 4), (2, 3)]
    tokens = np.zeros((B, T), np.int64)
    mask = np.zeros((B, T), np.int64)
    for b, (l, r) in enumerate(pads[:B]):
        n = T - l - r
        tokens[b, l:l + n] = rng.integers(3, V, n)
        mask[b, l:l + n] = 1
    return tokens, mask


def forward_logits(model, tokens, mask):
    """Logits (B, T, V) of a padded batch, each row run alone on its valid tokens (positions
    0..n-1) and scattered back; padded positions hold 0. (Eager attention turns fully masked
    left-pad rows into NaN that then leaks through 0 * NaN, so no padding reaches transformers.)"""
    B, T = tokens.shape
    out = None
    with torch.no_grad():
        for b in range(B):
            idx = np.nonzero(mask[b])[0]
            lg = model(input_ids=torch.tensor(tokens[b, idx][None, :])).logits[0]
            if out is None:
                out = torch.zeros((B, T, lg.shape[-1]), dtype=lg.dtype)
            out[b, torch.tensor(idx)] = lg
    return out


def logp_of(logits, tokens, mask):
    lp = torch.log_softmax(logits.double(), -1)
    B, T = tokens.shape
    out = np.zeros((B, T))
    for b in range(B):
        for t in range(T - 1):
            if mask[b, t] and mask[b, t + 1]:
                out[b, t] = lp[b, t, tokens[b, t + 1]].item()
    return out


def max_rel(a, b, mask, floor):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    e = np.abs(a - b) / np.maximum(np.abs(b), floor)
    return float(e[mask.astype(bool)].max())


def write_causal_ref(name, d):
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    tokens, mask = batch_tokens(rng)
    ref = AutoModelForCausalLM.from_pretrained(d, torch_dtype=torch.float64, attn_implementation="eager")
    f32 = AutoModelForCausalLM.from_pretrained(d, torch_dtype=torch.float32, attn_implementation="eager")
    L64 = forward_logits(ref, tokens, mask).numpy()
    L32 = forward_logits(f32, tokens, mask).numpy()
    lp64 = logp_of(torch.tensor(L64), tokens, mask)
    lp32 = logp_of(torch.tensor(L32), tokens, mask)
    err = max_rel(L32, L64, np.repeat(mask[:, :, None], V, 2), FLOOR)
    lp_mask = np.zeros_like(mask)
    lp_mask[:, :-1] = mask[:, :-1] * mask[:, 1:]
    lerr = max_rel(lp32, lp64, lp_mask, FLOOR)
    w = Writer(os.path.join(OUT, name + ".ref"))
    w.i32("tokens", tokens)
    w.i32("mask", mask)
    w.f32("logits", L64)
    w.f32("logp", lp64)
    w.i32("logp_mask", lp_mask)
    w.f32("fp32_err", [err, lerr])
    w.close()
    REPORT[name] = {"transformers_fp32_logits_rel_err": err, "transformers_fp32_logp_rel_err": lerr, "floor": FLOOR,
                  "max_abs_logit": float(np.abs(L64).max())}
    print(f"{name}: transformers fp32 vs float64: logits rel err {err:.2e}, logp {lerr:.2e} (floor {FLOOR}), "
          f"max |logit| {np.abs(L64).max():.3f}")
    return tokens, mask, L64


def make_causal():
    specs = {
        "llama_untied": (LlamaConfig, LlamaForCausalLM, dict(tie_word_embeddings=False, rope_theta=10000.0), torch.float32, None),
        "llama_tied_sharded": (LlamaConfig, LlamaForCausalLM, dict(tie_word_embeddings=True, rope_theta=50000.0), torch.float16, "20KB"),
        "qwen2_tied": (Qwen2Config, Qwen2ForCausalLM, dict(tie_word_embeddings=True, rope_theta=1000000.0, use_sliding_window=False), torch.bfloat16, None),
        "qwen2_untied": (Qwen2Config, Qwen2ForCausalLM, dict(tie_word_embeddings=False, rope_theta=10000.0, use_sliding_window=False), torch.float32, None),
    }
    for i, (name, (Cfg, Cls, kw, dtype, shard)) in enumerate(specs.items()):
        torch.manual_seed(100 + i)
        model = Cls(Cfg(**common_cfg(**kw)))
        perturb(model, 200 + i)
        d = os.path.join(OUT, name)
        shutil.rmtree(d, ignore_errors=True)
        model = model.to(dtype)
        if shard:
            model.save_pretrained(d, safe_serialization=True, max_shard_size=shard)
        else:
            model.save_pretrained(d, safe_serialization=True)
        write_causal_ref(name, d)


def make_rms(tok):
    specs = {
        "rm_llama": (LlamaConfig, LlamaForSequenceClassification, dict(rope_theta=10000.0)),
        "rm_qwen2": (Qwen2Config, Qwen2ForSequenceClassification, dict(rope_theta=1000000.0, use_sliding_window=False)),
    }
    for i, (name, (Cfg, Cls, kw)) in enumerate(specs.items()):
        torch.manual_seed(300 + i)
        model = Cls(Cfg(**common_cfg(num_labels=1, pad_token_id=0, **kw)))
        perturb(model, 400 + i)
        with torch.no_grad():   # a score head of the backbone's scale, so scores are O(1)
            model.score.weight.normal_(0, 0.5)
        d = os.path.join(OUT, name)
        shutil.rmtree(d, ignore_errors=True)
        model.save_pretrained(d, safe_serialization=True)
        if name == "rm_llama":
            tok.save_pretrained(d)
        ref = Cls.from_pretrained(d, torch_dtype=torch.float64, attn_implementation="eager").eval()
        f32 = Cls.from_pretrained(d, torch_dtype=torch.float32, attn_implementation="eager").eval()
        rng = np.random.default_rng(500 + i)
        B, T = 5, 11
        lens = np.array([11, 7, 3, 9, 1])
        tokens = np.zeros((B, T), np.int64)   # right-padded with pad_token_id 0 (absent from the rows)
        for b in range(B):
            tokens[b, :lens[b]] = rng.integers(3, V, lens[b])
        mask = (np.arange(T)[None, :] < lens[:, None]).astype(np.int64)

        def scores(model, toks, msk):
            with torch.no_grad():
                return model(input_ids=torch.tensor(toks), attention_mask=torch.tensor(msk)).logits[:, 0].double().numpy()

        s64, s32 = scores(ref, tokens, mask), scores(f32, tokens, mask)
        # truncation to 5 tokens: keep the first 5 (HF truncation_side "right") or the last 5 ("left")
        K = 5
        tr = np.zeros((B, K), np.int64)
        tl = np.zeros((B, K), np.int64)
        for b in range(B):
            row = tokens[b, :lens[b]]
            a, z = row[:K], row[-K:]
            tr[b, :len(a)] = a
            tl[b, :len(z)] = z
        km = (np.arange(K)[None, :] < np.minimum(lens, K)[:, None]).astype(np.int64)
        w = Writer(os.path.join(OUT, name + ".ref"))
        w.i32("tokens", tokens)
        w.i32("lens", lens)
        w.f32("score", s64)
        w.f32("score_trunc_right", scores(ref, tr, km))
        w.f32("score_trunc_left", scores(ref, tl, km))
        err = float(np.max(np.abs(s32 - s64) / np.maximum(np.abs(s64), FLOOR)))
        w.f32("fp32_err", [err])
        w.close()
        REPORT[name] = {"transformers_fp32_score_rel_err": err, "scores": s64.tolist()}
        print(f"{name}: scores {np.round(s64, 4).tolist()}, transformers fp32 rel err {err:.2e}")
        if name == "rm_llama":   # texts for the tokenizer path of safe-score --rm
            prompts = ["Once upon a time, there was a little girl.", "Tom had a big red ball", ""]
            responses = [" She liked to play in the park.", " and a small dog!", "The sun was happy."]
            texts = [p + r for p, r in zip(prompts, responses)]
            enc = [tok(t)["input_ids"] for t in texts]   # special tokens as the tokenizer adds them (none here)
            Tt = max(len(e) for e in enc)
            tt = np.zeros((len(enc), Tt), np.int64)
            for b, e in enumerate(enc):
                tt[b, :len(e)] = e
            tm = (np.arange(Tt)[None, :] < np.array([len(e) for e in enc])[:, None]).astype(np.int64)
            with open(os.path.join(OUT, "rm_text.jsonl"), "w") as f:
                for b in range(len(texts)):
                    f.write(json.dumps({"id": f"t{b}", "prompt": prompts[b], "response": responses[b],
                                        "ids": enc[b], "score": float(scores(ref, tt, tm)[b])}) + "\n")


# ------------------------------------------------------------------------------------------
# round trip through our converter (checkpoint_load + checkpoint_save) and back into transformers

def roundtrip():
    res = {}
    conv = os.path.abspath("bin/safe-convert")
    for name in ["llama_untied", "llama_tied_sharded", "qwen2_tied", "qwen2_untied", "rm_llama"]:
        src = os.path.join(OUT, name)
        with tempfile.TemporaryDirectory() as tmp:
            out = os.path.join(tmp, "out")
            subprocess.run([conv, "--quiet", src, out], check=True)
            tokens, mask = batch_tokens(np.random.default_rng(1))
            a = AutoModelForCausalLM.from_pretrained(src, torch_dtype=torch.float32, attn_implementation="eager") \
                if not name.startswith("rm_") else None
            b = AutoModelForCausalLM.from_pretrained(out, torch_dtype=torch.float32, attn_implementation="eager")
            entry = {"files": sorted(os.listdir(out))}
            if a is not None:
                la, lb = forward_logits(a, tokens, mask), forward_logits(b, tokens, mask)
                entry["logits_identical"] = bool(torch.equal(la, lb))
                entry["max_abs_diff"] = float((la - lb).abs().max())
                assert entry["logits_identical"], (name, entry)
            else:   # a reward model's backbone converts to a causal LM whose head is the embeddings
                sa = LlamaForSequenceClassification.from_pretrained(src, torch_dtype=torch.float32)
                sb = b.state_dict()
                ok = all(torch.equal(v, sb["model." + k]) for k, v in sa.model.state_dict().items())
                entry["backbone_identical"] = bool(ok)
                assert ok
            if os.path.exists(os.path.join(src, "tokenizer.json")):
                ta, tb = AutoTokenizer.from_pretrained(src), AutoTokenizer.from_pretrained(out)
                s = "Once upon a time, there was a little girl named Lucy."
                entry["tokenizer_identical"] = ta(s)["input_ids"] == tb(s)["input_ids"]
                assert entry["tokenizer_identical"]
            res[name] = entry
            print(f"roundtrip {name}: {entry}")
    res["transformers"] = transformers.__version__
    res["how"] = "bin/safe-convert DIR OUT; transformers from_pretrained(OUT) vs from_pretrained(DIR), fp32, eager attention"
    with open(os.path.join(OUT, "roundtrip.json"), "w") as f:
        json.dump(res, f, indent=2)


# ------------------------------------------------------------------------------------------
# GGUF

def rand_f16_scales(rng, n):
    """f16 scales: ordinary values of both signs, plus a subnormal and a zero."""
    d = (rng.standard_normal(n) * 0.05).astype(np.float16)
    d[0] = np.float16(3e-6)    # subnormal in f16
    if n > 1:
        d[1] = np.float16(-0.0)
    return d


def make_gguf_types():
    rng = np.random.default_rng(7)
    path = os.path.join(OUT, "gguf_types.gguf")
    w = gguf.GGUFWriter(path, "llama")
    w.add_custom_alignment(64)
    # metadata of every value type
    w.add_uint8("t.u8", 200)
    w.add_int8("t.i8", -100)
    w.add_uint16("t.u16", 60000)
    w.add_int16("t.i16", -30000)
    w.add_uint32("t.u32", 4000000000)
    w.add_int32("t.i32", -2000000000)
    w.add_float32("t.f32", 0.15625)
    w.add_bool("t.bool", True)
    w.add_string("t.str", "héllo wörld")
    w.add_uint64("t.u64", 1 << 40)
    w.add_int64("t.i64", -(1 << 40))
    w.add_float64("t.f64", 2.5)
    w.add_array("t.arr_i32", [1, -2, 3])
    w.add_array("t.arr_f32", [0.5, -1.25])
    w.add_array("t.arr_str", ["a", "", "ünï"])
    exp = {}
    rows, cols = 3, 64
    x = (rng.standard_normal((rows, cols)) * 2).astype(np.float32)
    w.add_tensor("f32", x)
    exp["f32"] = x
    h = (rng.standard_normal((rows, cols)) * 2).astype(np.float16)
    h.flat[0] = np.float16(6e-8)    # smallest f16 subnormal
    h.flat[1] = np.float16(-0.0)
    h.flat[2] = np.float16(65504)
    w.add_tensor("f16", h)
    exp["f16"] = h.astype(np.float32)
    bf = (rng.standard_normal((rows, cols)).astype(np.float32).view(np.uint32) >> 16).astype(np.uint16)
    w.add_tensor("bf16", bf.view(np.uint8).reshape(rows, cols * 2), raw_dtype=QT.BF16)
    exp["bf16"] = gguf.quants.dequantize(bf.view(np.uint8).reshape(rows, cols * 2), QT.BF16)
    for qt, name in [(QT.Q8_0, "q8_0"), (QT.Q4_0, "q4_0"), (QT.Q4_1, "q4_1")]:
        bs, ts = gguf.GGML_QUANT_SIZES[qt]
        nb = rows * cols // bs
        blocks = rng.integers(0, 256, (nb, ts), dtype=np.uint8)
        blocks[:, 0:2] = rand_f16_scales(rng, nb).view(np.uint8).reshape(nb, 2)
        if qt == QT.Q4_1:
            blocks[:, 2:4] = (rng.standard_normal(nb) * 0.1).astype(np.float16).view(np.uint8).reshape(nb, 2)
        raw = blocks.reshape(rows, cols // bs * ts)
        w.add_tensor(name, raw, raw_dtype=qt)
        exp[name] = gguf.quants.dequantize(raw, qt)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    # cross-check with the reader: tensors read back dequantise to the same values
    r = gguf.GGUFReader(path)
    for t in r.tensors:
        got = gguf.quants.dequantize(t.data, t.tensor_type).reshape(exp[t.name].shape)
        assert np.array_equal(got.view(np.uint32), exp[t.name].astype(np.float32).view(np.uint32)), t.name
    f = Writer(os.path.join(OUT, "gguf_types.ref"))
    for k, v in exp.items():
        f.f32(k, np.asarray(v, np.float32))
    f.close()
    print("gguf_types: " + ", ".join(f"{k} {np.asarray(v).size}" for k, v in exp.items()))


def permute(w, n_head, n_head_kv):
    """convert_hf_to_gguf.py LlamaModel.permute: HF rotate_half rows -> llama.cpp interleaved."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def hf_to_gguf(src, path, arch, qtypes=None, bf16=False):
    """The tensors of an HF fixture under llama.cpp names, as convert_hf_to_gguf.py writes them."""
    cfg = json.load(open(os.path.join(src, "config.json")))
    model = AutoModelForCausalLM.from_pretrained(src, torch_dtype=torch.float32)
    sd = {k: v.float().numpy() for k, v in model.state_dict().items()}
    H, KV = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    w = gguf.GGUFWriter(path, arch)
    w.add_name(os.path.basename(src))
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(cfg["hidden_size"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(H)
    w.add_head_count_kv(KV)
    w.add_rope_freq_base(cfg["rope_theta"])
    w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    w.add_rope_dimension_count(cfg["hidden_size"] // H)
    w.add_tokenizer_model("gpt2")
    w.add_token_list([f"<t{i}>" for i in range(cfg["vocab_size"])])
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    names = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
             "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
             "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm"}
    qi = 0
    for k, v in sd.items():
        if k == "lm_head.weight" and cfg.get("tie_word_embeddings"):
            continue
        if k == "model.embed_tokens.weight":
            n = "token_embd.weight"
        elif k == "model.norm.weight":
            n = "output_norm.weight"
        elif k == "lm_head.weight":
            n = "output.weight"
        else:
            parts = k.split(".")   # model.layers.L.<mod>.<sub>.weight
            l, mod, kind = parts[2], ".".join(parts[3:-1]), parts[-1]
            n = f"blk.{l}.{names[mod]}.{kind}"
            if arch == "llama" and mod == "self_attn.q_proj":
                v = permute(v, H, H)
            if arch == "llama" and mod == "self_attn.k_proj":
                v = permute(v, H, KV)
        if qtypes and v.ndim == 2 and n != "token_embd.weight":
            qt = qtypes[qi % len(qtypes)]
            qi += 1
            w.add_tensor(n, gguf.quants.quantize(v, qt), raw_dtype=qt)
        elif bf16 and v.ndim == 2:
            w.add_tensor(n, gguf.quants.quantize(v, QT.BF16), raw_dtype=QT.BF16)
        else:
            w.add_tensor(n, v)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def gguf_logits(path, tokens, mask, dtype):
    d, f = os.path.split(path)
    m = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, torch_dtype=dtype, attn_implementation="eager")
    if "output.weight" not in [t.name for t in gguf.GGUFReader(path).tensors]:
        m.lm_head.weight = m.model.embed_tokens.weight   # see the module docstring
    return forward_logits(m, tokens, mask).double().numpy()


def make_gguf_models():
    # F32 llama: exactly llama_untied's weights, so llama_untied.ref's logits apply
    p = os.path.join(OUT, "tiny_llama.gguf")
    hf_to_gguf(os.path.join(OUT, "llama_untied"), p, "llama")
    tokens, mask = batch_tokens(np.random.default_rng(zlib.crc32(b"llama_untied")))
    ref = AutoModelForCausalLM.from_pretrained(os.path.join(OUT, "llama_untied"), torch_dtype=torch.float64)
    L = forward_logits(ref, tokens, mask).numpy()
    Lg = gguf_logits(p, tokens, mask, torch.float64)
    e = max_rel(Lg, L, np.repeat(mask[:, :, None], V, 2), 1e-2)
    REPORT["tiny_llama.gguf"] = {"transformers_gguf_vs_hf_logits_rel_err": e}
    print(f"tiny_llama.gguf: transformers(gguf_file=) vs HF logits rel err {e:.2e}")
    assert e < 1e-12
    # quantised llama: reference = transformers' own GGUF loader, float64
    p = os.path.join(OUT, "tiny_llama_q.gguf")
    hf_to_gguf(os.path.join(OUT, "llama_untied"), p, "llama", qtypes=[QT.Q8_0, QT.Q4_0, QT.Q4_1])
    Lq = gguf_logits(p, tokens, mask, torch.float64)
    w = Writer(os.path.join(OUT, "tiny_llama_q.ref"))
    w.i32("tokens", tokens)
    w.i32("mask", mask)
    w.f32("logits", Lq)
    w.close()
    # BF16 qwen2 with biases, tied: exactly qwen2_tied's (BF16) weights
    p = os.path.join(OUT, "tiny_qwen2.gguf")
    hf_to_gguf(os.path.join(OUT, "qwen2_tied"), p, "qwen2", bf16=True)
    tokens, mask = batch_tokens(np.random.default_rng(zlib.crc32(b"qwen2_tied")))
    ref = AutoModelForCausalLM.from_pretrained(os.path.join(OUT, "qwen2_tied"), torch_dtype=torch.float64)
    L = forward_logits(ref, tokens, mask).numpy()
    Lg = gguf_logits(p, tokens, mask, torch.float64)
    e = max_rel(Lg, L, np.repeat(mask[:, :, None], V, 2), 1e-2)
    REPORT["tiny_qwen2.gguf"] = {"transformers_gguf_vs_hf_logits_rel_err": e}
    print(f"tiny_qwen2.gguf: transformers(gguf_file=) vs HF logits rel err {e:.2e}")
    assert e < 1e-12


def make_smollm():
    if not os.path.exists(SMOLLM):
        print(f"smollm2: {SMOLLM} absent (run tests/setup-smollm2.sh): smollm2.ref not written")
        REPORT["smollm2"] = "skipped: model absent"
        return
    d, f = os.path.split(SMOLLM)
    tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
    m = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, torch_dtype=torch.float32, attn_implementation="eager")
    m.lm_head.weight = m.model.embed_tokens.weight   # see the module docstring
    m.eval()
    text = ("<|im_start|>user\nWrite a short story about a robot who learns to paint.<|im_end|>\n"
            "<|im_start|>assistant\n")
    ids = tok(text, add_special_tokens=False)["input_ids"]
    x = torch.tensor([ids])
    out, margins, past = [], [], None
    first = None
    with torch.no_grad():
        for step in range(64):   # greedy, KV cache, no stop at EOS
            r = m(input_ids=x, past_key_values=past, use_cache=True)
            past = r.past_key_values
            lg = r.logits[0, -1].double()
            if first is None:
                first = lg.clone()
            top = torch.topk(lg, 2)
            margins.append(float(top.values[0] - top.values[1]))
            nxt = int(top.indices[0])
            out.append(nxt)
            x = torch.tensor([[nxt]])
    w = Writer(os.path.join(OUT, "smollm2.ref"))
    w.i32("prompt", ids)
    w.i32("greedy", out)
    top = torch.topk(first, 10)
    w.i32("top_ids", top.indices.numpy())
    w.f32("top_logits", top.values.numpy())
    w.f32("margins", margins)
    w.close()
    REPORT["smollm2"] = {"prompt": text, "prompt_ids": ids, "greedy": out, "completion": tok.decode(out),
                         "min_top2_margin": min(margins), "lm_head_tied_by_script": True,
                         "sha256": "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"}
    print(f"smollm2: {len(ids)} prompt ids, completion {tok.decode(out)!r}, smallest top-2 margin {min(margins):.4f}")


def main():
    if not os.path.exists("bin/safe-convert"):
        sys.exit("gen_hf_ref.py: build bin/safe-convert first (make bin/safe-convert); run from the repository root")
    os.makedirs(OUT, exist_ok=True)
    torch.set_num_threads(2)
    make_causal()
    tok = make_tokenizer([os.path.join(OUT, "llama_untied")])
    make_rms(tok)
    roundtrip()
    make_gguf_types()
    make_gguf_models()
    make_smollm()
    with open(os.path.join(OUT, "gen_report.json"), "w") as f:
        json.dump(REPORT, f, indent=2)


if __name__ == "__main__":
    main()
