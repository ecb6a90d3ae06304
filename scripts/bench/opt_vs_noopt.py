#!/usr/bin/env python3
"""Measures what the e-graph optimiser buys on the CPU backend: `m4c bench
MODEL --backend cpu` with and without `--no-opt`, and onnxruntime on the same
inputs, in one run, and prints one table.

    .venv-bench/bin/python scripts/bench/opt_vs_noopt.py /tmp/h6-models/*.onnx \
        --m4c target/release/m4c --rounds 3 --runs 5 [--check] [--json out.json]

The machine may be shared, so the three measurements of a model are
interleaved: each round times m4c optimised, m4c --no-opt (the two in
alternating order from round to round) and onnxruntime, each a median over
at least --runs runs and 2 s (peers.py's rule); the table gives the median
of the round medians. Inputs: MODEL.inputs.npz when present (see
graph_models.py), else peers.py's deterministic ones. With --check, each
model first runs once optimised (`m4c opt -o x.ir`, then `m4c run x.ir`)
and once not (`m4c run MODEL`) against MODEL.expected.npz, and the largest
absolute error of each is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

import onnxruntime as ort

from peers import inputs_for, ort_session, time_m4c, time_session


def cpu_name() -> str:
    """lscpu's `Model name`, CPU family and model, and the widest vector ISA
    (a virtual machine may show only a generic name)."""
    fields = {}
    for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
        key, _, value = line.partition(":")
        fields[key.strip()] = value.strip()
    flags = fields.get("Flags", "").split()
    isa = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "no AVX2"
    return (f"{fields.get('Model name', 'unknown CPU')} (family {fields.get('CPU family', '?')}, "
            f"model {fields.get('Model', '?')}, {isa})")


def load() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def check(m4c: str, model: str, inputs: str, expected: str, rtol: float, atol: float) -> dict[str, str]:
    """Max abs/rel error vs onnxruntime of the model run three ways: not
    optimised (`m4c run MODEL`), optimised through a firmware bundle
    (`firmware build` optimises by default), and optimised through an IR
    file (`m4c opt -o x.ir`, then `m4c run x.ir`). One line each."""
    tolerance = ["--inputs", inputs, "--expect", expected, "--rtol", str(rtol), "--atol", str(atol)]
    result = {}
    with tempfile.TemporaryDirectory() as tmp:
        bundle, ir = os.path.join(tmp, "m.fw"), os.path.join(tmp, "opt.ir")
        steps = {
            "no-opt": ([], [m4c, "run", model, "--backend", "cpu"]),
            "opt (firmware)": ([m4c, "firmware", "build", "--module", f"m={model}", "--backend", "cpu", "-o", bundle],
                               [m4c, "run", bundle, "--module", "m", "--engine", "compiled"]),
            "opt (.ir)": ([m4c, "opt", model, "--target", "cpu", "-o", ir], [m4c, "run", ir, "--backend", "cpu"]),
        }
        for label, (build, run) in steps.items():
            if build:
                out = subprocess.run(build, capture_output=True, text=True)
                if out.returncode != 0:
                    result[label] = f"{build[1]} failed: {out.stderr.strip()[-300:]}"
                    continue
            out = subprocess.run(run + tolerance, capture_output=True, text=True)
            lines = out.stdout.strip().splitlines()
            start = next((i for i, l in enumerate(lines) if l.startswith("output ")), None)
            rows = lines[start + 1:] if start is not None else []
            result[label] = "; ".join(" ".join(r.split()[1:]) for r in rows) if rows else out.stderr.strip()[-300:]
    return result


def profile(m4c: str, model: str, threads: int, inputs: str, extra: tuple[str, ...]) -> str:
    """One `m4c bench --profile` run: milliseconds per kernel kind."""
    cmd = [m4c, "bench", model, "--backend", "cpu", "--threads", str(threads), "--runs", "1", "--inputs", inputs,
           "--profile", *extra]
    out = subprocess.run(cmd, capture_output=True, text=True)
    kinds = [l.split() for l in out.stderr.splitlines() if l.strip().endswith(" ms")]
    return ", ".join(f"{k[0]} {float(k[1]):.1f}" for k in kinds if len(k) == 3) or out.stderr.strip()[-300:]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="+")
    parser.add_argument("--m4c", default="target/release/m4c")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--check", action="store_true", help="compare outputs with MODEL.expected.npz first")
    parser.add_argument("--rtol", type=float, default=1e-3, help="--check tolerance (relative)")
    parser.add_argument("--atol", type=float, default=1e-3, help="--check tolerance (absolute)")
    parser.add_argument("--profile", action="store_true", help="also one --profile run of each variant")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    print(f"CPU: {cpu_name()}; {os.cpu_count()} logical CPUs (shared); onnxruntime {ort.__version__}; "
          f"m4c {args.m4c} (repo at {commit}); {args.threads} thread(s); {args.rounds} interleaved rounds, "
          f"each >= {args.runs} runs and 2 s; load average {load()}", flush=True)
    rows, failures = [], []
    for model in args.models:
        name = os.path.basename(model)[: -len(".onnx")]
        session = ort_session(model, args.threads)
        feeds, inputs = inputs_for(model, session)
        if args.check:
            expected = model[: -len(".onnx")] + ".expected.npz"
            for label, line in check(args.m4c, model, inputs, expected, args.rtol, args.atol).items():
                print(f"check {name} {label:>14} vs onnxruntime (max_abs max_rel status): {line}", flush=True)
        runs = {"opt": [], "no-opt": [], "ort": []}
        best = {"opt": [], "no-opt": [], "ort": []}
        reports = {"opt": [], "no-opt": []}
        try:
            for r in range(args.rounds):
                order = ["opt", "no-opt"] if r % 2 == 0 else ["no-opt", "opt"]
                for label in order:
                    extra = ("--no-opt",) if label == "no-opt" else ()
                    report = time_m4c(args.m4c, model, args.threads, args.runs, inputs, extra)
                    reports[label].append(report)
                    runs[label].append(report["median_ms"])
                    best[label].append(report["min_ms"])
                ort_times = time_session(session, feeds, args.runs)
                runs["ort"].append(statistics.median(ort_times))
                best["ort"].append(min(ort_times))
                print(f"  {name} round {r + 1}: opt {runs['opt'][-1]:.1f} ms, no-opt {runs['no-opt'][-1]:.1f} ms, "
                      f"ORT {runs['ort'][-1]:.1f} ms (load {load()})", flush=True)
        except RuntimeError as e:
            failures.append(f"{name}: {e}")
            print(f"  {name}: m4c failed: {e}", flush=True)
            continue
        med = {k: statistics.median(v) for k, v in runs.items()}
        if args.profile:
            for label, extra in (("opt", ()), ("no-opt", ("--no-opt",))):
                print(f"  {name} {label} profile (ms): {profile(args.m4c, model, args.threads, inputs, extra)}",
                      flush=True)

        def stat(label: str, key: str) -> float:
            return statistics.median(rep[key] for rep in reports[label])

        def code(label: str, key: str) -> int:
            return reports[label][0].get("code", {}).get(key, 0)

        rows.append({
            "model": name, "opt_ms": med["opt"], "no_opt_ms": med["no-opt"], "ort_ms": med["ort"],
            "round_ms": runs, "min_ms": {k: min(v) for k, v in best.items()},
            "lower_ms": stat("opt", "lower_ms"), "optimise_ms": stat("opt", "opt_ms"),
            "compile_opt_ms": stat("opt", "compile_ms"), "compile_no_opt_ms": stat("no-opt", "compile_ms"),
            "kernels_opt": code("opt", "kernels"), "kernels_no_opt": code("no-opt", "kernels"),
            "arena_kib_opt": code("opt", "arena_bytes") // 1024,
            "arena_kib_no_opt": code("no-opt", "arena_bytes") // 1024,
        })
    print()
    print("| model | m4c opt ms | m4c --no-opt ms | ORT ms | opt / no-opt | opt / ORT | no-opt / ORT "
          "| min ms opt / no-opt / ORT | lower ms | optimise ms | compile ms opt / no-opt | kernels opt / no-opt "
          "| arena KiB opt / no-opt |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['opt_ms']:.1f} | {r['no_opt_ms']:.1f} | {r['ort_ms']:.1f} "
              f"| {r['opt_ms'] / r['no_opt_ms']:.2f} | {r['opt_ms'] / r['ort_ms']:.2f} "
              f"| {r['no_opt_ms'] / r['ort_ms']:.2f} "
              f"| {r['min_ms']['opt']:.1f} / {r['min_ms']['no-opt']:.1f} / {r['min_ms']['ort']:.1f} "
              f"| {r['lower_ms']:.0f} | {r['optimise_ms']:.0f} "
              f"| {r['compile_opt_ms']:.0f} / {r['compile_no_opt_ms']:.0f} "
              f"| {r['kernels_opt']} / {r['kernels_no_opt']} | {r['arena_kib_opt']} / {r['arena_kib_no_opt']} |")
    print(f"(ms columns: medians of {args.rounds} round medians; min: fastest single run of all rounds; "
          f"load average at the end {load()})")
    for f in failures:
        print(f"FAILED {f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"cpu": cpu_name(), "onnxruntime": ort.__version__, "commit": commit, "results": rows,
                       "failures": failures}, f, indent=1)
    return 1 if failures or not rows else 0


if __name__ == "__main__":
    sys.exit(main())
