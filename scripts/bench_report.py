#!/usr/bin/env python3
"""Turns the Google Benchmark JSON files of scripts/bench.sh into bench/RESULTS.md and an SVG plot.

    python3 scripts/bench_report.py build/bench bench/RESULTS.md bench/bytes_per_second.svg

Reads every <dir>/bench_*.json (run with --benchmark_repetitions and every repetition kept),
<dir>/machine.txt (written by scripts/bench.sh) and, if present, <dir>/torch_compare.json
(written by bench/torch_compare.py). Python 3 standard library only.

Benchmark names are `pass/N:n/K:k/threads:t/real_time` (threads 0 = all cores). For each, over
the repetitions: the median time, the median bytes/s of DESIGN.md's minimal traffic, the spread
(max − min over median, in %), the median `copy_ratio` counter: bytes/s over the copy
bandwidth of the same number of bytes with the same threads, measured in the same binary, and the
median `stream_ratio`: the pass against a kernel with its own read and write streams
(bench/streams.hpp).
"""

import glob
import json
import math
import os
import re
import statistics
import sys

# passes whose bytes/s go on the plot, in this order (the rest are in the tables only)
PLOT_PASSES = ["copy", "global_norm", "ascend", "descend_sgd", "descend_adamw", "sgd", "adamw", "opt_sam_sgd",
               "opt_sam_adamw"]
COLORS = ["#000000", "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf",
          "#bcbd22", "#7f7f7f"]


# The passes a step makes, by composition kind (issue #13): static text, kept true by hand when the
# optimizer's passes change (include/flatmin/optimizer/sharpness_aware.hpp, mask/detail/pass_target.hpp).
# B/param: the minimal count, fp32 (bit masks 1/8 B). A time cell "{time:PROGRAM:PASS[/ARG]}" is
# filled from this run's median at N = 10^7, one tensor, one thread ("to measure" when the run has
# no such row); bench_masks times the FSAM estimate and refresh; FSAM's other rows are "to measure"
# until bench_masks has per-pass rows for them.
PASSES_SECTION = [
    "## The passes of a step, and why they are not fused", "",
    "Every pass `ascend()` + `descend()` makes over the parameters, fp32, with its minimal bytes per "
    "parameter (each stream read or written once; 1/8 B per mask bit). The user's gradient evaluation "
    "at w + ε sits between the ascent and the check. Times: one thread, N = 10^7, one tensor (the "
    "`opt_*` and pass rows of bench_passes; bench_masks for FSAM).", "",
    "### Dense SAM over SGD (momentum) and over AdamW (`flatmin::sam`)", "",
    "| # | pass | reads | writes | B/param | time | why it is a pass of its own |",
    "|---|---|---|---|---|---|---|",
    "| 1 | statistics (`stats_pass`: Σg², finiteness) | g | – | 4 | {time:bench_passes:global_norm} | ε = ρ g / ‖g‖ needs the "
    "global norm before any weight moves: a barrier over every tensor. The finiteness of g is counted "
    "in the same pass. |",
    "| 2 | ascent (`ascend_pass`: saved ← w, w ← w + ε) | w, g | w, saved | 16 | {time:bench_passes:ascend} | needs "
    "pass 1's norm; the user's gradient at w + ε follows it. |",
    "| 3 | finiteness of g_adv (`check_pass`, also ‖g_adv‖ for the report) | g_adv | – | 4 | "
    "{time:bench_mixed:check_pass/g_fp32} | "
    "a non-finite g_adv must leave the optimizer state untouched and w restored, which is known only "
    "after the last entry is read; fused into pass 4, the moments would be written first (undoing them "
    "needs a copy of the state: more bytes than this pass). Left out (0 B) when the caller passes "
    "`step_args::found_inf` (a GradScaler's unscale already checked g_adv). |",
    "| 4 | restore + base step fused (`descend_pass`, R = 1) — SGD momentum | saved, g_adv, buf | w, buf "
    "| 20 | {time:bench_passes:descend_sgd} | – (the restore is fused: w is written, not read) |",
    "| 4 | the same — AdamW | saved, g_adv, m, v | w, m, v | 28 | {time:bench_passes:descend_adamw} | – |",
    "", "Step totals: SAM-SGD 44 B/param (40 with found_inf), SAM-AdamW 52 (48). ASAM reads w in the "
    "statistics too (the norm term |w| + η): 48 / 56.", "",
    "### FSAM (`flatmin::fsam`, element units, accumulated Fisher estimate), over SGD or Adam", "",
    "| # | pass | reads | writes | B/param | time | why it is a pass of its own |",
    "|---|---|---|---|---|---|---|",
    "| 1 | statistics under the mask (‖g‖ over every perturbed entry, Σ over the masked) with the Fisher "
    "estimate F' = F + g² (`kernels::stats_scores_pass`) | g, F, mask bits | F' | 12.125 "
    "| {time:bench_masks:BM_fisher_statistics/1} | as SAM's pass 1; the estimate shares its read of g "
    "(the two apart, 16.125 B/param: bench_masks BM_fisher_statistics/0). F' is the pending sums, which "
    "a skipped step drops. |",
    "| 2 | every T_m steps: top-k of F (a sampled bracket of the k-th score, one counting pass over F, "
    "radix selection inside the bracket's band), new bits (a pass over F), statistics again | F, g | bits "
    "| ≈ 4 per pass over F + 4.125, amortised over T_m (100) | {time:bench_masks:BM_fisher_refresh/1/100} "
    "(with the estimate) | "
    "the new mask depends on all of F; the statistics depend on the new mask. |",
    "| 3 | ascent under the mask (segment form, the mask's lanes per run of 256) | w, g, bits | w, saved | 16.125 | to "
    "measure | needs pass 1's norm. saved has a slot per entry (element units are not compact), so the "
    "descent can fuse the restore. |",
    "| 4 | finiteness of g_adv | g_adv | – | 4 | to measure | as SAM's pass 3 |",
    "| 5 | restore + base step fused (R = 1; segment form, the mask's lanes per run of 256) | saved, w, "
    "g_adv, bits, state | w, state | SGD 24.125, Adam 32.125 | to measure | the restore is a select by "
    "the mask, so w is read too (4 B more than dense SAM). |",
    "", "Step totals (no refresh): FSAM-SGD 56.375 B/param, FSAM-Adam 64.375. The whole FSAM-SGD step "
    "(bench_passes `opt_fsam_sgd`, one thread, 10^7): {time:bench_passes:opt_fsam_sgd}. With block masks "
    "(`block` > 1) the mask is compact: the ascent and the restore run over the kept blocks only, the "
    "statistics add a pass over them (the masked sums), and the restore becomes a pass of its own "
    "before the descent (bench_masks).", "",
]

def parse_name(run_name):
    parts = run_name.split("/")
    args = {}
    positional = [p for p in parts[1:] if ":" not in p and p not in ("real_time", "process_time", "manual_time")]
    if positional:  # programs that name their arguments by position (bench_masks: block/density)
        args["args"] = "/".join(positional)
    for p in parts[1:]:
        if ":" in p:
            k, v = p.split(":", 1)
            try:
                args[k] = int(v)
            except ValueError:
                args[k] = v
    return parts[0], args


def load(directory):
    runs = {}  # (program, run_name) -> list of iteration entries
    contexts = {}
    for path in sorted(glob.glob(os.path.join(directory, "bench_*.json"))):
        program = os.path.splitext(os.path.basename(path))[0]
        with open(path) as f:
            data = json.load(f)
        contexts[program] = data.get("context", {})
        for b in data.get("benchmarks", []):
            if b.get("run_type") != "iteration":
                continue
            if b.get("error_occurred"):
                runs.setdefault((program, b["run_name"]), []).append({"error": b.get("error_message", "error")})
                continue
            runs.setdefault((program, b["run_name"]), []).append(b)
    return runs, contexts


def summarize(runs):
    rows = []
    for (program, run_name), reps in runs.items():
        name, args = parse_name(run_name)
        row = {"program": program, "pass": name, "N": args.get("N", reps[0].get("N")), "K": args.get("K"),
               "threads": args.get("threads"), "args": args, "run_name": run_name}
        good = [r for r in reps if "error" not in r]
        if not good:
            row["error"] = reps[0]["error"]
            rows.append(row)
            continue
        unit = {"ns": 1e-9, "us": 1e-6, "ms": 1e-3, "s": 1.0}[good[0].get("time_unit", "ns")]
        times = [r["real_time"] * unit for r in good]
        row["reps"] = len(good)
        row["time"] = statistics.median(times)
        if all("bytes_per_second" in r for r in good):
            bps = [r["bytes_per_second"] for r in good]
            row["bps"] = statistics.median(bps)
            row["spread"] = (max(bps) - min(bps)) / row["bps"] if row["bps"] else 0.0
        else:
            row["spread"] = (max(times) - min(times)) / row["time"] if row["time"] else 0.0
        for c in ("copy_ratio", "copy_GBps", "B_per_param", "omp_threads", "stream_ratio", "stream_GBps",
                  "stream_variant"):
            if all(c in r for r in good):
                row[c] = statistics.median([r[c] for r in good])
        # counters a program reports beyond the standard ones (bench_masks: x_copy, touched)
        std = {"name", "run_name", "run_type", "family_index", "per_family_instance_index", "repetitions",
               "repetition_index", "threads", "iterations", "real_time", "cpu_time", "time_unit", "N", "K",
               "bytes_per_second", "copy_ratio", "copy_GBps", "B_per_param", "omp_threads", "label",
               "stream_ratio", "stream_GBps", "stream_variant",
               "aggregate_name", "aggregate_unit", "error_occurred", "error_message"}
        extra = sorted(k for k in good[0] if k not in std and isinstance(good[0][k], (int, float)))
        row["counters"] = {k: statistics.median([r[k] for r in good if k in r]) for k in extra}
        rows.append(row)
    rows.sort(key=lambda r: (r["program"], r["pass"], r["N"] or 0, r["K"] or 0, r["threads"] if r["threads"] else 99))
    return rows


TIME_CELL = re.compile(r"\{time:(\w+):([\w/]+)\}")


def fill_times(lines, rows):
    """The PASSES_SECTION time cells from this run: the median at N = 10^7, K = 1, one thread."""
    def cell(m):
        program, name = m.group(1), m.group(2)
        base, _, pos = name.partition("/")
        for r in rows:
            if (r["program"] == program and r["pass"] == base and r.get("N") == 10**7 and r.get("K") in (1, None)
                    and r.get("threads") in (1, None) and (not pos or r["args"].get("args") == pos)
                    and "time" in r):
                # a program without a thread count in its names (bench_masks) runs on every core
                return fmt_time(r["time"]) + (" (all cores)" if r.get("threads") is None else "")
        return "to measure"
    return [TIME_CELL.sub(cell, line) for line in lines]


def order(names):
    """Unique names, the plotted passes first in their plot order."""
    u = list(dict.fromkeys(names))
    return [n for n in PLOT_PASSES if n in u] + sorted(n for n in u if n not in PLOT_PASSES)


def fmt_time(s):
    if s is None:
        return "–"
    for unit, scale in (("s", 1), ("ms", 1e-3), ("µs", 1e-6), ("ns", 1e-9)):
        if s >= scale:
            return f"{s / scale:.3g} {unit}"
    return f"{s / 1e-9:.3g} ns"


def fmt_n(n):
    if n is None:
        return "–"
    e = math.log10(n) if n > 0 else 0
    return f"10^{int(round(e))}" if abs(e - round(e)) < 1e-9 else str(n)


def thr_label(t, cores):
    return "1" if t == 1 else f"all ({cores})" if t == 0 else str(t)


def table(header, rows):
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def svg_plot(rows, path, cores):
    """bytes/s against N (log-log), one panel per thread setting, K = 1, copy line dashed."""
    data = {}
    for r in rows:
        if r.get("K") != 1 or "bps" not in r or r["pass"] not in PLOT_PASSES or r["program"] != "bench_passes":
            continue
        data.setdefault(r["threads"], {}).setdefault(r["pass"], []).append((r["N"], r["bps"]))
    if not data:
        return False
    panels = sorted(data, key=lambda t: (t == 0, t))
    W, H, pad_l, pad_b, pad_t, pad_r = 460, 340, 62, 44, 30, 12
    legend_w = 150
    total_w = W * len(panels) + legend_w
    ns = [n for p in data.values() for s in p.values() for n, _ in s]
    ys = [b for p in data.values() for s in p.values() for _, b in s]
    x0, x1 = math.log10(min(ns)), math.log10(max(ns))
    if x1 == x0:
        x1 = x0 + 1
    y0, y1 = math.floor(math.log10(min(ys) / 1e9)), math.ceil(math.log10(max(ys) / 1e9))
    if y1 == y0:
        y1 = y0 + 1
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{total_w}" height="{H}" font-family="sans-serif" '
           f'font-size="11">', f'<rect width="{total_w}" height="{H}" fill="white"/>']
    for pi, t in enumerate(panels):
        ox = pi * W
        pw, ph = W - pad_l - pad_r, H - pad_t - pad_b

        def X(n):
            return ox + pad_l + (math.log10(n) - x0) / (x1 - x0) * pw

        def Y(b):
            return pad_t + ph - (math.log10(b / 1e9) - y0) / (y1 - y0) * ph

        out.append(f'<text x="{ox + pad_l + pw / 2}" y="18" text-anchor="middle" font-size="13">'
                   f'threads: {thr_label(t, cores)} (1 tensor)</text>')
        out.append(f'<rect x="{ox + pad_l}" y="{pad_t}" width="{pw}" height="{ph}" fill="none" stroke="#888"/>')
        for e in range(int(x0), int(x1) + 1):
            x = X(10 ** e)
            out.append(f'<line x1="{x}" y1="{pad_t}" x2="{x}" y2="{pad_t + ph}" stroke="#eee"/>')
            out.append(f'<text x="{x}" y="{pad_t + ph + 16}" text-anchor="middle">10^{e}</text>')
        for e in range(y0, y1 + 1):
            for m in (1, 2, 5):
                v = m * 10 ** e
                if v > 10 ** y1:
                    break
                y = Y(v * 1e9)
                out.append(f'<line x1="{ox + pad_l}" y1="{y}" x2="{ox + pad_l + pw}" y2="{y}" stroke="#eee"/>')
                out.append(f'<text x="{ox + pad_l - 4}" y="{y + 4}" text-anchor="end">{v:g}</text>')
        out.append(f'<text x="{ox + pad_l + pw / 2}" y="{H - 8}" text-anchor="middle">parameters N</text>')
        out.append(f'<text x="{ox + 14}" y="{pad_t + ph / 2}" text-anchor="middle" '
                   f'transform="rotate(-90 {ox + 14} {pad_t + ph / 2})">GB/s (minimal traffic)</text>')
        for i, name in enumerate(PLOT_PASSES):
            pts = sorted(data[t].get(name, []))
            if not pts:
                continue
            color = COLORS[i % len(COLORS)]
            dash = ' stroke-dasharray="6,4"' if name == "copy" else ""
            width = 2.5 if name == "copy" else 1.5
            d = " ".join(f"{X(n):.1f},{Y(b):.1f}" for n, b in pts)
            out.append(f'<polyline points="{d}" fill="none" stroke="{color}" stroke-width="{width}"{dash}/>')
            for n, b in pts:
                out.append(f'<circle cx="{X(n):.1f}" cy="{Y(b):.1f}" r="2.5" fill="{color}"/>')
    lx = W * len(panels) + 8
    for i, name in enumerate(PLOT_PASSES):
        y = pad_t + 10 + i * 18
        color = COLORS[i % len(COLORS)]
        dash = ' stroke-dasharray="6,4"' if name == "copy" else ""
        out.append(f'<line x1="{lx}" y1="{y}" x2="{lx + 24}" y2="{y}" stroke="{color}" stroke-width="2"{dash}/>')
        out.append(f'<text x="{lx + 30}" y="{y + 4}">{name}</text>')
    out.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(out) + "\n")
    return True


def ddp_section(path):
    """The data-parallel section: bench/ddp/results.md as bench_ddp wrote it (scripts/bench.sh)."""
    if not os.path.exists(path):
        return []
    with open(path) as f:
        body = f.read().rstrip("\n")
    return ["## Data-parallel steps (bench_ddp, MPI)", "",
            "bench/ddp_comm.cpp: per mode of `flatmin::data_parallel` over `comm::mpi`, the median time of "
            "ascend() + descend() (the gradient written between them is not timed), the part inside the "
            "collectives (a stopwatch around the communicator: waiting for the other rank counts), the rest, "
            "the mean step (FSAM's refresh steps show there) and the bytes one rank sends per step; beside "
            "them the one-process step of the same composition on each rank alone, and an MPI_Allreduce "
            "(MPI_SUM) of g for scale: what averaging in the engine's own order costs.", "",
            body, ""]


def gpu_section(gdir):
    """The GPU section from <bench>/gpu (written by scripts/bench_cuda.sh on a CUDA machine), if any."""
    jpath = os.path.join(gdir, "bench_cuda_passes.json")
    if not os.path.exists(jpath):
        return []
    with open(jpath) as f:
        data = json.load(f)
    machine = []
    mpath = os.path.join(gdir, "machine.txt")
    if os.path.exists(mpath):
        with open(mpath) as f:
            machine = [line.rstrip("\n") for line in f if line.strip()]
    reps, med = {}, {}
    for b in data.get("benchmarks", []):
        name = b.get("run_name", b["name"])
        if b.get("run_type") == "aggregate":
            if b.get("aggregate_name") == "median":
                med[name] = b
        else:
            reps.setdefault(name, []).append(b)
    body = []
    for name, b in med.items():
        parts = name.replace("/manual_time", "").split("/")
        base, args = parts[0], parts[1:]
        label = base.replace("bm_pass<pass::", "").replace(">", "").replace("bm_", "")
        n = int(args[0]) if args else 0
        extra = args[1] if len(args) > 1 else "–"
        unit = {"ns": 1e-9, "us": 1e-6, "ms": 1e-3, "s": 1.0}[b.get("time_unit", "ns")]
        t = b["real_time"] * unit
        gb = [r["GBps"] for r in reps.get(name, []) if "GBps" in r]
        spread = f"{100 * (max(gb) - min(gb)) / b['GBps']:.0f} %" if gb and b.get("GBps") else "–"
        ratio = b.get("copy_ratio", b.get("x_copy"))
        kind = "× copy time" if "x_copy" in b else "× copy"
        body.append([label, fmt_n(n), extra, fmt_time(t), f"{b['GBps']:.0f}" if "GBps" in b else "–", spread,
                     f"{ratio:.2f} ({kind})" if ratio is not None else "–"])
    md = ["## GPU: backend::thrust under CUDA", ""]
    md += [f"- {line}" for line in machine]
    md += ["",
           "`bench_cuda_passes` (bench/thrust_passes.cpp compiled by nvcc), times from CUDA-synchronised wall "
           "clock per iteration, median of the repetitions. Third column: tensors K for the passes, block size "
           "for the Fisher refresh (1 = element units). GB/s counts the minimal bytes of bench/thrust_passes.cpp's "
           "header (copy 8 B/param); × copy is that rate over the device-to-device copy (`thrust::copy`) of the "
           "same N in the same run; for the refresh, × copy time is its time over one copy pass of N floats.", "",
           table(["pass", "N", "K / block", "median time", "GB/s", "spread", "ratio"], body), ""]
    md += torch_cuda_section(gdir, med)
    return md


def torch_cuda_section(gdir, med):
    """flatmin's whole SAM-SGD step beside PyTorch's on the same GPU (bench/gpu/torch_cuda_compare.py)."""
    tpath = os.path.join(gdir, "torch_cuda_compare.json")
    if not os.path.exists(tpath):
        return []
    with open(tpath) as f:
        tc = json.load(f)
    flat = {}
    for name, b in med.items():
        parts = name.replace("/manual_time", "").split("/")
        if parts[0] == "bm_pass<pass::step>":
            unit = {"ns": 1e-9, "us": 1e-6, "ms": 1e-3, "s": 1.0}[b.get("time_unit", "ns")]
            flat[(int(parts[1]), int(parts[2]))] = b["real_time"] * unit
    # flatmin's step timed in the same device session as PyTorch, when the file carries it
    if "flatmin_step" in tc:
        flat = {tuple(int(x) for x in key.split("/")): v for key, v in tc["flatmin_step"].items()}
    t = {(r["what"], r["N"], r["K"]): r["median_s"] for r in tc["rows"]}
    body = []
    for (n, k), ft in sorted(flat.items()):
        cells = [fmt_n(n), str(k), fmt_time(t[("copy", n, 1)]) if ("copy", n, 1) in t else "–", fmt_time(ft)]
        for v in ("loop", "foreach", "fused", "fused_item"):
            tv = t.get((v, n, k))
            cells.append(f"{fmt_time(tv)} ({tv / ft:.2f}×)" if tv else "–")
        body.append(cells)
    info = tc.get("info", {})
    later = tc.get("second_session")
    if later:
        lt = {(r["what"], r["N"], r["K"]): r["median_s"] for r in later["rows"]}
        for cells, ((n, k), _) in zip(body, sorted(flat.items())):
            tv = lt.get(("fused_item", n, k))
            cells[-1] = f"{fmt_time(tv)} (later session)" if tv else "–"
    return ["### Side by side with PyTorch on the same GPU (one SAM-SGD step, optimizer side)", "",
            f"PyTorch {info.get('torch', '?')} on {info.get('gpu', '?')}, `python3 bench/gpu/torch_cuda_compare.py` "
            "in an earlier device session than the table above (another H200): CUDA events around 50 steps, median of 7 rounds. "
            f"flatmin: the `step` of bench_cuda_passes timed in the same session ({info.get('flatmin', 'the row above')}; "
            "ascend() + descend() of flatmin::sam over SGD momentum 0.9, found_inf given). PyTorch: ‖g‖, save, w += ρg/‖g‖, restore, SGD(momentum 0.9) step, written as "
            "the per-tensor loop (davda54/sam's shape, SGD foreach=False), with foreach ops and SGD(foreach=True), "
            "with foreach ops and SGD(fused=True), and the same with the scale read to the host (`scale.item()`) so the ascent is one `_foreach_add_` with a float alpha. In brackets: PyTorch's time over flatmin's (above 1: "
            "flatmin is faster). copy: one device-to-device copy of N floats (torch `copy_`).", "",
            table(["N", "K", "copy", "flatmin step", "torch loop", "torch foreach", "torch fused", "torch fused, float scale"], body), ""]


def main():
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    directory, md_path, svg_path = sys.argv[1:]
    runs, contexts = load(directory)
    if not runs:
        sys.exit(f"bench_report: no bench_*.json with results in {directory}")
    rows = summarize(runs)
    ctx = next(iter(contexts.values()))
    cores = ctx.get("num_cpus", "?")
    machine = []
    mpath = os.path.join(directory, "machine.txt")
    if os.path.exists(mpath):
        with open(mpath) as f:
            machine = [line.rstrip("\n") for line in f if line.strip()]
    caches = ", ".join(f"L{c['level']} {c['type'].lower()} {c['size'] // 1024} KiB"
                       + (f" ×{cores // c['num_sharing']}" if isinstance(cores, int) and c.get("num_sharing") else "")
                       for c in ctx.get("caches", []))

    md = ["# flatmin benchmark results", "",
          "Generated by `scripts/bench.sh` (which runs `scripts/bench_report.py`); do not edit by hand.", "",
          "## Machine and command", ""]
    md += [f"- {line}" for line in machine]
    md += [f"- Google Benchmark context: {cores} CPUs at {ctx.get('mhz_per_cpu', '?')} MHz; {caches}; "
           f"load average at start {', '.join(f'{x:.2f}' for x in ctx.get('load_avg', []))}",
           f"- programs: {', '.join(sorted(contexts))}", ""]
    load_now = ctx.get("load_avg", [0])[0]
    if isinstance(cores, int) and load_now > 0.5 * cores:
        md += [f"**Warning: the load average was {load_now:.1f} on {cores} cores when this ran: other processes "
               "competed for the cores and the memory bus, so the figures below are not this machine's capability "
               "(all-threads runs suffer most, waiting for descheduled threads at every barrier). Re-run "
               "`scripts/bench.sh` on an idle machine.**", ""]
    md += ["## What the figures mean", "",
           "- **GB/s** is DESIGN.md §5's *minimal* traffic per parameter (the `B/param` column: bytes that "
           "must be read or written at least once, fp32) times N, divided by the median wall-clock time of one "
           "pass. Caches make small N look faster than memory.",
           "- **× copy** is that rate divided by the bandwidth of a plain copy (`memcpy`, one chunk per thread) "
           "of the same number of bytes with the same number of threads (the best of ≥ 5 timed copies), measured "
           "once in the same binary just before (bench/common.hpp `copy_bandwidth`). 1.0 means the pass moves its minimal bytes as fast as a "
           "copy moves its own. A pass that writes a buffer it does not read (ascend's saved weights, "
           "descend's w) pays a read-for-ownership the minimal count leaves out unless it writes it by "
           "streaming stores, as glibc's large `memcpy` does and backend::eigen does from 24 MiB per pass "
           "on (N ≥ 6.3·10^6 fp32; include/flatmin/backend/host/stream_stores.hpp).",
           "- **× stream** is the pass against its own yardstick (bench/streams.hpp): a kernel with the "
           "pass's read and write streams (global_norm: 1 read; ascend: 2 reads, 1 in place, 1 written "
           "only; Adam: 4 reads, 3 in place; …) and no arithmetic, the best of plain and streaming stores "
           "and of the instruction sets the CPU has (chosen once), timed in the same binary right after each "
           "repetition of the pass: its time over the pass's time, the median over the repetitions' "
           "pairs, 1.0 = the machine's limit for those streams. An `opt_*` step's yardstick is the "
           "sum of its passes' times. Measured on one contiguous buffer per stream, so K > 1 rows also pay "
           "for the tensors' scattering (see the copy_tensors yardstick below).",
           "- **spread** is (max − min) / median of the GB/s over the repetitions.",
           "- `bench_masks` rows: `args=block/keep‰` (block 0 = dense SAM, 1 = element mask, 128 = blocks of 128; "
           "keep in thousandths), `touched` = fraction of parameters the ascend/restore passes visit, `x_copy` = "
           "time over one copy pass of the same N in the same binary. `bench_lm` rows: `args=N/tensors`.",
           "- `threads`: 1, or all cores (OpenMP). `K`: number of tensors the N parameters are split into.",
           "- Pass-level rows run one kernel over a layout as the optimizer launches it; `opt_*` rows call the "
           "optimizer's `ascend()` + `descend()` and so count every pass of a step (norm 4 + ascend 16 + "
           "finiteness check of g_adv 4 + descend 20 or 28 B/param; the plain `opt_sgd` / `opt_adamw` run the "
           "check and the base step).", ""]
    md += fill_times(PASSES_SECTION, rows)

    # summary: copy ratio of the dense passes, K = 1
    sumrows = [r for r in rows if r["program"] == "bench_passes" and r.get("K") == 1 and "copy_ratio" in r]
    if sumrows:
        ns = sorted({r["N"] for r in sumrows})
        thr = sorted({r["threads"] for r in sumrows}, key=lambda t: (t == 0, t))
        header = ["pass", "B/param"] + [f"N={fmt_n(n)}, {thr_label(t, cores)} thr" for t in thr for n in ns]
        body = []
        for name in order([r["pass"] for r in sumrows]):
            cells = []
            bpp = next((r.get("B_per_param") for r in sumrows if r["pass"] == name), None)
            for t in thr:
                for n in ns:
                    m = [r for r in sumrows if r["pass"] == name and r["N"] == n and r["threads"] == t]
                    cells.append(f"{m[0]['copy_ratio']:.2f}" if m else "–")
            body.append([name, f"{bpp:g}" if bpp else "–"] + cells)
        md += ["## Summary: ratio to copy bandwidth (1 tensor, median)", "", table(header, body), ""]

        # the same passes against their own stream yardsticks
        srows = [r for r in sumrows if "stream_ratio" in r]
        if srows:
            body = []
            for name in order([r["pass"] for r in srows]):
                bpp = next((r.get("B_per_param") for r in srows if r["pass"] == name), None)
                cells = []
                for t in thr:
                    for n in ns:
                        m = [r for r in srows if r["pass"] == name and r["N"] == n and r["threads"] == t]
                        cells.append(f"{m[0]['stream_ratio']:.2f}" if m else "–")
                body.append([name, f"{bpp:g}" if bpp else "–"] + cells)
            md += ["## Summary: ratio to each pass's stream yardstick (1 tensor, median)", "",
                   "The target (issue #13): ≥ 0.85 for every dense pass at N ≥ 10^7, ≥ 0.8 for global_norm.", "",
                   table(header, body), ""]

        # arithmetic against memory: a pass's time per entry in cache (N = 10^4, one thread: its
        # arithmetic and its per-call costs) beside its yardstick's time per entry at N = 10^7
        small, large = 10**4, 10**7
        arows = [r for r in srows if r["threads"] == 1 and r["N"] in (small, large) and "time" in r]
        body = []
        for name in order([r["pass"] for r in arows]):
            s_ = [r for r in arows if r["pass"] == name and r["N"] == small]
            l_ = [r for r in arows if r["pass"] == name and r["N"] == large]
            if not s_ or not l_ or not l_[0].get("stream_GBps") or not l_[0].get("B_per_param"):
                continue
            cache = s_[0]["time"] / small * 1e9
            stream = l_[0]["B_per_param"] / l_[0]["stream_GBps"]
            full = l_[0]["time"] / large * 1e9
            body.append([name, f"{cache:.2f}", f"{stream:.2f}", f"{cache / stream:.2f}", f"{full:.2f}",
                         f"{full / max(cache, stream):.2f}"])
        if body:
            md += ["## Arithmetic against memory (1 tensor, one thread, ns per parameter)", "",
                   "`in cache`: the pass at N = 10^4 (its streams fit in L2), so its arithmetic, its per-call "
                   "costs and L2 traffic; `stream`: its yardstick's time at N = 10^7 (no arithmetic); `pass`: "
                   "the pass at N = 10^7. Where `in cache / stream` nears 1, the arithmetic alone takes about "
                   "as long as the memory, and the pass reaches its yardstick only if the core overlaps the "
                   "two completely (`pass / max` = 1.00, max = the larger of the two). The copy row is glibc's "
                   "`memcpy`, for scale. AdamW's update takes a square root and two divisions per parameter "
                   "(torch's formula, kept for parity): its `in cache / stream` says how much of its stream "
                   "time that arithmetic takes on this machine.", "",
                   table(["pass", "in cache", "stream", "in cache / stream", "pass", "pass / max"], body), ""]

        # mixed precision (issue #12): each bench_mixed step against the fp32 step of the same kind
        mrows = [r for r in rows if r["program"] == "bench_mixed" and r.get("K") == 1 and "time" in r]
        if mrows:
            mns = [n for n in sorted({r["N"] for r in mrows}) if n >= 10**6]
            mthr = sorted({r["threads"] for r in mrows}, key=lambda t: (t == 0, t))
            header = ["step", "precision", "B/param"] + [f"N={fmt_n(n)}, {thr_label(t, cores)} thr"
                                                          for t in mthr for n in mns]
            body = []
            kinds = sorted({r["pass"] for r in mrows})
            for kind in kinds:
                for prec in sorted({r["args"].get("args") for r in mrows if r["pass"] == kind},
                                   key=lambda a: (a != "g_fp32" and a != "fp32", a)):
                    bpp = next((r.get("B_per_param") for r in mrows if r["pass"] == kind
                                and r["args"].get("args") == prec), None)
                    cells = []
                    for t in mthr:
                        for n in mns:
                            m = [r for r in mrows if r["pass"] == kind and r["args"].get("args") == prec
                                 and r["N"] == n and r["threads"] == t]
                            f = [r for r in mrows if r["pass"] == kind and r["args"].get("args") in ("fp32", "g_fp32")
                                 and r["N"] == n and r["threads"] == t]
                            if not m:
                                cells.append("–")
                                continue
                            c = fmt_time(m[0]["time"])
                            if f and f[0] is not m[0]:
                                c += f", {m[0]['time'] / f[0]['time']:.2f}× fp32"
                            if "stream_ratio" in m[0]:
                                c += f", {m[0]['stream_ratio']:.2f} stream"
                            cells.append(c)
                    body.append([kind, prec or "–", f"{bpp:g}" if bpp else "–"] + cells)
            md += ["## Mixed precision: 16-bit steps against the fp32 step (bench_mixed, 1 tensor, median)", "",
                   "Each cell: the median time, its ratio to the fp32 row of the same step in the same run, and the "
                   "× stream ratio (16-bit streams' real bytes at the rate of the 4-byte kernel with the same "
                   "streams: bench/streams.hpp). `g_bf16` / `g_fp16`: fp32 weights, 16-bit gradients (mode 3); "
                   "`w_bf16_master`: bf16 weights and gradients with fp32 master weights (mode 2); `w_bf16`: "
                   "bf16 weights and gradients updated in place (mode 1). Below 1.00× fp32, the 16-bit step saves "
                   "that fraction of the fp32 step's time.", "", table(header, body), ""]

        # many tensors: time(K=1000)/time(K=1)
        krows = [r for r in rows if r["program"] == "bench_passes" and "time" in r]
        header = ["pass"] + [f"N={fmt_n(n)}, {thr_label(t, cores)} thr" for t in thr for n in ns]
        body = []
        for name in order([r["pass"] for r in krows if r["pass"] != "copy"]):
            cells = []
            for t in thr:
                for n in ns:
                    a = [r for r in krows if r["pass"] == name and r["N"] == n and r["threads"] == t and r["K"] == 1]
                    b = [r for r in krows if r["pass"] == name and r["N"] == n and r["threads"] == t and r["K"] == 1000]
                    cells.append(f"{b[0]['time'] / a[0]['time']:.2f}" if a and b else "–")
            body.append([name] + cells)
        body.sort(key=lambda row: row[0] != "copy_tensors")  # the yardstick first
        md += ["## 1000 tensors against 1 tensor of the same total size (time ratio, median)", "",
               "`copy_tensors` is the yardstick: a plain `memcpy` of each of the K tensors (K separate "
               "allocations, as in the problem every pass runs on). Its ratio is what the memory system charges "
               "for 1000 separate buffers before any optimizer code runs (hardware prefetchers start afresh on "
               "every tensor; at N = 10^6 each tensor is one 4 KB page).", "",
               table(header, body), ""]

    if svg_plot(rows, svg_path, cores):
        rel = os.path.relpath(os.path.abspath(svg_path), os.path.dirname(os.path.abspath(md_path)))
        md += ["## Bytes per second against N", "", f"![bytes/s against N]({rel})", ""]

    tpath = os.path.join(directory, "torch_compare.json")
    if os.path.exists(tpath):
        with open(tpath) as f:
            tc = json.load(f)
        md += ["## Side by side with PyTorch (per-step optimizer-side time, median)", "",
               f"`{tc.get('command', 'python3 bench/torch_compare.py')}` — torch {tc.get('torch_version', '?')}, "
               f"threads {tc.get('threads', '?')}. PyTorch: copy-restore SAM (old w cloned, e_w = ρ g/(‖g‖ + 1e-12) "
               "added; then w restored from the copy and the torch.optim step) around torch.optim.SGD(momentum=0.9) "
               "and torch.optim.AdamW(); flatmin: `ascend()` + `descend()` of flatmin::sam with the same base "
               "optimizer (bench_passes' opt_sam_sgd / opt_sam_adamw). Gradients are fixed tensors; no "
               "forward/backward is timed.", ""]
        md += ["PyTorch setups (`torch` column): `per-tensor loop` is the above with torch.optim's default "
               "per-tensor loops; `foreach SAM + …` is the fastest step a PyTorch user can write on the CPU: "
               "`torch._foreach_norm`, `_foreach_copy_` into buffers allocated once and one `_foreach_add_` "
               "around AdamW(fused=True) (torch >= 2.4) or SGD(momentum=0.9, foreach=True). Older files "
               "without the column timed the loop.", ""]
        if tc.get("rounds"):
            md += [f"Each configuration ran {tc['rounds']} rounds, each timing flatmin and then every PyTorch "
                   "setup: the times are medians over the rounds, the speed-up the median of the rounds' "
                   "ratios, with their range.", ""]
        body = []
        for r in tc.get("results", []):
            if r.get("speedup"):
                lo, hi = r["speedup_range"]
                sp = f"{r['speedup']:.1f}× ({lo:.1f}–{hi:.1f})"
            else:
                sp = f"{r['torch_s'] / r['flatmin_s']:.1f}×" if r.get("flatmin_s") else "–"
            body.append([r["base"], r.get("torch_variant", "per-tensor loop"), fmt_n(r["N"]), r["K"], r["threads"],
                         fmt_time(r["torch_s"]), fmt_time(r.get("flatmin_s")), sp])
        md += [table(["base", "torch", "N", "K", "threads", "PyTorch", "flatmin", "speed-up"], body), ""]

    md += gpu_section(os.path.join(os.path.dirname(os.path.abspath(md_path)), "gpu"))
    md += ddp_section(os.path.join(os.path.dirname(os.path.abspath(md_path)), "ddp", "results.md"))

    md += ["## All results", ""]
    for program in sorted({r["program"] for r in rows}):
        prow = [r for r in rows if r["program"] == program]
        body = []
        for r in prow:
            extra = {k: v for k, v in r["args"].items() if k not in ("N", "K", "threads")}
            extra.update({k: f"{v:.3g}" for k, v in r.get("counters", {}).items()})
            label = r["pass"] + (" " + " ".join(f"{k}={v}" for k, v in extra.items()) if extra else "")
            if "error" in r:
                body.append([label, fmt_n(r["N"]), r["K"], thr_label(r["threads"], cores), "error: " + r["error"],
                             "", "", "", "", "", "", ""])
                continue
            body.append([label, fmt_n(r["N"]), r["K"] if r["K"] is not None else "–", thr_label(r["threads"], cores),
                         f"{r['B_per_param']:g}" if "B_per_param" in r else "–", fmt_time(r["time"]),
                         f"{r['bps'] / 1e9:.2f}" if "bps" in r else "–", f"{100 * r['spread']:.0f} %",
                         f"{r['copy_GBps']:.1f}" if "copy_GBps" in r else "–",
                         f"{r['copy_ratio']:.2f}" if "copy_ratio" in r else "–",
                         f"{r['stream_GBps']:.1f}" if "stream_GBps" in r else "–",
                         f"{r['stream_ratio']:.2f}" if "stream_ratio" in r else "–"])
        md += [f"### {program}", "",
               table(["pass", "N", "K", "threads", "B/param", "median time", "GB/s", "spread", "copy GB/s", "× copy",
                      "stream GB/s", "× stream"], body), ""]

    with open(md_path, "w") as f:
        f.write("\n".join(md))


if __name__ == "__main__":
    main()
