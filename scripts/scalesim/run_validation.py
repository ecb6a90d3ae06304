#!/usr/bin/env python3
"""Runs SCALE-Sim v3 on the layers of docs/NPU_VALIDATION.md and prints its cycle counts.

Usage (Python venv outside the repository):
    python3 -m venv /work/venv-scalesim
    /work/venv-scalesim/bin/pip install -r scripts/scalesim/requirements.txt
    /work/venv-scalesim/bin/python scripts/scalesim/run_validation.py [--out results.csv]

Each (layer, array, dataflow) gets its own SCALE-Sim config: square array, SRAM sizes
that hold the layer's operands (6 MiB ifmap/filter, 2 MiB ofmap, SCALE-Sim's own
large-SRAM setting), CALC interface bandwidth. The CSV printed here is what
backends/npu/tests/scalesim_reference.csv commits.
"""
import argparse
import csv
import io
import os
import sys
import tempfile
import contextlib

from scalesim.scale_sim import scalesim

# name, kind, dims: GEMM (M, K, N) or conv (H, W, R, S, C, F, stride)
LAYERS = [
    ("vit_qkv", "gemm", (197, 768, 768)),
    ("llama_decode", "gemm", (1, 4096, 4096)),
    ("resnet_conv3x3", "conv", (58, 58, 3, 3, 64, 64, 1)),  # 56x56x64 input padded by 1
]
ARRAYS = [32, 128]
DATAFLOWS = ["os", "ws"]

CFG = """[general]
run_name = {name}

[architecture_presets]
ArrayHeight: {rows}
ArrayWidth: {cols}
IfmapSramSzkB: 6144
FilterSramSzkB: 6144
OfmapSramSzkB: 2048
IfmapOffset: 0
FilterOffset: 10000000
OfmapOffset: 20000000
Bandwidth: 10
Dataflow: {df}
MemoryBanks: 1
ReadRequestBuffer: 512
WriteRequestBuffer: 512

[layout]
IfmapCustomLayout: False
IfmapSRAMBankBandwidth: 10
IfmapSRAMBankNum: 10
IfmapSRAMBankPort: 2
FilterCustomLayout: False
FilterSRAMBankBandwidth: 10
FilterSRAMBankNum: 10
FilterSRAMBankPort: 2

[sparsity]
SparsitySupport: false
SparseRep: ellpack_block
OptimizedMapping: false
BlockSize: 8
RandomNumberGeneratorSeed: 40

[run_presets]
InterfaceBandwidth: CALC
UseRamulatorTrace: False
"""


def run_one(tmp, name, kind, dims, array, df):
    run_name = f"{name}_{array}x{array}_{df}"
    cfg = os.path.join(tmp, run_name + ".cfg")
    with open(cfg, "w") as f:
        f.write(CFG.format(name=run_name, rows=array, cols=array, df=df))
    topo = os.path.join(tmp, run_name + ".csv")
    with open(topo, "w") as f:
        if kind == "gemm":
            m, k, n = dims
            f.write("Layer, M, N, K,\n")
            f.write(f"{name}, {m}, {n}, {k},\n")
        else:
            h, w, r, s, c, fl, st = dims
            f.write("Layer name, IFMAP Height, IFMAP Width, Filter Height, Filter Width, "
                    "Channels, Num Filter, Strides,\n")
            f.write(f"{name}, {h}, {w}, {r}, {s}, {c}, {fl}, {st},\n")
    layout = os.path.join(tmp, run_name + "_layout.csv")
    with open(layout, "w") as f:
        f.write("Layer name,\n")
    sim = scalesim(save_disk_space=True, verbose=False, config=cfg, topology=topo,
                   layout=layout, input_type_gemm=(kind == "gemm"))
    with contextlib.redirect_stdout(io.StringIO()):
        sim.run_scale(top_path=tmp)
    report = os.path.join(tmp, run_name, "COMPUTE_REPORT.csv")
    with open(report) as f:
        rows = list(csv.reader(f))
    header = [h.strip() for h in rows[0]]
    values = [v.strip() for v in rows[1]]
    return dict(zip(header, values))


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", help="also write the CSV here")
    parser.add_argument("--only", help="run only layers whose name contains this")
    args = parser.parse_args()
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(["layer", "array", "dataflow", "scalesim_compute_cycles", "scalesim_stall_cycles",
                "scalesim_total_cycles_incl_prefetch", "scalesim_compute_util_pct"])
    with tempfile.TemporaryDirectory() as tmp:
        for name, kind, dims in LAYERS:
            if args.only and args.only not in name:
                continue
            for array in ARRAYS:
                for df in DATAFLOWS:
                    r = run_one(tmp, name, kind, dims, array, df)
                    w.writerow([name, f"{array}x{array}", df, r["Total Cycles"], r["Stall Cycles"],
                                r["Total Cycles (incl. prefetch)"], r["Compute Util %"]])
                    print(out.getvalue().splitlines()[-1], file=sys.stderr, flush=True)
    sys.stdout.write(out.getvalue())
    if args.out:
        with open(args.out, "w") as f:
            f.write(out.getvalue())


if __name__ == "__main__":
    main()
