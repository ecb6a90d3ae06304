#!/usr/bin/env python3
"""Writes the expected outputs (`# out` lines) of the `.ir` filetests whose
values are not worked by hand (tests/filetests/*.ir).

The formulas are written here from the operators' definitions (ONNX's
LayerNormalization, RMSNormalization, Softmax, Gelu) with Python's `math`
in double precision: an independent truth, not m4c's interpreter. Inputs
are read from each file's `# in` lines. Run from the repository root:

    python3 scripts/filetests/expect.py          # rewrite the files
    python3 scripts/filetests/expect.py --check  # exit 1 if any is stale
"""

import math
import re
import sys
from pathlib import Path

DIR = Path(__file__).resolve().parents[2] / "tests" / "filetests"


def rows(values, width):
    return [values[i : i + width] for i in range(0, len(values), width)]


def layer_norm(x, scale, bias, eps):
    mean = sum(x) / len(x)
    var = sum((v - mean) ** 2 for v in x) / len(x)
    return [(v - mean) / math.sqrt(var + eps) * s + b for v, s, b in zip(x, scale, bias)]


def rms_norm(x, scale, eps):
    rms = math.sqrt(sum(v * v for v in x) / len(x) + eps)
    return [v / rms * s for v, s in zip(x, scale)]


def softmax(x):
    m = max(x)
    e = [math.exp(v - m) for v in x]
    return [v / sum(e) for v in e]


def gelu(x):
    return 0.5 * x * (1.0 + math.erf(x / math.sqrt(2.0)))


def gelu_tanh(x):
    return 0.5 * x * (1.0 + math.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def flat(groups):
    return [v for g in groups for v in g]


# file -> {output: function of the `# in` values}
EXPECTED = {
    "norm_layer": {
        "y": lambda i: flat(
            layer_norm(r, [1, 2, 0.5, 1], [0, 0, 1, -1], 1e-5) for r in rows(i["x"], 4)
        ),
    },
    "norm_rms": {
        "y": lambda i: flat(rms_norm(r, [1, 0.5, 2, 1, 1, -1], 1e-6) for r in rows(i["x"], 6)),
    },
    "softmax_gelu": {
        "s": lambda i: flat(softmax(r) for r in rows(i["x"], 3)),
        "exact": lambda i: [gelu(v) for v in i["g"]],
        "approx": lambda i: [gelu_tanh(v) for v in i["g"]],
    },
}

LINE = re.compile(r"^# (in|out) +%(\S+) = \[(.*)\]$")


def number(s):
    s = s.strip()
    return float(s)


def main():
    check = "--check" in sys.argv
    stale = []
    for name, outputs in EXPECTED.items():
        path = DIR / f"{name}.ir"
        lines = path.read_text().splitlines()
        inputs = {}
        for line in lines:
            m = LINE.match(line)
            if m and m.group(1) == "in":
                inputs[m.group(2)] = [number(v) for v in m.group(3).split(",") if v.strip()]
        out = []
        for line in lines:
            m = LINE.match(line)
            if m and m.group(1) == "out" and m.group(2) in outputs:
                values = outputs[m.group(2)](inputs)
                line = f"# out %{m.group(2)} = [{', '.join(repr(v) for v in values)}]"
            out.append(line)
        text = "\n".join(out) + "\n"
        if text != path.read_text():
            stale.append(path.name)
            if not check:
                path.write_text(text)
    if check and stale:
        print("stale expectations:", ", ".join(stale))
        sys.exit(1)


if __name__ == "__main__":
    main()
