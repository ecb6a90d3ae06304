#!/usr/bin/env python3
"""Quantised speed against onnxruntime (issue 10's speed targets), in one
run on one machine; medians, ratios.

    /work/venv/bin/python scripts/bench/quant_peers.py /tmp/qbench \\
        --m4c target/release/m4c [--threads 1] [--runs 10] [--skip-build]

Builds (graph_models.py, random N(0, 0.02) weights, written to DIR, not
the repository):

* vit_b16: full-size ViT-B/16 (224², 12 layers, d 768), fp32; quantised
  int8 static per channel by `m4c quantize --scheme int8 --per-channel`
  (QDQ, calibrated on its input) and by onnxruntime's own
  `quantize_static` (QDQ, per channel, uint8 activations, int8 weights,
  MinMax on the same input);
* bert_base: BERT-base (12 layers, d 768, sequence 128), fp32; quantised
  int8 static per channel by `m4c quantize --scheme int8 --per-channel`
  and int8 dynamic by `m4c quantize --scheme int8-dynamic`, and by
  onnxruntime's own `quantize_dynamic` (QOperator: DynamicQuantizeLinear
  + MatMulInteger, int8 weights), the form onnxruntime recommends for
  transformers;
* llama_decode_6l: the 6-layer 768-wide LLaMA-style backbone (vocabulary
  32000) for one token (a single-token step without a KV cache: the
  weights, which are what a decode step streams, are those of the prefill
  model); quantised w4 g32 asymmetric by `m4c quantize --scheme w4
  --head-bits 4` (every MatMul 4-bit, as onnxruntime's quantiser does) and
  by onnxruntime's `MatMulNBitsQuantizer` (block 32, asymmetric); and both
  again with `accuracy_level=4` (`--accuracy-level 4`; suffix `w4a8`):
  activations quantised to int8 per block, integer dot products.

Each model (fp32 and both quantised forms) is then timed by `m4c bench
--backend cpu` and by an onnxruntime session (peers.py: same threads,
warm-up and stopping rule), one after the other. For the decode models it
prints weight bytes per token (the MatMulNBits weights, scales and zero
points, or the fp32 MatMul weights, plus one embedding row) over the
median time, against the single-thread read bandwidth measured here by
`m4c bench gemm --m 1 --k 4096 --n 8192` (its probe: 256 MiB summed as
four u64 streams, best of 3; a numpy float32 sum, used before, is bound by
its additions near 16 GB/s on a Zen 3 core and understated this). The
decode step is timed again and again on the same weights, so what the
last-level cache keeps of them between steps counts: with 43 MB of
weights and a 32 MiB L3, "GB/s of weights" can exceed the DRAM probe. The
kernel's rate from memory alone is `cargo run -p m4c-cpu-codegen
--example quant_bench` (a 1×4096×65536 GEMV, 176 MB streamed).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

sys.path.insert(0, str(Path(__file__).parent))
import graph_models  # noqa: E402
import peers  # noqa: E402


def build(out: Path, m4c: str) -> None:
    from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType, quantize_dynamic,
                                          quantize_static)
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    graph_models.write("vit_b16", *graph_models.vit_b16(), out)
    graph_models.write("bert_base", *graph_models.bert_base(), out)
    model, feeds = graph_models.llama_prefill(seq=1)
    graph_models.write("llama_decode_6l", model, feeds, out)

    class Reader(CalibrationDataReader):
        def __init__(self, feeds):
            self.feeds = iter([feeds])

        def get_next(self):
            return next(self.feeds, None)

    vit = out / "vit_b16.onnx"
    feeds = dict(np.load(out / "vit_b16.inputs.npz"))
    quantize_static(str(vit), str(out / "vit_b16.ort_int8.onnx"), Reader(feeds),
                    quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    run([m4c, "quantize", str(vit), "--calibrate", str(out / "vit_b16.inputs.npz"),
         "--scheme", "int8", "--per-channel", "-o", str(out / "vit_b16.m4c_int8.onnx")])

    bert = out / "bert_base.onnx"
    quantize_dynamic(str(bert), str(out / "bert_base.ort_int8dyn.onnx"), weight_type=QuantType.QInt8)
    for scheme, suffix in [("int8", "m4c_int8"), ("int8-dynamic", "m4c_int8dyn")]:
        extra = ["--per-channel"] if scheme == "int8" else []
        run([m4c, "quantize", str(bert), "--calibrate", str(out / "bert_base.inputs.npz"),
             "--scheme", scheme, *extra, "-o", str(out / f"bert_base.{suffix}.onnx")])

    decode = out / "llama_decode_6l.onnx"
    for level, suffix in [(None, "w4"), (4, "w4a8")]:
        q = MatMulNBitsQuantizer(onnx.load(str(decode)), block_size=32, is_symmetric=False, accuracy_level=level)
        q.process()
        q.model.save_model_to_file(str(out / f"llama_decode_6l.ort_{suffix}.onnx"), use_external_data_format=False)
        run([m4c, "quantize", str(decode), "--calibrate", str(out / "llama_decode_6l.inputs.npz"),
             "--scheme", "w4", "--head-bits", "4", "--accuracy-level", str(level or 0),
             "-o", str(out / f"llama_decode_6l.m4c_{suffix}.onnx")])
    for suffix in ["m4c_int8", "ort_int8"]:
        link(out / "vit_b16.inputs.npz", out / f"vit_b16.{suffix}.inputs.npz")
    for suffix in ["m4c_int8", "m4c_int8dyn", "ort_int8dyn"]:
        link(out / "bert_base.inputs.npz", out / f"bert_base.{suffix}.inputs.npz")
    for suffix in ["m4c_w4", "ort_w4", "m4c_w4a8", "ort_w4a8"]:
        link(out / "llama_decode_6l.inputs.npz", out / f"llama_decode_6l.{suffix}.inputs.npz")


def link(src: Path, dst: Path) -> None:
    if not dst.exists():
        dst.symlink_to(src.name)


def run(cmd: list[str]) -> None:
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)}: {out.stderr.strip()}")
    print(out.stdout.strip(), flush=True)


def weight_bytes(path: Path) -> int:
    """Bytes a one-token step reads of the weights: MatMulNBits B, scales
    and zero points, fp32 MatMul weights, one row of the Gather table."""
    m = onnx.load(str(path))
    inits = {t.name: t for t in m.graph.initializer}
    total = 0
    for n in m.graph.node:
        if n.op_type == "MatMulNBits":
            total += sum(numpy_helper.to_array(inits[i]).nbytes for i in n.input[1:] if i in inits)
        elif n.op_type == "MatMul" and n.input[1] in inits:
            total += numpy_helper.to_array(inits[n.input[1]]).nbytes
        elif n.op_type == "Gather" and n.input[0] in inits:
            table = numpy_helper.to_array(inits[n.input[0]])
            total += table.nbytes // table.shape[0]
    return total


def bandwidth(m4c: str) -> float:
    """Single-thread read bandwidth, GB/s, as `m4c bench gemm` measures it
    (256 MiB read as four u64 streams)."""
    out = subprocess.run([m4c, "bench", "gemm", "--m", "1", "--k", "4096", "--n", "8192",
                          "--threads", "1", "--json"], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)["read_gbps"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dir")
    parser.add_argument("--m4c", default="target/release/m4c")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--skip-build", action="store_true")
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--models", default="vit_b16,bert_base,llama_decode_6l",
                        help="comma-separated: which of the models to time")
    a = parser.parse_args()
    out = Path(a.dir)
    out.mkdir(parents=True, exist_ok=True)
    if not a.skip_build:
        build(out, a.m4c)
    gbps = bandwidth(a.m4c)
    print(f"single-thread read bandwidth: {gbps:.2f} GB/s", flush=True)
    rows = []
    for stem, forms in [("vit_b16", ["", ".m4c_int8", ".ort_int8"]),
                        ("bert_base", ["", ".m4c_int8", ".m4c_int8dyn", ".ort_int8dyn"]),
                        ("llama_decode_6l", ["", ".m4c_w4", ".ort_w4", ".m4c_w4a8", ".ort_w4a8"])]:
        if stem not in a.models.split(","):
            continue
        for form in forms:
            model = out / f"{stem}{form}.onnx"
            ort_ms, _, inputs = peers.time_ort(str(model), a.threads, a.runs)
            m4c_ms = peers.time_m4c(a.m4c, str(model), a.threads, a.runs, inputs)["median_ms"]
            row = {"model": model.name, "m4c_ms": m4c_ms, "ort_ms": ort_ms}
            if stem.startswith("llama"):
                row["weight_bytes"] = weight_bytes(model)
                row["m4c_gbps"] = row["weight_bytes"] / m4c_ms / 1e6
                row["ort_gbps"] = row["weight_bytes"] / ort_ms / 1e6
            rows.append(row)
            extra = (f", {row['weight_bytes'] / 1e6:.1f} MB weights/token: m4c {row['m4c_gbps']:.2f} GB/s "
                     f"({row['m4c_gbps'] / gbps:.0%} of read bandwidth), onnxruntime {row['ort_gbps']:.2f} GB/s"
                     if "weight_bytes" in row else "")
            print(f"{model.name}: m4c {m4c_ms:.2f} ms, onnxruntime {ort_ms:.2f} ms "
                  f"(m4c/ort {m4c_ms / ort_ms:.2f}){extra}", flush=True)
    if a.json:
        Path(a.json).write_text(json.dumps({"bandwidth_gbps": gbps, "threads": a.threads, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
