#!/usr/bin/python3
"""gen_model_ref.py — reference fixtures for tests/test_model.c, computed in PyTorch (float64).

Run from the repository root with the Debian interpreter (python3-torch, numpy):

    /usr/bin/python3 tests/gen/gen_model_ref.py [--data ../shared/data]

It writes tests/fixtures/model_{stories260k,tiny_tied,tiny_untied}.bin. The reference model is
written here from scratch, independently of lib/model.c:

  * stories260K follows llama2.c's model.py: the .bin's original weights, RoPE on interleaved
    pairs (2i, 2i+1) via complex-style rotation, repeat_kv for grouped-query attention. The C
    engine instead uses rotate_half on permuted wq/wk rows, so the two formulations differ.
  * the tiny configs (GQA 4 heads / 2 kv heads, q/k/v bias, tied and untied heads) follow the
    Hugging Face Llama/Qwen2 formulation (rotate_half), with random weights stored in the file.

Padding is not modelled here at all: every sequence runs alone, unpadded, and its results are
scattered into the padded (B, T) layout that the C test feeds its batched forward.

Quantities (all float64, stored as float32):
  logits (B,T,V), logp (B,T) of targets at temperature TEMP, entropy (B,T), the objective
  J = sum_valid [w*logp + C_ENT*entropy + u.hidden], gradients of loss = -J for every parameter,
  and the weights after 3 AdamW steps (lr 1e-3, wd 0.01, clip_grad_norm_ 1.0) on that loss
  (the untied tiny case also stores each step's pre-clip gradients, so the C test can replay the
  optimiser on identical gradients), and PyTorch's own fp32 errors against this reference.

File format (little-endian): b"SAFEFIX1", then records until EOF:
  u32 name length, name bytes, u32 dtype (0 = float32, 1 = int32), u64 count, count values.
"""
import argparse
import os
import struct

import numpy as np
import torch

torch.set_default_dtype(torch.float64)

TEMP = 0.7
C_ENT = 0.05
LR, WD, CLIP, STEPS = 1e-3, 0.01, 1.0, 3
ADAM_STRIDE_STORIES = 8  # the stories260K weights after AdamW are stored every 8th float (size)

LLAMA2C_ORDER = ["tok_emb", "attn_norm", "wq", "wk", "wv", "wo", "ffn_norm", "w1", "w2", "w3", "final_norm"]


class Writer:
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
# the model, one unpadded sequence at a time

def rmsnorm(x, w, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def rope_interleaved(x, pos, theta):
    """llama2.c model.py: pairs (2i, 2i+1) rotated by pos * theta^(-2i/hs). x (T, nh, hs)."""
    hs = x.shape[-1]
    freqs = 1.0 / (theta ** (torch.arange(0, hs, 2)[: hs // 2].to(torch.get_default_dtype()) / hs))
    ang = torch.outer(pos.to(torch.get_default_dtype()), freqs)  # (T, hs/2)
    cos, sin = torch.cos(ang)[:, None, :], torch.sin(ang)[:, None, :]
    xr, xi = x[..., 0::2], x[..., 1::2]
    out_r = xr * cos - xi * sin
    out_i = xr * sin + xi * cos
    return torch.stack([out_r, out_i], dim=-1).flatten(-2)


def rope_half(x, pos, theta):
    """Hugging Face Llama: x * cos + rotate_half(x) * sin, rotate_half(x) = cat(-x2, x1)."""
    hs = x.shape[-1]
    inv = 1.0 / (theta ** (torch.arange(0, hs, 2).to(torch.get_default_dtype()) / hs))
    ang = torch.outer(pos.to(torch.get_default_dtype()), inv)
    emb = torch.cat([ang, ang], dim=-1)
    cos, sin = torch.cos(emb)[:, None, :], torch.sin(emb)[:, None, :]
    x1, x2 = x[..., : hs // 2], x[..., hs // 2:]
    return x * cos + torch.cat([-x2, x1], dim=-1) * sin


def forward(P, cfg, tokens, rope):
    """tokens (T,) -> hidden (T,C), logits (T,V)."""
    T = tokens.shape[0]
    C, H, KV = cfg["dim"], cfg["n_heads"], cfg["n_kv_heads"]
    hs = C // H
    pos = torch.arange(T)
    x = P["tok_emb"][tokens]
    causal = torch.triu(torch.full((T, T), float("-inf")), diagonal=1)
    for l in range(cfg["n_layers"]):
        h = rmsnorm(x, P["attn_norm"][l], cfg["eps"])
        q = h @ P["wq"][l].T
        k = h @ P["wk"][l].T
        v = h @ P["wv"][l].T
        if cfg["bias"]:
            q = q + P["bq"][l]
            k = k + P["bk"][l]
            v = v + P["bv"][l]
        q = rope(q.view(T, H, hs), pos, cfg["theta"])
        k = rope(k.view(T, KV, hs), pos, cfg["theta"])
        v = v.view(T, KV, hs)
        # repeat_kv: query head h reads kv head h // (H/KV)
        k = k.repeat_interleave(H // KV, dim=1)
        v = v.repeat_interleave(H // KV, dim=1)
        att = torch.einsum("thd,shd->hts", q, k) / float(np.sqrt(hs)) + causal
        att = torch.softmax(att, dim=-1)
        o = torch.einsum("hts,shd->thd", att, v).reshape(T, H * hs)
        x = x + o @ P["wo"][l].T
        h = rmsnorm(x, P["ffn_norm"][l], cfg["eps"])
        x = x + (torch.nn.functional.silu(h @ P["w1"][l].T) * (h @ P["w3"][l].T)) @ P["w2"][l].T
    hid = rmsnorm(x, P["final_norm"], cfg["eps"])
    head = P["tok_emb"] if cfg["tied"] else P["lm_head"]
    return hid, hid @ head.T


def objective(P, cfg, batch, rope):
    """J and the per-position outputs over the padded batch (each row run alone)."""
    B, T = batch["mask"].shape
    V = cfg["vocab"]
    logits_all = torch.zeros(B, T, V, dtype=torch.float64)
    logp_all = torch.zeros(B, T, dtype=torch.float64)
    ent_all = torch.zeros(B, T, dtype=torch.float64)
    J = torch.zeros(())
    for b in range(B):
        idx = np.nonzero(batch["mask"][b])[0]
        toks = torch.tensor(batch["tokens"][b, idx], dtype=torch.long)
        hid, logits = forward(P, cfg, toks, rope)
        lsm = torch.log_softmax(logits / TEMP, dim=-1)
        tg = torch.tensor(batch["targets"][b, idx], dtype=torch.long)
        logp = lsm.gather(1, tg[:, None])[:, 0]
        ent = -(lsm.exp() * lsm).sum(-1)
        w = torch.tensor(batch["w"][b, idx], dtype=torch.get_default_dtype())
        u = torch.tensor(batch["u"][b, idx], dtype=torch.get_default_dtype())
        J = J + (w * logp).sum() + C_ENT * ent.sum() + (u * hid).sum()
        logits_all[b, idx] = logits.detach().double()
        logp_all[b, idx] = logp.detach().double()
        ent_all[b, idx] = ent.detach().double()
    return J, logits_all, logp_all, ent_all


def make_batch(rng, V, C):
    """B=3, T=12: row 0 full, row 1 left-padded prompt + right padding, row 2 short."""
    B, T = 3, 12
    layout = [(0, 12), (3, 7), (5, 4)]  # (left pad, length)
    tokens = np.full((B, T), -1, dtype=np.int32)  # -1 at padding: the C forward must ignore it
    targets = np.full((B, T), -1, dtype=np.int32)
    mask = np.zeros((B, T), dtype=np.int32)
    w = np.zeros((B, T))
    u = np.zeros((B, T, C))
    for b, (left, n) in enumerate(layout):
        seq = rng.integers(1, V, size=n + 1)
        tokens[b, left:left + n] = seq[:n]
        targets[b, left:left + n] = seq[1:]
        mask[b, left:left + n] = 1
        w[b, left:left + n] = rng.uniform(-1, 1, size=n)
        u[b, left:left + n] = rng.normal(0, 0.1, size=(n, C))
    return dict(tokens=tokens, targets=targets, mask=mask, w=w, u=u)


def fp32_errors(P, cfg, order, batch, rope, ref_logits, ref_logp, ref_ent, ref_grads):
    """How far PyTorch's own fp32 lands from the float64 reference, under the C test's metrics
    (printed by the C test next to its own errors, for context)."""
    torch.set_default_dtype(torch.float32)
    try:
        Q = {k: v.detach().float().clone().requires_grad_(True) for k, v in P.items()}
        J, logits, logp, ent = objective(Q, cfg, batch, rope)
        (-J).backward()
        g = np.concatenate([Q[k].grad.double().numpy().reshape(-1) for k in order])
    finally:
        torch.set_default_dtype(torch.float64)
    m = batch["mask"].astype(bool)

    def rel(a, b, floor):
        return float(np.max(np.abs(a - b) / np.maximum(np.abs(b), floor)))

    lg, rl = logits.numpy()[m], ref_logits.numpy()[m]
    errs = [rel(lg, rl, 0.1 * np.abs(rl).max()), rel(logp.numpy()[m], ref_logp.numpy()[m], 1e-2),
            rel(ent.numpy()[m], ref_ent.numpy()[m], 1e-2)]
    worst, off = 0.0, 0
    for k in order:
        n = P[k].numel()
        rg = ref_grads[off:off + n]
        worst = max(worst, rel(g[off:off + n], rg, 0.1 * np.abs(rg).max()))
        off += n
    return errs + [worst]


def run_case(path, cfg, P, order, rope, rng, adam_stride, store_step_grads):
    """Write one fixture file: inputs, outputs, gradients, weights after AdamW (all in `order`)."""
    batch = make_batch(rng, cfg["vocab"], cfg["dim"])
    params = [P[k] for k in order]
    for p in params:
        p.requires_grad_(True)
    init = torch.cat([p.detach().reshape(-1) for p in params]).numpy().copy()

    J, logits, logp, ent = objective(P, cfg, batch, rope)
    loss = -J
    loss.backward()
    grads = torch.cat([p.grad.reshape(-1) for p in params]).numpy().copy()
    errs32 = fp32_errors(P, cfg, order, batch, rope, logits, logp, ent, grads)

    opt = torch.optim.AdamW(params, lr=LR, betas=(0.9, 0.999), eps=1e-8, weight_decay=WD)
    norms, step_grads = [], []
    for step in range(STEPS):
        opt.zero_grad()
        Js, _, _, _ = objective(P, cfg, batch, rope)
        (-Js).backward()
        step_grads.append(torch.cat([p.grad.reshape(-1) for p in params]).numpy().copy())
        norms.append(float(torch.nn.utils.clip_grad_norm_(params, CLIP)))
        opt.step()
    after = torch.cat([p.detach().reshape(-1) for p in params]).numpy()

    out = Writer(path)
    out.i32("config", [cfg["dim"], cfg["hidden"], cfg["n_layers"], cfg["n_heads"], cfg["n_kv_heads"],
                       cfg["vocab"], int(cfg["bias"]), int(cfg["tied"])])
    out.f32("hyper", [cfg["theta"], cfg["eps"], TEMP, C_ENT, LR, WD, CLIP, STEPS, adam_stride])
    out.i32("tokens", batch["tokens"])
    out.i32("targets", batch["targets"])
    out.i32("mask", batch["mask"])
    out.f32("w", batch["w"])
    out.f32("u", batch["u"])
    if cfg.get("store_params", True):
        out.f32("params", init)
    out.f32("logits", logits.numpy())
    out.f32("logp", logp.numpy())
    out.f32("entropy", ent.numpy())
    out.f32("J", [float(J)])
    out.f32("grads", grads)
    out.f32("torch_fp32_err", errs32)
    out.f32("grad_norms", norms)
    if store_step_grads:  # pre-clip gradients of each step: replays the optimiser exactly
        out.f32("step_grads", np.concatenate(step_grads))
    out.f32("adamw", after[::adam_stride])
    out.close()
    print(f"{path}: J={float(J):.6f} grad norms {['%.4f' % n for n in norms]} "
          f"torch fp32 errors {['%.2e' % e for e in errs32]} ({os.path.getsize(path)} bytes)")


def load_llama2c(path):
    with open(path, "rb") as f:
        dim, hidden, L, H, KV, vocab, seq = struct.unpack("<7i", f.read(28))
        data = np.frombuffer(f.read(), dtype="<f4")
    cfg = dict(dim=dim, hidden=hidden, n_layers=L, n_heads=H, n_kv_heads=KV, vocab=abs(vocab),
               eps=1e-5, theta=10000.0, bias=False, tied=vocab > 0, store_params=False)
    hs = dim // H
    shapes = dict(tok_emb=(abs(vocab), dim), attn_norm=(L, dim), wq=(L, H * hs, dim), wk=(L, KV * hs, dim),
                  wv=(L, KV * hs, dim), wo=(L, dim, H * hs), ffn_norm=(L, dim), w1=(L, hidden, dim),
                  w2=(L, dim, hidden), w3=(L, hidden, dim), final_norm=(dim,))
    P, off = {}, 0
    for name in LLAMA2C_ORDER:
        n = int(np.prod(shapes[name]))
        P[name] = torch.tensor(data[off:off + n].astype(np.float64)).reshape(shapes[name])
        off += n
    assert cfg["tied"], "stories260K shares its classifier with the embedding"
    return cfg, P


def tiny(rng, tied):
    cfg = dict(dim=32, hidden=40, n_layers=2, n_heads=4, n_kv_heads=2, vocab=48, eps=1e-5,
               theta=10000.0, bias=True, tied=tied)
    C, F, L, H, KV, V = cfg["dim"], cfg["hidden"], cfg["n_layers"], cfg["n_heads"], cfg["n_kv_heads"], cfg["vocab"]
    hs = C // H
    # buffer order of lib/model.c: tok_emb attn_norm wq wk wv bq bk bv wo ffn_norm w1 w2 w3 final_norm [lm_head]
    shapes = [("tok_emb", (V, C)), ("attn_norm", (L, C)), ("wq", (L, H * hs, C)), ("wk", (L, KV * hs, C)),
              ("wv", (L, KV * hs, C)), ("bq", (L, H * hs)), ("bk", (L, KV * hs)), ("bv", (L, KV * hs)),
              ("wo", (L, C, H * hs)), ("ffn_norm", (L, C)), ("w1", (L, F, C)), ("w2", (L, C, F)),
              ("w3", (L, F, C)), ("final_norm", (C,))]
    if not tied:
        shapes.append(("lm_head", (V, C)))
    P = {}
    for name, shp in shapes:
        if "norm" in name:
            a = 1.0 + rng.normal(0, 0.1, size=shp)
        else:
            a = rng.normal(0, 0.15, size=shp)
        P[name] = torch.tensor(a.astype(np.float32).astype(np.float64))  # exactly representable in fp32
    return cfg, P, [n for n, _ in shapes]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=os.environ.get("SAFE_DATA", "../shared/data"))
    ap.add_argument("--out", default="tests/fixtures")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    rng = np.random.default_rng(20240611)

    cfg, P = load_llama2c(os.path.join(args.data, "stories260K", "stories260K.bin"))
    run_case(os.path.join(args.out, "model_stories260k.bin"), cfg, P, LLAMA2C_ORDER, rope_interleaved, rng,
             ADAM_STRIDE_STORIES, False)
    for tied, name in [(True, "tiny_tied"), (False, "tiny_untied")]:
        cfg, P, order = tiny(rng, tied)
        # replay gradients for one case only (fixture size); untied covers every tensor kind
        run_case(os.path.join(args.out, f"model_{name}.bin"), cfg, P, order, rope_half, rng, 1, not tied)


if __name__ == "__main__":
    main()
