#!/usr/bin/env python3
"""A/B of two Google Benchmark binaries (or wrapper scripts) on a noisy machine.

    bench/ab.py OLD NEW FILTER [ROUNDS] [--threads]

Runs OLD and NEW alternately ROUNDS times (default 3; the order flips every round) with
`--benchmark_filter=FILTER --benchmark_min_time=0.2`, and prints each benchmark's median real
time, the range over the rounds and the ratio NEW / OLD of the medians. One thread pinned to CPU 1
(`taskset -c 1`, OMP_NUM_THREADS=1) unless --threads is given (then the binary's own threads).
Copy an old binary aside before rebuilding (e.g. `cp build/bench/bench_passes /tmp/bp_old`); a
wrapper script that sets an environment variable (FLATMIN_STREAM_STORES=off) A/Bs a run-time choice.
"""
import json
import os
import statistics
import subprocess
import sys


def main():
    args = [a for a in sys.argv[1:] if a != "--threads"]
    pinned = "--threads" not in sys.argv[1:]
    if len(args) < 3:
        sys.exit(__doc__)
    old, new, flt = args[0], args[1], args[2]
    rounds = int(args[3]) if len(args) > 3 else 3
    env = dict(os.environ)
    prefix = []
    if pinned:
        env["OMP_NUM_THREADS"] = "1"
        prefix = ["taskset", "-c", "1"]
    times = {"old": {}, "new": {}}
    order = []
    for r in range(rounds):
        pair = [("old", old), ("new", new)]
        for tag, binary in pair if r % 2 == 0 else reversed(pair):
            out = subprocess.run(prefix + [binary, "--benchmark_filter=" + flt, "--benchmark_min_time=0.2",
                                           "--benchmark_format=json"], env=env, capture_output=True, text=True,
                                 check=True).stdout
            for b in json.loads(out)["benchmarks"]:
                scale = {"ns": 1e-3, "us": 1.0, "ms": 1e3, "s": 1e6}[b["time_unit"]]
                times[tag].setdefault(b["name"], []).append(b["real_time"] * scale)
                if b["name"] not in order:
                    order.append(b["name"])
    print(f"{'benchmark':58s} {'old us (range)':>26s} {'new us (range)':>26s} {'new/old':>8s}")
    for name in order:
        o, n = times["old"].get(name), times["new"].get(name)
        if not o or not n:
            continue
        mo, mn = statistics.median(o), statistics.median(n)
        print(f"{name:58s} {mo:10.2f} ({min(o):.1f}-{max(o):.1f}) {mn:10.2f} ({min(n):.1f}-{max(n):.1f}) "
              f"{mn / mo:8.3f}")


if __name__ == "__main__":
    main()
