#!/usr/bin/env python3
"""gen_valuehead_ref.py — PyTorch reference for the value head (tests/test_safe_math.c).

Writes tests/fixtures/valuehead_ref.txt: two cases (n_heads = 2, the SAFE double critic, and
n_heads = 1, the PPO baseline) of

    x = nn.LayerNorm(C, eps=1e-5)(h);  V_k = Linear(Hd -> 1)(GELU()(Linear(C -> Hd)(x)))

with inputs h, parameters, upstream gradients dV1, dV2, and the outputs V1, V2, dh and the
parameter gradients of  loss = sum(dV1 * V1) + sum(dV2 * V2).

Inputs and parameters are drawn in float32 (so the C side reads them exactly); the forward and
backward run in float64 torch modules, so the reference carries no fp32 rounding of its own.
Parameters are written flat in the order of lib/valuehead.h (ln.weight, ln.bias, then per head
fc1.weight (Hd, C) row-major, fc1.bias, fc2.weight (1, Hd), fc2.bias).

File format (text, one array per line):  "case N C Hd n_heads", then lines
"<name> <count> v0 v1 ...", names h params dv1 dv2 v1 v2 dh grads (dv2/v2 absent for 1 head).
Floats are Python repr of float64 (float32 inputs round-trip exactly).

Fixture generation only, never needed by the build or the tests:
    /usr/bin/python3 tests/gen/gen_valuehead_ref.py      # Debian python3-torch (1.13)
"""
import os

import torch
import torch.nn as nn

here = os.path.dirname(os.path.abspath(__file__))
out_path = os.path.normpath(os.path.join(here, "..", "fixtures", "valuehead_ref.txt"))


def case(gen, N, C, Hd, n_heads):
    f32 = lambda *s, scale=1.0, shift=0.0: (torch.randn(*s, generator=gen) * scale + shift).float()
    h = f32(N, C, scale=2.0, shift=0.3)
    ln = nn.LayerNorm(C, eps=1e-5).double()
    heads = [nn.Sequential(nn.Linear(C, Hd), nn.GELU(), nn.Linear(Hd, 1)).double() for _ in range(n_heads)]
    with torch.no_grad():
        ln.weight.copy_(f32(C, scale=0.1, shift=1.0).double())
        ln.bias.copy_(f32(C, scale=0.1).double())
        for hd in heads:
            hd[0].weight.copy_(f32(Hd, C, scale=0.5).double())
            hd[0].bias.copy_(f32(Hd, scale=0.5).double())
            hd[2].weight.copy_(f32(1, Hd, scale=0.5).double())
            hd[2].bias.copy_(f32(1, scale=0.5).double())
    dvs = [f32(N) for _ in range(n_heads)]

    hd64 = h.double().requires_grad_(True)
    x = ln(hd64)
    vs = [hd(x).squeeze(-1) for hd in heads]
    loss = sum((dv.double() * v).sum() for dv, v in zip(dvs, vs))
    loss.backward()

    params = [ln.weight, ln.bias]
    for hd in heads:
        params += [hd[0].weight, hd[0].bias, hd[2].weight, hd[2].bias]
    flat = lambda ts: torch.cat([t.detach().reshape(-1) for t in ts]).tolist()

    lines = [f"case {N} {C} {Hd} {n_heads}"]
    def arr(name, vals):
        lines.append(f"{name} {len(vals)} " + " ".join(repr(float(v)) for v in vals))
    arr("h", h.reshape(-1).tolist())
    arr("params", flat(params))
    for k in range(n_heads):
        arr(f"dv{k + 1}", dvs[k].tolist())
    for k in range(n_heads):
        arr(f"v{k + 1}", vs[k].detach().tolist())
    arr("dh", hd64.grad.reshape(-1).tolist())
    arr("grads", flat([p.grad for p in params]))
    return lines


def main():
    gen = torch.Generator().manual_seed(20260204)
    lines = ["# valuehead_ref.txt — written by tests/gen/gen_valuehead_ref.py (torch %s)" % torch.__version__]
    lines += case(gen, N=7, C=24, Hd=6, n_heads=2)
    lines += case(gen, N=5, C=16, Hd=4, n_heads=1)
    os.makedirs(os.path.dirname(out_path), exist_ok=True)
    with open(out_path, "w") as f:
        f.write("\n".join(lines) + "\n")
    print("wrote", out_path)


if __name__ == "__main__":
    main()
