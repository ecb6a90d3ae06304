#!/usr/bin/env python3
"""Times the same models with m4c's CPU backend and with onnxruntime, in one
run, and prints the m4c/peer latency ratios (below 1.0: m4c is faster).

    /work/venv-bench/bin/python scripts/bench/peers.py tests/fixtures/*.onnx \
        --m4c target/release/m4c --threads 1 [--json results.json]
    # before/after a change, interleaved with onnxruntime, 3 rounds:
    peers.py MODELS --m4c /tmp/m4c-before --m4c target/release/m4c --rounds 3
    # 1 and 2 threads interleaved per model and round (2-thread speed-ups):
    peers.py MODELS --m4c target/release/m4c --threads 1,2 --rounds 3

For MODEL.onnx the inputs are MODEL.inputs.npz when it exists (the fixture
convention), else deterministic random floats / zero integers. Each model is
timed by `m4c bench MODEL --backend cpu --json` (median over >= --runs runs
and 2 s) and by an onnxruntime session with the same thread count, all
graph optimisations on, sequential execution, the same warm-up and stopping
rule. Medians are reported (and, with --min, the fastest run of each
timing as well: on a shared machine the least disturbed figure); the machine
may be shared, so compare ratios taken in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np
import onnxruntime as ort


def inputs_for(model: str, session: ort.InferenceSession) -> tuple[dict, str | None]:
    path = model[: -len(".onnx")] + ".inputs.npz"
    if os.path.exists(path):
        data = np.load(path)
        feeds = {}
        for i in session.get_inputs():
            key = i.name if i.name in data else "".join(c if c.isalnum() or c in "_.-" else "_" for c in i.name)
            feeds[i.name] = data[key]
        return feeds, path
    rng = np.random.default_rng(0)
    feeds = {}
    for i in session.get_inputs():
        shape = [d if isinstance(d, int) else 1 for d in i.shape]
        if "float" in i.type:
            feeds[i.name] = rng.uniform(-1, 1, shape).astype(np.float32)
        elif "int64" in i.type:
            feeds[i.name] = np.zeros(shape, np.int64)
        elif "int32" in i.type:
            feeds[i.name] = np.zeros(shape, np.int32)
        else:
            feeds[i.name] = np.zeros(shape, bool)
    return feeds, None


def ort_session(model: str, threads: int) -> ort.InferenceSession:
    """An onnxruntime session as the peer runs: all graph optimisations,
    sequential execution, `threads` intra-op threads."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def time_session(session: ort.InferenceSession, feeds: dict, runs: int) -> list[float]:
    """Milliseconds of each timed run, with m4c bench's rule: 2 warm-ups,
    then at least `runs` runs and until 2 s have passed (at most 1000)."""
    for _ in range(2):
        session.run(None, feeds)
    times = []
    start = time.perf_counter()
    while len(times) < runs or (time.perf_counter() - start < 2.0 and len(times) < 1000):
        t = time.perf_counter()
        session.run(None, feeds)
        times.append((time.perf_counter() - t) * 1e3)
    return times


def time_ort(model: str, threads: int, runs: int) -> tuple[float, float, str | None]:
    """Median and minimum milliseconds of an onnxruntime session, and the
    inputs file used."""
    session = ort_session(model, threads)
    feeds, path = inputs_for(model, session)
    times = time_session(session, feeds, runs)
    return statistics.median(times), min(times), path


def time_m4c(m4c: str, model: str, threads: int, runs: int, inputs: str | None, extra: tuple[str, ...] = ()) -> dict:
    """The JSON report of `m4c bench MODEL --backend cpu` (`extra`: further
    flags, e.g. --no-opt)."""
    cmd = [m4c, "bench", model, "--backend", "cpu", "--threads", str(threads), "--runs", str(runs), "--json", *extra]
    if inputs:
        cmd += ["--inputs", inputs]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {out.stderr.strip()}")
    return json.loads(out.stdout)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="+")
    parser.add_argument("--m4c", action="append",
                        help="m4c binary (default target/release/m4c); repeat to time several builds, "
                             "e.g. before and after a change, interleaved in the same run")
    parser.add_argument("--threads", default="1",
                        help="thread count, or a comma-separated list timed one after the other "
                             "for each model and round (e.g. 1,2)")
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=1,
                        help="repeat the interleaved ORT/m4c timings this many times and quote the median "
                             "of each one's medians (for a shared, noisy machine)")
    parser.add_argument("--min", action="store_true",
                        help="also print the fastest run of all rounds (ORT and each build)")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    binaries = args.m4c or ["target/release/m4c"]
    thread_counts = [int(t) for t in args.threads.split(",")]
    rows = []
    head = "".join(f" {'m4c' + str(i) + ' ms':>10} {'ratio' + str(i):>7}" for i in range(len(binaries)))
    if args.min:
        head += " " + " ".join(f"{'min' + str(i):>8}" for i in range(len(binaries))) + f" {'ORT min':>8}"
    print(f"{'model':<28} {'thr':>3} {'ORT ms':>10}{head} {'compile ms':>11}")
    for model in args.models:
        ort_times: dict[int, list[float]] = {t: [] for t in thread_counts}
        ort_mins: dict[int, list[float]] = {t: [] for t in thread_counts}
        m4c_times = {t: [[] for _ in binaries] for t in thread_counts}
        m4c_mins = {t: [[] for _ in binaries] for t in thread_counts}
        compile_ms = 0.0
        failed = None
        for _ in range(args.rounds):
            for threads in thread_counts:
                ort_ms, ort_min, inputs = time_ort(model, threads, args.runs)
                ort_times[threads].append(ort_ms)
                ort_mins[threads].append(ort_min)
                for i, binary in enumerate(binaries):
                    try:
                        report = time_m4c(binary, model, threads, args.runs, inputs)
                    except RuntimeError as e:
                        failed = str(e)[-300:]
                        break
                    m4c_times[threads][i].append(report["median_ms"])
                    m4c_mins[threads][i].append(report["min_ms"])
                    compile_ms = report["compile_ms"]
                if failed:
                    break
            if failed:
                break
        if failed:
            print(f"{os.path.basename(model):<28}  m4c failed: {failed}", flush=True)
            continue
        for threads in thread_counts:
            ort_ms = statistics.median(ort_times[threads])
            medians = [statistics.median(t) for t in m4c_times[threads]]
            mins = [min(t) for t in m4c_mins[threads]]
            row = {
                "model": os.path.basename(model),
                "threads": threads,
                "rounds": args.rounds,
                "m4c_median_ms": medians[-1],
                "ort_median_ms": ort_ms,
                "ort_min_ms": min(ort_mins[threads]),
                "ratio": medians[-1] / ort_ms,
                "m4c_compile_ms": compile_ms,
                "builds": [{"m4c": b, "median_ms": m, "min_ms": lo, "ratio": m / ort_ms}
                           for b, m, lo in zip(binaries, medians, mins)],
            }
            rows.append(row)
            cells = "".join(f" {m:>10.3f} {m / ort_ms:>7.2f}" for m in medians)
            if args.min:
                cells += " " + " ".join(f"{lo:>8.3f}" for lo in mins) + f" {row['ort_min_ms']:>8.3f}"
            print(f"{row['model']:<28} {threads:>3} {ort_ms:>10.3f}{cells} {compile_ms:>11.0f}", flush=True)
    if not rows:
        return 1
    for threads in thread_counts:
        for i, binary in enumerate(binaries):
            ratios = [r["builds"][i]["ratio"] for r in rows if r["threads"] == threads]
            if ratios:
                print(f"geometric mean m4c/ORT ({binary}): {float(np.exp(np.mean(np.log(ratios)))):.2f} over "
                      f"{len(ratios)} models (onnxruntime {ort.__version__}, {threads} thread(s))")
    if len(thread_counts) > 1:
        first, *others = thread_counts
        for threads in others:
            for r1 in (r for r in rows if r["threads"] == first):
                r2 = next(r for r in rows if r["threads"] == threads and r["model"] == r1["model"])
                ups = " ".join(f"m4c{i} {b1['median_ms'] / b2['median_ms']:.2f}x"
                               for i, (b1, b2) in enumerate(zip(r1["builds"], r2["builds"])))
                print(f"speed-up {first} -> {threads} threads, {r1['model']}: {ups} "
                      f"ORT {r1['ort_median_ms'] / r2['ort_median_ms']:.2f}x (medians)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"onnxruntime": ort.__version__, "results": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
