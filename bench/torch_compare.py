#!/usr/bin/env python3
"""flatmin against what a PyTorch user would otherwise run: per-step optimizer-side time of SAM.

    python3 bench/torch_compare.py                      # N = 10^5, 10^6, 10^7; K = 1, 100, 1000
    python3 bench/torch_compare.py --sizes 10000000 --tensors 1 --threads 0

PyTorch side, two ways (--torch):
- `loop`: the widely used copy-restore SAM (the algorithm of github.com/davda54/sam, written here
  from its description): first step ‖g‖ over all parameters, e_w = ρ g / (‖g‖ + 1e-12),
  old_p = p.clone(), p += e_w; second step p = old_p, then torch.optim.SGD(momentum=0.9) or
  torch.optim.AdamW() (defaults: lr 1e-3, weight decay 1e-2) `.step()` with their default
  per-tensor loops on the CPU.
- `expert`: the fastest SAM step a PyTorch user can write on the CPU: the same algorithm with
  multi-tensor ops, `torch._foreach_norm` for ‖g‖, `torch._foreach_copy_` into buffers allocated
  once (save and restore), one `torch._foreach_add_(params, grads, alpha=scale)`, around
  `torch.optim.AdamW(fused=True)` (torch >= 2.4 on the CPU; else foreach=True) or
  `torch.optim.SGD(momentum=0.9, foreach=True)`. The variant that ran is recorded.
CPU, float32, N parameters split into K tensors, gradients fixed random tensors (no forward /
backward is timed: only the optimizer side, as for flatmin). Each configuration: warm-up steps,
then the median of --steps timed steps.

flatmin side: the `opt_sam_sgd` / `opt_sam_adamw` benchmarks of bench/bench_passes.cpp, which
time `ascend()` + `descend()` of flatmin::sam with the same base optimizer and options on the same
N and K (with the finiteness checks flatmin always makes), built in Release by this script if
needed (build/bench-release).

Each configuration (base, N, K, threads) runs --rounds rounds, one after the other: flatmin's
benchmark (the median of --reps repetitions), then each PyTorch setup. The times are medians over
the rounds; the speed-up is the median of the rounds' ratios (each a flatmin and a PyTorch time
from the same seconds, which a shared VM's bandwidth, moving by 2x from minute to minute, needs),
with their range.

Writes build/bench/torch_compare.json (read by scripts/bench_report.py) and prints a table.
Not part of CI. Needs torch (bench/README.md says how it was installed).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def torch_sam_step_time(torch, n, k, base, threads, steps, rho=0.05):
    torch.set_num_threads(threads)
    gen = torch.Generator().manual_seed(1)
    sizes = [n // k + (1 if t < n % k else 0) for t in range(k)]
    params = [torch.nn.Parameter(torch.randn(s, generator=gen)) for s in sizes]
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen)
    if base == "sgd":
        opt = torch.optim.SGD(params, lr=1e-3, momentum=0.9)
    else:
        opt = torch.optim.AdamW(params, lr=1e-3)
    state = {}

    @torch.no_grad()
    def first_step():
        grad_norm = torch.norm(torch.stack([p.grad.norm(p=2) for p in params if p.grad is not None]), p=2)
        scale = rho / (grad_norm + 1e-12)
        for p in params:
            if p.grad is None:
                continue
            state[p] = p.data.clone()
            p.add_(p.grad * scale.to(p))

    @torch.no_grad()
    def second_step():
        for p in params:
            if p.grad is None:
                continue
            p.data = state[p]
        opt.step()

    def step():
        first_step()
        # (the user's second forward/backward would write g_adv here)
        second_step()

    for _ in range(3):
        step()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def torch_expert_sam_step_time(torch, n, k, base, threads, steps, rho=0.05):
    """The `expert` SAM step (module docstring); returns (median seconds, the optimizer variant)."""
    torch.set_num_threads(threads)
    gen = torch.Generator().manual_seed(1)
    sizes = [n // k + (1 if t < n % k else 0) for t in range(k)]
    params = [torch.nn.Parameter(torch.randn(s, generator=gen)) for s in sizes]
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen)
    if base == "sgd":
        opt, variant = torch.optim.SGD(params, lr=1e-3, momentum=0.9, foreach=True), "SGD(foreach=True)"
    else:
        try:  # fused AdamW on the CPU: torch >= 2.4
            opt, variant = torch.optim.AdamW(params, lr=1e-3, fused=True), "AdamW(fused=True)"
            opt.step()  # older versions refuse CPU tensors only here
            opt = torch.optim.AdamW(params, lr=1e-3, fused=True)
        except (RuntimeError, TypeError, ValueError):
            opt, variant = torch.optim.AdamW(params, lr=1e-3, foreach=True), "AdamW(foreach=True)"
    grads = [p.grad for p in params]
    with torch.no_grad():
        saved = [torch.empty_like(p) for p in params]  # allocated once, as an expert would
    if hasattr(torch, "_foreach_copy_"):
        copy_all = torch._foreach_copy_
    else:  # torch < 2.1 (Debian's 1.13) has no multi-tensor copy
        variant += ", copy_ per tensor"

        def copy_all(dst, src):
            for d, s in zip(dst, src):
                d.copy_(s)

    @torch.no_grad()
    def first_step():
        grad_norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
        scale = rho / (grad_norm.item() + 1e-12)
        copy_all(saved, params)
        torch._foreach_add_(params, grads, alpha=scale)

    @torch.no_grad()
    def second_step():
        copy_all(params, saved)
        opt.step()

    def step():
        first_step()
        # (the user's second forward/backward would write g_adv here)
        second_step()

    for _ in range(3):
        step()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), variant


def flatmin_binary():
    """bench_passes of a Release build (build/bench-release), configured and built if needed."""
    build = os.path.join(ROOT, "build", "bench-release")
    exe = os.path.join(build, "bench", "bench_passes")
    if not os.path.exists(os.path.join(build, "CMakeCache.txt")):
        subprocess.run(["cmake", "-S", ROOT, "-B", build, "-DCMAKE_BUILD_TYPE=Release", "-DFLATMIN_BUILD_BENCHMARKS=ON",
                        "-DFLATMIN_BUILD_TESTS=OFF", "-DFLATMIN_BUILD_EXAMPLES=OFF", "-DFLATMIN_ENABLE_THRUST=OFF"],
                       check=True, stdout=subprocess.DEVNULL)
    subprocess.run(["cmake", "--build", build, "-j", str(os.cpu_count()), "--target", "bench_passes"], check=True,
                   stdout=subprocess.DEVNULL)
    return exe


def flatmin_time(exe, base, n, k, threads, reps):
    """Median real time (s) of bench_passes' opt_sam_<base> at N = n, K = k, over `reps` repetitions."""
    out = os.path.join(ROOT, "build", "bench", "torch_compare_flatmin.json")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    filt = f"^opt_sam_{base}/N:{n}/K:{k}/threads:{threads}/"
    # the grid holds N alone (any N, 10^8 too); the copy baseline and stream yardsticks are not
    # used here: timed briefly
    env = dict(os.environ, FLATMIN_BENCH_SIZES=str(n), FLATMIN_BENCH_LARGE="0", FLATMIN_BENCH_COPY_SECONDS="0.02",
               FLATMIN_BENCH_YARDSTICK_SECONDS="0.002")
    subprocess.run([exe, f"--benchmark_filter={filt}", f"--benchmark_repetitions={reps}", "--benchmark_min_time=0.2",
                    f"--benchmark_out={out}", "--benchmark_out_format=json"],
                   check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    with open(out) as f:
        data = json.load(f)
    times = []
    for b in data["benchmarks"]:
        if b.get("run_type") != "iteration":
            continue
        scale = {"ns": 1e-9, "us": 1e-6, "ms": 1e-3, "s": 1.0}[b["time_unit"]]
        times.append(b["real_time"] * scale)
    return statistics.median(times) if times else None


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[10**5, 10**6, 10**7])
    ap.add_argument("--tensors", type=int, nargs="+", default=[1, 100, 1000])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 0], help="1, or 0 for all cores")
    ap.add_argument("--bases", nargs="+", default=["sgd", "adamw"], choices=["sgd", "adamw"])
    ap.add_argument("--torch", nargs="+", default=["loop", "expert"], choices=["loop", "expert"],
                    help="PyTorch SAM steps to time (module docstring)")
    ap.add_argument("--steps", type=int, default=10, help="timed PyTorch steps per configuration and round")
    ap.add_argument("--reps", type=int, default=3, help="flatmin benchmark repetitions per round")
    ap.add_argument("--rounds", type=int, default=3,
                    help="rounds per configuration, each timing flatmin then every PyTorch setup")
    ap.add_argument("--out", default=os.path.join(ROOT, "build", "bench", "torch_compare.json"))
    a = ap.parse_args()
    if a.rounds < 1 or a.reps < 1 or a.steps < 1:
        ap.error("--rounds, --reps and --steps must be at least 1")
    try:
        import torch
    except ImportError:
        sys.exit("torch_compare: PyTorch is not installed (see bench/README.md)")
    cores = os.cpu_count() or 1
    exe = flatmin_binary()
    results = []
    print(f"{'base':6} {'torch':22} {'N':>9} {'K':>5} {'thr':>4} {'PyTorch':>12} {'flatmin':>12} {'speed-up':>9}"
          f"  {'range':>11}")
    for base in a.bases:
        for n in a.sizes:
            for k in a.tensors:
                if k > n:
                    continue
                for t in a.threads:
                    nthr = cores if t == 0 else t
                    fs, ts = [], {how: [] for how in a.torch}
                    variants = {}
                    for _ in range(a.rounds):
                        f = flatmin_time(exe, base, n, k, t, a.reps)
                        fs.append(f)
                        for how in a.torch:
                            if how == "loop":
                                x = torch_sam_step_time(torch, n, k, base, nthr, a.steps)
                                variants[how] = "per-tensor loop"
                            else:
                                x, v = torch_expert_sam_step_time(torch, n, k, base, nthr, a.steps)
                                variants[how] = "foreach SAM + " + v
                            ts[how].append(x)
                    for how in a.torch:
                        pairs = [x / f for x, f in zip(ts[how], fs) if f]
                        r = {"base": base, "torch": how, "torch_variant": variants[how], "N": n, "K": k,
                             "threads": nthr, "torch_s": statistics.median(ts[how]),
                             "flatmin_s": statistics.median([f for f in fs if f]) if any(fs) else None,
                             "speedup": statistics.median(pairs) if pairs else None,
                             "speedup_range": [min(pairs), max(pairs)] if pairs else None, "rounds": a.rounds}
                        results.append(r)
                        sp = f"{r['speedup']:8.1f}x" if pairs else "        –"
                        rg = f"{min(pairs):5.2f}-{max(pairs):<5.2f}" if pairs else ""
                        fs_ms = f"{r['flatmin_s'] * 1e3:10.3f}ms" if r["flatmin_s"] else "           –"
                        print(f"{base:6} {variants[how][:22]:22} {n:9d} {k:5d} {nthr:4d} {r['torch_s'] * 1e3:10.3f}ms "
                              f"{fs_ms} {sp}  {rg}", flush=True)
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    with open(a.out, "w") as f:
        json.dump({"command": "python3 bench/torch_compare.py " + " ".join(sys.argv[1:]),
                   "torch_version": torch.__version__, "threads": "1 and all (" + str(cores) + ")",
                   "rounds": a.rounds, "results": results}, f, indent=1)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
