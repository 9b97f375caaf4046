#!/usr/bin/env python3
"""The fastest SAM optimizer step a PyTorch user can write on a CUDA GPU, beside flatmin's.

    python3 bench/gpu/torch_cuda_compare.py --out bench/gpu/torch_cuda_compare.json

What is timed is the optimizer side of one SAM step over N float32 parameters in K tensors, with
fixed gradients (no forward / backward), exactly what bench/thrust_passes.cpp's `step` times for
flatmin (`ascend()` + `descend()` of flatmin::sam over SGD with momentum 0.9, found_inf given):

    ‖g‖ over all tensors; saved ← w; w += ρ g / (‖g‖ + 1e-12); w ← saved; SGD(momentum) step

PyTorch variants (each the same arithmetic):
  loop     the per-tensor loop most SAM ports use (davda54/sam's shape): p.grad.norm() per tensor,
           torch.stack, p.clone(), p.add_(g * scale), p.data = old, torch.optim.SGD(foreach=False)
  foreach  torch._foreach_norm, torch._foreach_copy_ into preallocated saved buffers,
           torch._foreach_add_(params, grads, alpha=scale-tensor via _foreach_mul), restore by
           _foreach_copy_, torch.optim.SGD(foreach=True)
  fused    as foreach, with torch.optim.SGD(fused=True) (the fastest base step torch offers)
  fused_item  as fused, but the scale as a Python float (`scale.item()`, one host sync) so that
           the ascent is one `_foreach_add_(params, grads, alpha=...)` without a temporary list
and the yardstick: one device-to-device copy of N floats (torch.Tensor.copy_), 8 B/param.

Times: CUDA events around 50 steps after 10 warm-up steps, median of 7 such rounds, per step.
Not part of CI. Needs a CUDA GPU and torch.
"""

import argparse
import json
import statistics

import torch


def make(n, k, seed=1):
    g = torch.Generator(device="cuda").manual_seed(seed)
    sizes = [n // k + (1 if t < n % k else 0) for t in range(k)]
    params = [torch.nn.Parameter(torch.randn(s, device="cuda", generator=g)) for s in sizes]
    for p in params:
        p.grad = torch.randn(p.shape, device="cuda", generator=g)
    return params


def timed(fn, rounds=7, inner=50, warm=10):
    for _ in range(warm):
        fn()
    torch.cuda.synchronize()
    out = []
    for _ in range(rounds):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        for _ in range(inner):
            fn()
        b.record()
        torch.cuda.synchronize()
        out.append(a.elapsed_time(b) / inner * 1e-3)  # seconds per call
    return statistics.median(out), min(out), max(out)


def sam_step(variant, n, k, rho=1e-6):
    params = make(n, k)
    grads = [p.grad for p in params]
    if variant == "loop":
        opt = torch.optim.SGD(params, lr=1e-6, momentum=0.9, foreach=False)
        state = {}

        @torch.no_grad()
        def step():
            norm = torch.norm(torch.stack([p.grad.norm(p=2) for p in params]), p=2)
            scale = rho / (norm + 1e-12)
            for p in params:
                state[p] = p.data.clone()
                p.add_(p.grad * scale)
            for p in params:
                p.data = state[p]
            opt.step()
    else:
        fused = variant.startswith("fused")
        item = variant == "fused_item"
        opt = torch.optim.SGD(params, lr=1e-6, momentum=0.9, foreach=not fused, fused=fused or None)
        saved = [torch.empty_like(p) for p in params]
        with torch.no_grad():
            ws = [p.data for p in params]

        @torch.no_grad()
        def step():
            norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
            scale = rho / (norm + 1e-12)
            torch._foreach_copy_(saved, ws)
            if item:
                torch._foreach_add_(ws, grads, alpha=scale.item())
            else:
                torch._foreach_add_(ws, torch._foreach_mul(grads, scale))
            torch._foreach_copy_(ws, saved)
            opt.step()
    return timed(step)


def copy_time(n):
    x = torch.ones(n, device="cuda")
    y = torch.empty_like(x)
    return timed(lambda: y.copy_(x))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[10**6, 10**7, 10**8])
    ap.add_argument("--tensors", type=int, nargs="+", default=[1, 1000])
    ap.add_argument("--variants", nargs="+", default=["loop", "foreach", "fused", "fused_item"])
    ap.add_argument("--out", default="bench/gpu/torch_cuda_compare.json")
    a = ap.parse_args()
    rows = []
    info = {"torch": torch.__version__, "gpu": torch.cuda.get_device_name(0)}
    for n in a.sizes:
        med, lo, hi = copy_time(n)
        rows.append({"what": "copy", "N": n, "K": 1, "median_s": med, "min_s": lo, "max_s": hi})
        print(f"copy      N={n:>10} K=   1  {med * 1e6:9.1f} us", flush=True)
        for k in a.tensors:
            for v in a.variants:
                if v == "loop" and k > 1 and n >= 10**8:
                    continue
                med, lo, hi = sam_step(v, n, k)
                rows.append({"what": v, "N": n, "K": k, "median_s": med, "min_s": lo, "max_s": hi})
                print(f"{v:9} N={n:>10} K={k:>4}  {med * 1e6:9.1f} us", flush=True)
                torch.cuda.empty_cache()
    with open(a.out, "w") as f:
        json.dump({"info": info, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
