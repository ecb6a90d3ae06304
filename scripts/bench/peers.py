#!/usr/bin/env python3
"""Times the same models with m4c's CPU backend and with onnxruntime, in one
run, and prints the m4c/peer latency ratios (below 1.0: m4c is faster).

    /work/venv-bench/bin/python scripts/bench/peers.py tests/fixtures/*.onnx \
        --m4c target/release/m4c --threads 1 [--json results.json]

For MODEL.onnx the inputs are MODEL.inputs.npz when it exists (the fixture
convention), else deterministic random floats / zero integers. Each model is
timed by `m4c bench MODEL --backend cpu --json` (median over >= --runs runs
and 2 s) and by an onnxruntime session with the same thread count, all
graph optimisations on, sequential execution, the same warm-up and stopping
rule. Medians are reported; the machine may be shared, so compare ratios
taken in the same run.
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


def time_ort(model: str, threads: int, runs: int) -> tuple[float, str | None]:
    session = ort_session(model, threads)
    feeds, path = inputs_for(model, session)
    return statistics.median(time_session(session, feeds, runs)), path


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
    parser.add_argument("--m4c", default="target/release/m4c")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    rows = []
    print(f"{'model':<28} {'m4c ms':>10} {'ORT ms':>10} {'m4c/ORT':>8} {'compile ms':>11}")
    for model in args.models:
        ort_ms, inputs = time_ort(model, args.threads, args.runs)
        try:
            report = time_m4c(args.m4c, model, args.threads, args.runs, inputs)
        except RuntimeError as e:
            print(f"{os.path.basename(model):<28} {'-':>10} {ort_ms:>10.3f}  m4c failed: {str(e)[-300:]}", flush=True)
            continue
        row = {
            "model": os.path.basename(model),
            "threads": args.threads,
            "m4c_median_ms": report["median_ms"],
            "ort_median_ms": ort_ms,
            "ratio": report["median_ms"] / ort_ms,
            "m4c_compile_ms": report["compile_ms"],
        }
        rows.append(row)
        print(
            f"{row['model']:<28} {row['m4c_median_ms']:>10.3f} {ort_ms:>10.3f} "
            f"{row['ratio']:>8.2f} {row['m4c_compile_ms']:>11.0f}",
            flush=True,
        )
    ratios = [r["ratio"] for r in rows]
    if not ratios:
        return 1
    print(f"geometric mean m4c/ORT: {float(np.exp(np.mean(np.log(ratios)))):.2f} over {len(rows)} models "
          f"(onnxruntime {ort.__version__}, {args.threads} thread(s))")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"onnxruntime": ort.__version__, "results": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
