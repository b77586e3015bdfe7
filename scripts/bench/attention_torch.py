#!/usr/bin/env python3
"""PyTorch baselines for `lrsa-bench attention` (same shapes, same FLOP counting).

Per head shape (14:2xd64, 28:4xd128) and T, one document, bf16 on one GPU:
  sdpa-flash dense   F.scaled_dot_product_attention(is_causal=True), flash backend, native GQA
                     (enable_gqa) when this PyTorch supports it, else K/V repeated (noted)
  flex lrsa          FlexAttention with a block mask from the LRSA visibility rule (selection
                     computed in PyTorch, per KV head), compiled; any T
  sdpa-mask lrsa     SDPA with an explicit boolean [Hq, T, T] mask (efficient backend), only for
                     T <= --masked-max-tokens: the naive way to run LRSA in PyTorch
Forward, backward and forward + backward times (CUDA events, median). FLOPs: 4 * pairs * D * Hq
forward, 10 * pairs * D * Hq backward, pairs = (query, key) pairs the visibility rule admits,
counted exactly (docs/lrsa-spec.md), so the rates compare 1:1 with lrsa-bench attention.
A self-check on a small problem compares flex LRSA with masked SDPA and a float64 reference.

  python3 scripts/bench/attention_torch.py --json torch_attention.jsonl
"""
import argparse
import json
import math
import statistics
import sys

try:
    import torch
    import torch.nn.functional as F
except ImportError:
    sys.exit("attention_torch.py: PyTorch is not installed (pip install torch)")

SHAPES = {"14:2xd64": (14, 2, 64), "28:4xd128": (28, 4, 128)}


def kept(lag, ratio):
    return int(math.floor(ratio * lag + 1e-9))


def visible_pairs(T, mode, sink, lag, K):
    """Exact count of visible (query, key) pairs of one document (spec, "Visibility")."""
    if mode == "dense":
        return T * (T + 1) // 2
    total = 0
    for t in range(T):
        q = 0 if t < sink else (t - sink) // lag
        total += t + 1 if q <= 1 else sink + K * (q - 1) + lag + (t - sink - q * lag + 1)
    return total


def lrsa_selected(k, v, sink, lag, K, lam):
    """Spec "Selection" for one document. k, v: [Hk, T, D]. Returns bool [Hk, T]: row j is in
    Sel(part(j)). Ties go to the lower position (stable descending sort)."""
    Hk, T, D = k.shape
    n_parts = max(0, (T - sink) // lag - 1) if T >= sink + 2 * lag else 0
    selected = torch.zeros(Hk, T, dtype=torch.bool, device=k.device)
    if n_parts == 0:
        return selected
    span = (n_parts + 1) * lag

    def std_scores(z):
        parts = z[:, sink:sink + span].float().reshape(Hk, n_parts + 1, lag, D)
        cand, ref = parts[:, :-1], parts[:, 1:]
        mn = ref.amin(dim=2, keepdim=True)
        rng = (ref.amax(dim=2, keepdim=True) - mn).clamp_min(1e-6)
        s = ((cand - mn) / rng).double().std(dim=-1, correction=1)  # [Hk, P, L]
        return torch.softmax(s, dim=-1)

    score = std_scores(k) + lam * std_scores(v)
    order = torch.sort(score, dim=-1, descending=True, stable=True).indices[..., :K]
    rows = order + sink + torch.arange(n_parts, device=k.device).view(1, -1, 1) * lag
    selected.scatter_(1, rows.reshape(Hk, -1), True)
    return selected


def lrsa_mask_fn(selected, sink, lag, group):
    def mask_mod(b, h, q, kv):
        causal = kv <= q
        pq = torch.div(q - sink, lag, rounding_mode="floor")
        pk = torch.div(kv - sink, lag, rounding_mode="floor")
        window = (q >= sink) & (pk >= pq - 1)
        return causal & ((kv < sink) | (q < sink) | window | selected[h // group, kv])
    return mask_mod


def dense_mask(T, mask_mod, Hq, device):
    q = torch.arange(T, device=device).view(T, 1)
    kv = torch.arange(T, device=device).view(1, T)
    return torch.stack([mask_mod(0, torch.tensor(h, device=device), q, kv) for h in range(Hq)]).unsqueeze(0)


def time_ms(fn, warmup, repeats):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        times.append(start.elapsed_time(stop))
    return statistics.median(times)


def measure(forward, inputs, dout, warmup, repeats):
    """forward(q, k, v) -> out. Times forward, backward (from a retained graph) and both."""
    with torch.no_grad():
        fwd = time_ms(lambda: forward(*inputs), warmup, repeats)
    out = forward(*inputs)
    bwd = time_ms(lambda: torch.autograd.grad(out, inputs, dout, retain_graph=True), warmup, repeats)
    del out

    def both():
        o = forward(*inputs)
        torch.autograd.grad(o, inputs, dout)
    return fwd, bwd, time_ms(both, warmup, repeats)


def sdpa_flash_dense(group):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    def run(q, k, v):
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            try:
                return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
            except (TypeError, RuntimeError):
                # no native GQA in this PyTorch's flash path: repeat K/V (noted in the output)
                run.note = "K/V repeated for GQA"
                return F.scaled_dot_product_attention(q, k.repeat_interleave(group, 1),
                                                      v.repeat_interleave(group, 1), is_causal=True)
    run.note = "native GQA"
    return run


def flex_lrsa(selected, T, Hq, sink, lag, group, device):
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention
    import torch._functorch.config as functorch_config
    # measure() runs autograd.grad repeatedly on one retained graph; a compiled backward that
    # donates its saved buffers refuses that (PyTorch >= 2.6 "donated buffer" error).
    if hasattr(functorch_config, "donated_buffer"):
        functorch_config.donated_buffer = False
    mask_mod = lrsa_mask_fn(selected, sink, lag, group)
    # Compiled mask construction never materializes [Hq, T, T]; PyTorch 2.5 spelled it _compile.
    try:
        block_mask = torch.compile(create_block_mask)(mask_mod, None, Hq, T, T, device=device)
    except Exception:  # noqa: BLE001 - older PyTorch cannot compile create_block_mask itself
        block_mask = create_block_mask(mask_mod, None, Hq, T, T, device=device, _compile=True)
    compiled = torch.compile(flex_attention)
    return lambda q, k, v: compiled(q, k, v, block_mask=block_mask, enable_gqa=True)


def sdpa_masked_lrsa(selected, T, Hq, sink, lag, group, device):
    from torch.nn.attention import SDPBackend, sdpa_kernel
    mask = dense_mask(T, lrsa_mask_fn(selected, sink, lag, group), Hq, device)

    def run(q, k, v):
        with sdpa_kernel(SDPBackend.EFFICIENT_ATTENTION):
            return F.scaled_dot_product_attention(q, k.repeat_interleave(group, 1), v.repeat_interleave(group, 1),
                                                  attn_mask=mask)
    return run


def make_inputs(Hq, Hk, D, T, device, seed=42):
    g = torch.Generator(device=device).manual_seed(seed)
    mk = lambda H: torch.randn(1, H, T, D, device=device, dtype=torch.bfloat16, generator=g).requires_grad_()
    q, k, v = mk(Hq), mk(Hk), mk(Hk)
    dout = torch.randn(1, Hq, T, D, device=device, dtype=torch.bfloat16, generator=g)
    return (q, k, v), dout


def self_check(args, device):
    """Flex LRSA and masked SDPA against a float64 reference on a small problem."""
    Hq, Hk, D, T, sink, lag = 4, 2, 64, 1300, 16, 128
    K, group = kept(lag, args.ratio), 2
    (q, k, v), _ = make_inputs(Hq, Hk, D, T, device, seed=7)
    selected = lrsa_selected(k[0].detach(), v[0].detach(), sink, lag, K, args.score_v_ratio)
    mask = dense_mask(T, lrsa_mask_fn(selected, sink, lag, group), Hq, device)
    kd, vd = k.double().repeat_interleave(group, 1), v.double().repeat_interleave(group, 1)
    scores = (q.double() @ kd.transpose(-1, -2)) / math.sqrt(D)
    ref = torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1) @ vd
    pairs = int(mask[0, 0].sum())
    ok = pairs == visible_pairs(T, "lrsa", sink, lag, K)
    results = {"visible pairs": (pairs, visible_pairs(T, "lrsa", sink, lag, K))}
    for name, fn in (("flex lrsa", flex_lrsa(selected, T, Hq, sink, lag, group, device)),
                     ("sdpa-mask lrsa", sdpa_masked_lrsa(selected, T, Hq, sink, lag, group, device))):
        with torch.no_grad():
            err = (fn(q, k, v).double() - ref).abs().max().item() / ref.abs().max().item()
        results[name] = err
        ok = ok and err < 2e-2
    print(f"self-check {'PASS' if ok else 'FAIL'}: {results}")
    return ok


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    ap.add_argument("--tokens", nargs="+", type=int, default=[8192, 16384, 32768, 65536, 131072])
    ap.add_argument("--sink", type=int, default=16)
    ap.add_argument("--lag", type=int, default=1024)
    ap.add_argument("--ratio", type=float, default=0.25)
    ap.add_argument("--score-v-ratio", type=float, default=1.0)
    ap.add_argument("--masked-max-tokens", type=int, default=16384,
                    help="largest T for the explicit-mask SDPA LRSA baseline (its mask is Hq * T * T bytes)")
    ap.add_argument("--skip-flex", action="store_true", help="skip the FlexAttention LRSA baseline")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--json", help="write JSON lines here")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("attention_torch.py: no CUDA device")
    device = torch.device("cuda")
    out = open(args.json, "w") if args.json else None
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name()}")
    check = "PASS" if self_check(args, device) else "FAIL"
    K = kept(args.lag, args.ratio)
    print(f"{'op':<26} {'shape':<10} {'T':>7} {'ms':>10} {'TFLOP/s':>9}  note")
    for shape in args.shapes:
        Hq, Hk, D = SHAPES[shape]
        group = Hq // Hk
        for T in args.tokens:
            inputs, dout = make_inputs(Hq, Hk, D, T, device)
            dense_pairs = visible_pairs(T, "dense", 0, 1, 1)
            lrsa_pairs = visible_pairs(T, "lrsa", args.sink, args.lag, K)
            runs = [("sdpa-flash", "dense", sdpa_flash_dense(group), dense_pairs)]
            if not args.skip_flex or T <= args.masked_max_tokens:
                selected = lrsa_selected(inputs[1][0].detach(), inputs[2][0].detach(), args.sink, args.lag, K,
                                         args.score_v_ratio)
                if not args.skip_flex:
                    runs.append(("flex", "lrsa", flex_lrsa(selected, T, Hq, args.sink, args.lag, group, device),
                                 lrsa_pairs))
                if T <= args.masked_max_tokens:
                    runs.append(("sdpa-mask", "lrsa",
                                 sdpa_masked_lrsa(selected, T, Hq, args.sink, args.lag, group, device), lrsa_pairs))
            for impl, mode, fn, pairs in runs:
                try:
                    times = measure(fn, inputs, dout, args.warmup, args.repeats)
                except torch.cuda.OutOfMemoryError:
                    print(f"{impl + ' ' + mode:<26} {shape:<10} {T:>7}  out of memory")
                    torch.cuda.empty_cache()
                    continue
                for phase, ms, per_pair in zip(("fwd", "bwd", "fwd+bwd"), times, (4, 10, 14)):
                    flops = per_pair * pairs * D * Hq
                    tflops = flops / (ms * 1e-3) / 1e12
                    dense_equiv = per_pair * dense_pairs * D * Hq / (ms * 1e-3) / 1e12
                    note = getattr(fn, "note", "") + (f" dense-equiv {dense_equiv:.1f} TFLOP/s" if mode == "lrsa" else "")
                    op = f"{impl} {phase} {mode}"
                    print(f"{op:<26} {shape:<10} {T:>7} {ms:>10.3f} {tflops:>9.1f}  {note}")
                    if out:
                        out.write(json.dumps({"kind": "row", "family": "attention-torch", "op": op, "config": shape,
                                              "tokens": T, "ms": ms, "flops": flops, "tflops": tflops,
                                              "dense_equiv_tflops": dense_equiv, "pairs": pairs,
                                              "formula": f"{per_pair} * visible pairs * D * Hq", "check": check,
                                              "note": note, "torch": torch.__version__}) + "\n")
            del inputs, dout, runs
            torch.cuda.empty_cache()
    if out:
        out.close()
    return 0 if check == "PASS" else 1


if __name__ == "__main__":
    sys.exit(main())
