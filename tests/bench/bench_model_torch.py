#!/usr/bin/python3
"""bench_model_torch.py — the PyTorch (CPU, fp32, eager) baseline for tests/bench/bench_model.c.

Same shapes and the same work: forward + per-token log-prob/entropy loss + backward over a (B,T)
batch, and KV-cached decoding at batch 1, 8, 64 after a 16-token prefill. Same thread count:
torch.set_num_threads(OMP_NUM_THREADS or all cores). Same output lines:
  "model <config> <what> <tokens/s> tok/s"

    /usr/bin/python3 tests/bench/bench_model_torch.py [--quick] [--cpu-time]

--cpu-time: process CPU time instead of wall time (fair with 1 thread on a shared machine).
"""
import math
import os
import struct
import sys
import time

import torch
import torch.nn.functional as Fn

torch.set_grad_enabled(False)
clock = time.process_time if "--cpu-time" in sys.argv else time.perf_counter


class Llama(torch.nn.Module):
    """Llama decoder, Hugging Face conventions (rotate_half RoPE), tied LM head."""

    def __init__(self, dim, hidden, n_layers, n_heads, n_kv, vocab, theta=10000.0, eps=1e-5):
        super().__init__()
        self.C, self.H, self.KV, self.hs, self.V, self.eps = dim, n_heads, n_kv, dim // n_heads, vocab, eps
        self.tok = torch.nn.Parameter(torch.randn(vocab, dim) * 0.02)
        mk = lambda o, i: torch.nn.Parameter(torch.randn(n_layers, o, i) * 0.02)
        self.wq, self.wk, self.wv = mk(dim, dim), mk(n_kv * self.hs, dim), mk(n_kv * self.hs, dim)
        self.wo, self.w1, self.w2, self.w3 = mk(dim, dim), mk(hidden, dim), mk(dim, hidden), mk(hidden, dim)
        self.n1 = torch.nn.Parameter(torch.ones(n_layers, dim))
        self.n2 = torch.nn.Parameter(torch.ones(n_layers, dim))
        self.nf = torch.nn.Parameter(torch.ones(dim))
        self.L = n_layers
        inv = 1.0 / (theta ** (torch.arange(0, self.hs, 2).float() / self.hs))
        ang = torch.outer(torch.arange(4096).float(), inv)
        emb = torch.cat([ang, ang], -1)
        self.cos, self.sin = emb.cos(), emb.sin()

    def norm(self, x, w):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * w

    def rope(self, x, pos):  # x (B, nh, T, hs), pos (T,)
        c, s = self.cos[pos], self.sin[pos]
        x1, x2 = x[..., : self.hs // 2], x[..., self.hs // 2:]
        return x * c + torch.cat([-x2, x1], -1) * s

    def forward(self, tokens, cache=None, start=0):
        """tokens (B,T) -> logits (B,T,V). cache: list of [k, v] (B, KV, Tmax, hs) per layer."""
        B, T = tokens.shape
        pos = torch.arange(start, start + T)
        x = self.tok[tokens]
        for l in range(self.L):
            h = self.norm(x, self.n1[l])
            q = (h @ self.wq[l].T).view(B, T, self.H, self.hs).transpose(1, 2)
            k = (h @ self.wk[l].T).view(B, T, self.KV, self.hs).transpose(1, 2)
            v = (h @ self.wv[l].T).view(B, T, self.KV, self.hs).transpose(1, 2)
            q, k = self.rope(q, pos), self.rope(k, pos)
            if cache is not None:
                cache[l][0][:, :, start:start + T] = k
                cache[l][1][:, :, start:start + T] = v
                k, v = cache[l][0][:, :, : start + T], cache[l][1][:, :, : start + T]
            if self.KV != self.H:
                k = k.repeat_interleave(self.H // self.KV, 1)
                v = v.repeat_interleave(self.H // self.KV, 1)
            att = (q @ k.transpose(-1, -2)) / math.sqrt(self.hs)
            if T > 1:
                S = k.shape[2]
                mask = torch.ones(T, S, dtype=torch.bool).tril(S - T)
                att = att.masked_fill(~mask, float("-inf"))
            o = (att.softmax(-1) @ v).transpose(1, 2).reshape(B, T, self.C)
            x = x + o @ self.wo[l].T
            h = self.norm(x, self.n2[l])
            x = x + (Fn.silu(h @ self.w1[l].T) * (h @ self.w3[l].T)) @ self.w2[l].T
        return self.norm(x, self.nf) @ self.tok.T


def load_stories(path):
    with open(path, "rb") as f:
        dim, hidden, L, H, KV, vocab, seq = struct.unpack("<7i", f.read(28))
        m = Llama(dim, hidden, L, H, KV, abs(vocab))
        for p in [m.tok, m.n1, m.wq, m.wk, m.wv, m.wo, m.n2, m.w1, m.w2, m.w3, m.nf]:
            n = p.numel()
            p.data.copy_(torch.frombuffer(bytearray(f.read(4 * n)), dtype=torch.float32).view_as(p))
    return m


def bench_train(m, B, T, iters):
    tok = torch.randint(1, m.V, (B, T))
    tgt = torch.randint(1, m.V, (B, T))
    best = 1e30
    for it in range(iters + 1):
        t0 = clock()
        with torch.enable_grad():
            m.zero_grad(set_to_none=True)
            lsm = torch.log_softmax(m(tok), -1)
            logp = lsm.gather(-1, tgt[..., None])[..., 0]
            ent = -(lsm.exp() * lsm).sum(-1)
            loss = -(logp.mean() + 0.01 * ent.mean())
            loss.backward()
        dt = clock() - t0
        if it > 0:
            best = min(best, dt)
    return B * T / best


def bench_decode(m, n, prompt, steps):
    cache = [[torch.zeros(n, m.KV, prompt + steps, m.hs), torch.zeros(n, m.KV, prompt + steps, m.hs)]
             for _ in range(m.L)]
    m(torch.randint(1, m.V, (n, prompt)), cache, 0)
    t0 = clock()
    for s in range(steps):
        m(torch.randint(1, m.V, (n, 1)), cache, prompt + s)
    return n * steps / (clock() - t0)


def run(name, m, B, T, iters, steps_scale):
    print(f"model {name} fwd+bwd(B={B},T={T}) {bench_train(m, B, T, iters):.0f} tok/s", flush=True)
    for n in (1, 8, 64):
        steps = steps_scale  # the same contexts at every batch size
        print(f"model {name} decode(batch={n}) {bench_decode(m, n, 16, steps):.0f} tok/s", flush=True)


def main():
    quick = "--quick" in sys.argv
    threads = int(os.environ.get("OMP_NUM_THREADS", os.cpu_count()))
    torch.set_num_threads(threads)
    print(f"bench_model_torch: torch {torch.__version__}, {threads} threads", file=sys.stderr)
    data = os.environ.get("SAFE_DATA", "../shared/data")
    torch.manual_seed(0)
    run("stories260K", load_stories(os.path.join(data, "stories260K", "stories260K.bin")), 8, 256,
        1 if quick else 3, 16 if quick else 64)
    run("llama15M", Llama(288, 768, 6, 6, 6, 32000), 4, 256, 1 if quick else 2, 4 if quick else 16)


if __name__ == "__main__":
    main()
