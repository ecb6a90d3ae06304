#!/usr/bin/env python3
"""onnxruntime's time per node, to set beside `m4c bench MODEL --profile --csv`.

Runs MODEL in onnxruntime (all graph optimisations, sequential, the given
threads) with its profiler on, and prints the median time of every node over
the runs, summed per operator type, with convolutions split into depthwise
(group = channels) and the others, since m4c's kernel kinds (`conv_dw`,
`conv_gemm`) split them so. `--csv` writes every node's median.

    python scripts/bench/ort_profile.py /tmp/cnn/efficientnet_blocks.onnx \
        --inputs /tmp/cnn/efficientnet_blocks.inputs.npz --csv ort.csv

Needs scripts/bench/requirements.txt.
"""

import argparse
import collections
import csv
import json
import os
import sys
import tempfile

import numpy as np
import onnxruntime as ort


def conv_kind(args):
    """'Conv (depthwise)' for a convolution whose weight has one input
    channel per group over a multi-channel input, else 'Conv' (onnxruntime
    names a fused convolution after the node it absorbed, so the shapes it
    records decide, not the model's node names)."""
    shapes = [next(iter(t.values())) for t in args.get("input_type_shape", [])]
    if len(shapes) >= 2 and len(shapes[0]) >= 2 and len(shapes[1]) >= 2:
        if shapes[1][1] == 1 and shapes[0][1] > 1:
            return "Conv (depthwise)"
    return "Conv"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--inputs", help="npz keyed by input name (default: MODEL.inputs.npz)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--csv", help="write node,op,median_ms here")
    args = ap.parse_args()
    inputs = args.inputs or args.model[: -len(".onnx")] + ".inputs.npz"
    arrays = np.load(inputs)
    with tempfile.TemporaryDirectory() as tmp:
        so = ort.SessionOptions()
        so.intra_op_num_threads = args.threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.enable_profiling = True
        so.profile_file_prefix = os.path.join(tmp, "ort")
        s = ort.InferenceSession(args.model, so, providers=["CPUExecutionProvider"])
        feeds = {i.name: arrays[i.name] for i in s.get_inputs()}
        for _ in range(args.runs):
            s.run(None, feeds)
        with open(s.end_profiling()) as f:
            events = json.load(f)
    times = collections.defaultdict(list)
    ops = {}
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            node = e["name"][: -len("_kernel_time")]
            times[node].append(e["dur"] / 1000.0)
            op = e["args"].get("op_name", "?")
            if op in ("Conv", "FusedConv"):
                op = conv_kind(e["args"]).replace("Conv", op)
            ops[node] = op
    rows = [(node, ops[node], float(np.median(ms))) for node, ms in times.items()]
    total = sum(r[2] for r in rows)
    by_op = collections.defaultdict(float)
    for _, op, ms in rows:
        by_op[op] += ms
    print(f"{args.model}: onnxruntime {ort.__version__}, {args.threads} thread(s), "
          f"nodes {total:.3f} ms (median per node over {args.runs} runs)")
    for op, ms in sorted(by_op.items(), key=lambda x: -x[1]):
        print(f"  {op:<24} {ms:>10.3f} ms")
    if args.csv:
        with open(args.csv, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["node", "op", "median_ms"])
            for r in rows:
                w.writerow([r[0], r[1], f"{r[2]:.4f}"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
