#!/usr/bin/env python3
"""torch_baseline.py — the PyTorch side of tests/gpu/run.sh's benchmark table.

The same model shapes and the same work as tests/gpu/bench_gpu.c, written in plain torch (no
transformers needed), the way Hugging Face runs them:

  decode  HF-style generate: bf16 weights, eager modules, a dynamic KV cache grown with
          torch.cat every step (HF's DynamicCache), softmax(logits / T) and torch.multinomial;
          fixed length (no EOS), batch 1/64/512, 32-token random prompts, 128 new tokens.
  update  one RL training step: fp32 master weights under torch.autocast(bfloat16), SDPA
          (flash) attention, LM head and fp32 log-softmax only at the response positions,
          loss = -(mean log-prob) - 0.01 mean entropy, backward, clip_grad_norm_(1.0), fused AdamW.

FLOPs and bytes are counted exactly as bench_gpu.c counts them, so the ratios compare like
with like. One JSON object per line on stdout.

    python3 tests/gpu/torch_baseline.py --config qwen0.5b [--batches 1,64,512] [--steps 3]
"""
import argparse
import json
import math
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

CONFIGS = {
    # llama2.c stories260K: dim, hidden, layers, heads, kv heads, vocab, max_seq_len (tied)
    "stories260K": dict(dim=64, hidden=172, layers=5, heads=8, kv_heads=4, vocab=512, theta=10000.0, eps=1e-5,
                        bias=False, tied=True, max_seq=512),
    # the Qwen2-0.5B shape
    "qwen0.5b": dict(dim=896, hidden=4864, layers=24, heads=14, kv_heads=2, vocab=151936, theta=1e6, eps=1e-6,
                     bias=True, tied=True, max_seq=32768),
}


class RMSNorm(nn.Module):
    def __init__(self, dim, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):  # HF LlamaRMSNorm: in fp32, back to the input dtype
        dt = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dt)


def rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), dim=-1)


class Attention(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.h, self.kvh, self.hs = c["heads"], c["kv_heads"], c["dim"] // c["heads"]
        self.q_proj = nn.Linear(c["dim"], self.h * self.hs, bias=c["bias"])
        self.k_proj = nn.Linear(c["dim"], self.kvh * self.hs, bias=c["bias"])
        self.v_proj = nn.Linear(c["dim"], self.kvh * self.hs, bias=c["bias"])
        self.o_proj = nn.Linear(self.h * self.hs, c["dim"], bias=False)

    def forward(self, x, cos, sin, cache=None):
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.h, self.hs).transpose(1, 2)
        k = self.k_proj(x).view(B, T, self.kvh, self.hs).transpose(1, 2)
        v = self.v_proj(x).view(B, T, self.kvh, self.hs).transpose(1, 2)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        if cache is not None:  # DynamicCache: concatenate every step
            if cache[0] is not None:
                k = torch.cat([cache[0], k], dim=2)
                v = torch.cat([cache[1], v], dim=2)
            cache[0], cache[1] = k, v
        causal = T > 1
        o = F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=True)
        return self.o_proj(o.transpose(1, 2).reshape(B, T, -1))


class Block(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.input_layernorm = RMSNorm(c["dim"], c["eps"])
        self.self_attn = Attention(c)
        self.post_attention_layernorm = RMSNorm(c["dim"], c["eps"])
        self.gate_proj = nn.Linear(c["dim"], c["hidden"], bias=False)
        self.up_proj = nn.Linear(c["dim"], c["hidden"], bias=False)
        self.down_proj = nn.Linear(c["hidden"], c["dim"], bias=False)

    def forward(self, x, cos, sin, cache=None):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, cache)
        h = self.post_attention_layernorm(x)
        return x + self.down_proj(F.silu(self.gate_proj(h)) * self.up_proj(h))


class Model(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.c = c
        self.embed_tokens = nn.Embedding(c["vocab"], c["dim"])
        self.layers = nn.ModuleList([Block(c) for _ in range(c["layers"])])
        self.norm = RMSNorm(c["dim"], c["eps"])
        self.lm_head = nn.Linear(c["dim"], c["vocab"], bias=False)
        if c["tied"]:
            self.lm_head.weight = self.embed_tokens.weight
        hs = c["dim"] // c["heads"]
        self.register_buffer("inv_freq", 1.0 / (c["theta"] ** (torch.arange(0, hs, 2).float() / hs)), persistent=False)

    def rope(self, pos, dtype):
        f = pos[:, None].float() * self.inv_freq[None, :]
        e = torch.cat((f, f), dim=-1)
        return e.cos().to(dtype)[None, None], e.sin().to(dtype)[None, None]

    def hidden(self, ids, start=0, caches=None):
        x = self.embed_tokens(ids)
        pos = torch.arange(start, start + ids.shape[1], device=ids.device)
        cos, sin = self.rope(pos, x.dtype)
        for i, layer in enumerate(self.layers):
            x = layer(x, cos, sin, None if caches is None else caches[i])
        return self.norm(x)


def layer_matmul_params(c):
    hs = c["dim"] // c["heads"]
    qd, kvd = c["heads"] * hs, c["kv_heads"] * hs
    return c["layers"] * (c["dim"] * (qd + 2 * kvd) + qd * c["dim"] + 3 * c["hidden"] * c["dim"])


def sync():
    torch.cuda.synchronize()


@torch.inference_mode()
def generate(model, ids, new_tokens, temperature=1.0):
    caches = [[None, None] for _ in model.layers]
    h = model.hidden(ids, 0, caches)
    logits = model.lm_head(h[:, -1]).float()
    pos = ids.shape[1]
    out = []
    for _ in range(new_tokens):
        probs = torch.softmax(logits / temperature, dim=-1)
        nxt = torch.multinomial(probs, 1)
        out.append(nxt)
        h = model.hidden(nxt, pos, caches)
        logits = model.lm_head(h[:, -1]).float()
        pos += 1
    return torch.cat(out, dim=1)


def bench_decode(model, c, name, batch, P, new_tokens):
    V = c["vocab"]
    ids = torch.randint(0, V, (batch, P), device="cuda")
    generate(model, ids, 4)  # warm-up
    sync()
    t0 = time.perf_counter()
    generate(model, ids, new_tokens)
    sync()
    dt = time.perf_counter() - t0
    hs = c["dim"] // c["heads"]
    kvd = c["kv_heads"] * hs
    wbytes = 2.0 * (layer_matmul_params(c) + V * c["dim"])
    kvbytes = batch * (P + new_tokens / 2.0) * kvd * 2 * 2 * c["layers"]
    lbytes = 3.0 * batch * V * 4
    nbytes = new_tokens * (wbytes + kvbytes + lbytes)
    print(json.dumps(dict(bench="decode", impl="torch", model=name, batch=batch, prompt=P, new_tokens=new_tokens,
                          seconds=round(dt, 4), tokens_per_s=round(batch * new_tokens / dt, 1),
                          ms_per_step=round(1000 * dt / new_tokens, 3), bw_frac=round(nbytes / dt / 4.3e12, 4))),
          flush=True)


def bench_update(c, name, B, T, steps):
    torch.manual_seed(0)
    model = Model(c).cuda()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.uniform_(-0.035, 0.035)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6, weight_decay=0.01, fused=True)
    V, P = c["vocab"], T // 4
    R = T - P
    ids = torch.randint(0, V, (B, T), device="cuda")
    targets = ids[:, P:]
    times = []
    for s in range(-1, steps):
        sync()
        t0 = time.perf_counter()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            h = model.hidden(ids)[:, P - 1:T - 1]
            logits = model.lm_head(h)
        logp_all = torch.log_softmax(logits.float(), dim=-1)
        logp = logp_all.gather(-1, targets[..., None])[..., 0]
        ent = -(logp_all.exp() * logp_all).sum(-1)
        loss = -logp.mean() - 0.01 * ent.mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sync()
        if s >= 0:
            times.append(time.perf_counter() - t0)
    dt = sum(times) / len(times)
    hs = c["dim"] // c["heads"]
    qd = c["heads"] * hs
    N = B * T
    flops = 6.0 * layer_matmul_params(c) * N + 6.0 * V * c["dim"] * B * R + 7.0 * 2 * qd * (T / 2.0) * c["layers"] * N
    print(json.dumps(dict(bench="update", impl="torch", model=name, batch=B, seq_len=T, response=R,
                          seconds_per_step=round(dt, 4), tokens_per_s=round(N / dt, 1), tflops=round(flops / dt / 1e12, 2),
                          mfu=round(flops / dt / 790e12, 4))), flush=True)
    del model, opt


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", required=True, choices=sorted(CONFIGS))
    ap.add_argument("--name", default=None)
    ap.add_argument("--batches", default="1,64,512")
    ap.add_argument("--prompt", type=int, default=32)
    ap.add_argument("--new", type=int, default=128)
    ap.add_argument("--train-batch", type=int, default=16)
    ap.add_argument("--train-len", type=int, default=512)
    ap.add_argument("--steps", type=int, default=3)
    a = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("torch_baseline: no CUDA device visible to torch")
    c = CONFIGS[a.config]
    name = a.name or ("qwen0.5b-random" if a.config == "qwen0.5b" else "stories260K.bin")
    new = min(a.new, c["max_seq"] - a.prompt)
    T = min(a.train_len, c["max_seq"])
    torch.manual_seed(0)
    model = Model(c).cuda().to(torch.bfloat16).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.uniform_(-0.035, 0.035)
    for b in [int(x) for x in a.batches.split(",") if x]:
        bench_decode(model, c, name, b, a.prompt, new)
    del model
    torch.cuda.empty_cache()
    if a.steps > 0:
        bench_update(c, name, a.train_batch, T, a.steps)


if __name__ == "__main__":
    main()
