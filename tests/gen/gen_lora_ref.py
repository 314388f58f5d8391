#!/usr/bin/python3
"""gen_lora_ref.py — reference fixture for the LoRA adapter gradients (tests/test_model.c,
parity_lora_tiny), computed in PyTorch (float64).

Run from the repository root with the Debian interpreter (python3-torch, numpy):

    /usr/bin/python3 tests/gen/gen_lora_ref.py

It writes tests/fixtures/lora_tiny.bin. The model is gen_model_ref.py's reference (imported,
not copied): the tiny untied config (GQA 4 heads / 2 kv heads, q/k/v bias, Hugging Face
rotate_half RoPE), each sequence run alone and unpadded, the same objective
J = sum_valid [w*logp + C_ENT*entropy + u.hidden] at temperature TEMP.

An adapter sits on all seven projections (q, k, v, o, gate, up, down = wq wk wv wo w1 w3 w2),
rank R, alpha ALPHA, s = alpha / r, with random nonzero A (r, in) and B (out, r). Unlike
lib/lora.c, which merges W' = W + s B A and backpropagates through W', the reference never
forms B A: every adapted projection is the separate low-rank path

    y = x W^T + s (x A^T) B^T

with the base weights W (and every other base parameter) frozen (requires_grad False), and
autograd gives dA, dB of loss = -J directly.

Records (SAFEFIX1 format of gen_model_ref.py: u32 name length, name, u32 dtype 0 f32 / 1 i32,
u64 count, values):
  config, hyper, params      as gen_model_ref.py (params: the base, lib/model.c's flat layout)
  lora_cfg (i32)             r, target mask (127: all seven)
  lora_scale                 s
  lora_params                A and B in lib/lora.c's layout: for each target in order
                             q,k,v,o,gate,up,down: A of every layer (L, r, in), then B (L, out, r)
  tokens targets mask w u    the padded (3, 12) batch
  logits (B,T,V), logp, entropy (B,T), J
  ref_lora_grads             dA, dB of loss = -J, the layout of lora_params
  torch_fp32_err             PyTorch's own fp32 run against this reference, the C test's metrics:
                             [logits (floor 0.1 max|b|), worst adapter tensor max|a-b| / max|b|]
"""
import argparse
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gen_model_ref as ref  # noqa: E402  (sets torch's default dtype to float64)

R, ALPHA = 3, 6.0
SCALE = ALPHA / R
A_B_RANGE = 0.2
SEED = 20240915
# lib/lora.h's LoraTarget order -> the reference model's matrix names
TARGETS = [("q", "wq"), ("k", "wk"), ("v", "wv"), ("o", "wo"), ("gate", "w1"), ("up", "w3"), ("down", "w2")]


class LowRankLinear:
    """One layer's adapted projection, standing in for the matrix W[l] in gen_model_ref.forward,
    which computes `h @ W[l].T`: .T returns self and `h @ self` runs h W^T + s (h A^T) B^T."""

    def __init__(self, W, A, B, s):
        self.W, self.A, self.B, self.s = W, A, B, s

    @property
    def T(self):
        return self

    def __rmatmul__(self, h):
        return h @ self.W.T + self.s * ((h @ self.A.T) @ self.B.T)


class Adapted:
    """(L, out, in) stand-in: Adapted[l] is layer l's LowRankLinear."""

    def __init__(self, W, A, B, s):
        self.W, self.A, self.B, self.s = W, A, B, s

    def __getitem__(self, l):
        return LowRankLinear(self.W[l], self.A[l], self.B[l], self.s)


def with_adapter(P, lora, s):
    Q = dict(P)
    for _, name in TARGETS:
        A, B = lora[name]
        Q[name] = Adapted(P[name], A, B, s)
    return Q


def make_lora(rng, P, L):
    """A (L, r, in), B (L, out, r) per target, uniform +-A_B_RANGE, exactly representable in fp32."""
    lora = {}
    for _, name in TARGETS:
        out, inn = P[name].shape[1], P[name].shape[2]
        A = rng.uniform(-A_B_RANGE, A_B_RANGE, size=(L, R, inn)).astype(np.float32).astype(np.float64)
        B = rng.uniform(-A_B_RANGE, A_B_RANGE, size=(L, out, R)).astype(np.float32).astype(np.float64)
        lora[name] = (torch.tensor(A), torch.tensor(B))
    return lora


def flat_lora(lora, grads=False):
    parts = []
    for _, name in TARGETS:
        for t in lora[name]:
            parts.append((t.grad if grads else t.detach()).reshape(-1).double().numpy())
    return np.concatenate(parts)


def run(P, lora, cfg, batch):
    """J, logits, logp, entropy and the flat adapter gradients of loss = -J (in the current
    default dtype; P and lora must already be in it)."""
    for k in P:
        P[k].requires_grad_(False)  # the base is frozen
    for A, B in lora.values():
        A.requires_grad_(True)
        B.requires_grad_(True)
    J, logits, logp, ent = ref.objective(with_adapter(P, lora, SCALE), cfg, batch, ref.rope_half)
    (-J).backward()
    return J, logits, logp, ent, flat_lora(lora, grads=True)


def tensor_sizes(lora):
    return [(f"{tn}.{ab}", t.numel()) for tn, name in TARGETS for ab, t in zip("AB", lora[name])]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="tests/fixtures")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "lora_tiny.bin")
    rng = np.random.default_rng(SEED)

    cfg, P, order = ref.tiny(rng, tied=False)
    lora = make_lora(rng, P, cfg["n_layers"])
    batch = ref.make_batch(rng, cfg["vocab"], cfg["dim"])
    params = torch.cat([P[k].reshape(-1) for k in order]).numpy().copy()
    lparams = flat_lora(lora)

    J, logits, logp, ent, grads = run(P, lora, cfg, batch)

    # PyTorch's own fp32 against the float64 reference
    torch.set_default_dtype(torch.float32)
    try:
        P32 = {k: v.detach().float() for k, v in P.items()}
        lora32 = {k: (A.detach().float(), B.detach().float()) for k, (A, B) in lora.items()}
        _, logits32, _, _, grads32 = run(P32, lora32, cfg, batch)
    finally:
        torch.set_default_dtype(torch.float64)
    m = batch["mask"].astype(bool)
    lg, rl = logits32.numpy()[m], logits.numpy()[m]
    err_logits = float(np.max(np.abs(lg - rl) / np.maximum(np.abs(rl), 0.1 * np.abs(rl).max())))
    err_grads, off, per = 0.0, 0, []
    for name, n in tensor_sizes(lora):
        g, rg = grads32[off:off + n], grads[off:off + n]
        e = float(np.max(np.abs(g - rg)) / np.abs(rg).max())
        per.append(f"{name} {e:.1e}")
        err_grads = max(err_grads, e)
        off += n
    assert off == grads.size

    out = ref.Writer(path)
    out.i32("config", [cfg["dim"], cfg["hidden"], cfg["n_layers"], cfg["n_heads"], cfg["n_kv_heads"],
                       cfg["vocab"], int(cfg["bias"]), int(cfg["tied"])])
    out.f32("hyper", [cfg["theta"], cfg["eps"], ref.TEMP, ref.C_ENT])
    out.f32("params", params)
    out.i32("lora_cfg", [R, (1 << len(TARGETS)) - 1])
    out.f32("lora_scale", [SCALE])
    out.f32("lora_params", lparams)
    out.i32("tokens", batch["tokens"])
    out.i32("targets", batch["targets"])
    out.i32("mask", batch["mask"])
    out.f32("w", batch["w"])
    out.f32("u", batch["u"])
    out.f32("logits", logits.numpy())
    out.f32("logp", logp.numpy())
    out.f32("entropy", ent.numpy())
    out.f32("J", [float(J)])
    out.f32("ref_lora_grads", grads)
    out.f32("torch_fp32_err", [err_logits, err_grads])
    out.close()
    print(f"{path}: J={float(J):.6f}, {lparams.size} adapter floats, max |grad| {np.abs(grads).max():.4f}; "
          f"torch fp32 errors: logits {err_logits:.2e}, adapter grads {err_grads:.2e} "
          f"({os.path.getsize(path)} bytes)")
    print("  torch fp32 per tensor (max|a-b| / max|b|): " + ", ".join(per))


if __name__ == "__main__":
    main()
