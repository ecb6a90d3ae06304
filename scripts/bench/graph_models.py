#!/usr/bin/env python3
"""Builds full-size, random-weight ViT-B/16 and LLaMA-style prefill models
with onnx.helper alone (no torch), in the decomposed form PyTorch's ONNX
exporter writes (opset 17), so that the optimiser's recognition rules have
the patterns they meet in exported models. Models are hundreds of MB: write
them outside the repository.

    .venv-bench/bin/python scripts/bench/graph_models.py /tmp/h6-models [vit_b16] [llama_prefill_6l]

NAME:LAYERS builds a variant with that many layers as NAME_LAYERSl (for
reducing a failure to a small reproducer).

Writes NAME.onnx and NAME.inputs.npz (the convention of peers.py and
`m4c bench --inputs`), checks each model with onnx.checker, runs it once
with onnxruntime and keeps that output as NAME.expected.npz (for
`m4c run --expect`). Weights are N(0, 0.02) from a fixed seed.

* vit_b16: 224x224 image, Conv 16x16/16 patch embedding, CLS token
  (Concat) + learned positions -> 197 tokens, d=768, 12 pre-LN layers,
  12 heads, MLP 3072, final LayerNorm; output the last hidden state
  [1, 197, 768]. LayerNorm as ReduceMean/Sub/Pow/ReduceMean/Add/Sqrt/Div/
  Mul/Add, exact GELU as Div/Erf/Add/Mul/Mul, attention as MatMul/Mul/
  Softmax/MatMul with Reshape/Transpose for the heads, Linear as MatMul+Add.
* llama_prefill_6l: 128 tokens, vocabulary 32000 (Gather embedding),
  d=768, 6 layers, 12 heads (no grouped KV), MLP 2048 with a SiLU gate
  (Sigmoid/Mul), RMSNorm as Pow/ReduceMean/Add/Sqrt/Div/Mul, rotary
  embeddings in full (HF rotate_half form: Slice/Neg/Concat/Mul/Add, with
  the cos/sin tables for positions 0..127 folded to constants, as the
  exporter folds them for a static shape), causal mask as an additive
  constant [1, 1, 128, 128] (0 / float32 min), final RMSNorm, LM head
  MatMul; output the logits of every position [1, 128, 32000].
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

OPSET = 17


class Graph:
    """Accumulates nodes and initializers with unique names."""

    def __init__(self, seed: int):
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.rng = np.random.default_rng(seed)
        self.count = 0

    def name(self, hint: str) -> str:
        self.count += 1
        return f"{hint}_{self.count}"

    def const(self, hint: str, value: np.ndarray) -> str:
        name = self.name(hint)
        self.inits.append(numpy_helper.from_array(value, name))
        return name

    def weight(self, hint: str, shape: tuple[int, ...]) -> str:
        return self.const(hint, (self.rng.standard_normal(shape, dtype=np.float32) * 0.02).astype(np.float32))

    def scalar(self, value: float) -> str:
        return self.const("c", np.array(value, np.float32))

    def ints(self, values: list[int]) -> str:
        return self.const("shape", np.array(values, np.int64))

    def op(self, op_type: str, *inputs: str, **attrs) -> str:
        out = self.name(op_type.lower())
        self.nodes.append(helper.make_node(op_type, list(inputs), [out], name=out, **attrs))
        return out

    def linear(self, x: str, d_in: int, d_out: int, bias: bool) -> str:
        y = self.op("MatMul", x, self.weight("w", (d_in, d_out)))
        return self.op("Add", y, self.const("b", np.zeros(d_out, np.float32))) if bias else y

    def layer_norm(self, x: str, d: int) -> str:
        mean = self.op("ReduceMean", x, axes=[-1], keepdims=1)
        centred = self.op("Sub", x, mean)
        var = self.op("ReduceMean", self.op("Pow", centred, self.scalar(2.0)), axes=[-1], keepdims=1)
        std = self.op("Sqrt", self.op("Add", var, self.scalar(1e-5)))
        y = self.op("Mul", self.op("Div", centred, std), self.const("gamma", np.ones(d, np.float32)))
        return self.op("Add", y, self.const("beta", np.zeros(d, np.float32)))

    def rms_norm(self, x: str, d: int) -> str:
        var = self.op("ReduceMean", self.op("Pow", x, self.scalar(2.0)), axes=[-1], keepdims=1)
        std = self.op("Sqrt", self.op("Add", var, self.scalar(1e-6)))
        return self.op("Mul", self.op("Div", x, std), self.const("gamma", np.ones(d, np.float32)))

    def gelu(self, x: str) -> str:
        erf = self.op("Erf", self.op("Div", x, self.scalar(float(np.sqrt(2.0)))))
        return self.op("Mul", self.op("Mul", x, self.op("Add", erf, self.scalar(1.0))), self.scalar(0.5))

    def heads(self, x: str, seq: int, n_heads: int, d_head: int, perm: list[int]) -> str:
        """[1, seq, H*Dh] -> Reshape [1, seq, H, Dh] -> Transpose(perm)."""
        return self.op("Transpose", self.op("Reshape", x, self.ints([1, seq, n_heads, d_head])), perm=perm)

    def attention(self, q: str, k_t: str, v: str, seq: int, d: int, d_head: int, mask: str | None) -> str:
        """q [1,H,S,Dh], k_t [1,H,Dh,S], v [1,H,S,Dh] -> [1, S, d]."""
        scores = self.op("Mul", self.op("MatMul", q, k_t), self.scalar(1.0 / float(np.sqrt(d_head))))
        if mask is not None:
            scores = self.op("Add", scores, mask)
        ctx = self.op("MatMul", self.op("Softmax", scores, axis=-1), v)
        return self.op("Reshape", self.op("Transpose", ctx, perm=[0, 2, 1, 3]), self.ints([1, seq, d]))

    def model(self, name: str, inputs: list, output: str, out_shape: list[int]) -> onnx.ModelProto:
        graph = helper.make_graph(self.nodes, name, inputs,
                                  [helper.make_tensor_value_info(output, TensorProto.FLOAT, out_shape)],
                                  initializer=self.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                                  producer_name="m4c scripts/bench/graph_models.py")
        model.ir_version = 8
        return model


def vit_b16(seed: int = 0, layers: int = 12) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    d, n_heads, mlp, patch, image = 768, 12, 3072, 16, 224
    d_head, grid = d // n_heads, image // patch
    seq = grid * grid + 1
    g = Graph(seed)
    patches = g.op("Conv", "pixel_values", g.weight("patch_w", (d, 3, patch, patch)),
                   g.const("patch_b", np.zeros(d, np.float32)), kernel_shape=[patch, patch], strides=[patch, patch])
    tokens = g.op("Transpose", g.op("Reshape", patches, g.ints([1, d, grid * grid])), perm=[0, 2, 1])
    x = g.op("Concat", g.weight("cls", (1, 1, d)), tokens, axis=1)
    x = g.op("Add", x, g.weight("pos", (1, seq, d)))
    for _ in range(layers):
        h = g.layer_norm(x, d)
        q = g.heads(g.linear(h, d, d, True), seq, n_heads, d_head, [0, 2, 1, 3])
        k_t = g.heads(g.linear(h, d, d, True), seq, n_heads, d_head, [0, 2, 3, 1])
        v = g.heads(g.linear(h, d, d, True), seq, n_heads, d_head, [0, 2, 1, 3])
        x = g.op("Add", x, g.linear(g.attention(q, k_t, v, seq, d, d_head, None), d, d, True))
        h = g.gelu(g.linear(g.layer_norm(x, d), d, mlp, True))
        x = g.op("Add", x, g.linear(h, mlp, d, True))
    out = g.layer_norm(x, d)
    inputs = [helper.make_tensor_value_info("pixel_values", TensorProto.FLOAT, [1, 3, image, image])]
    feeds = {"pixel_values": np.random.default_rng(seed + 1).standard_normal((1, 3, image, image), np.float32)}
    return g.model("vit_b16", inputs, out, [1, seq, d]), feeds


def llama_prefill(seed: int = 0, layers: int = 6, seq: int = 128) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    d, n_heads, mlp, vocab = 768, 12, 2048, 32000
    d_head = d // n_heads
    g = Graph(seed)
    inv_freq = 1.0 / (10000.0 ** (np.arange(0, d_head, 2, dtype=np.float64) / d_head))
    angles = np.outer(np.arange(seq, dtype=np.float64), inv_freq)
    angles = np.concatenate([angles, angles], axis=-1)[None, None]
    cos = g.const("rope_cos", np.cos(angles).astype(np.float32))
    sin = g.const("rope_sin", np.sin(angles).astype(np.float32))
    causal = np.triu(np.full((seq, seq), np.finfo(np.float32).min, np.float32), k=1)[None, None]
    mask = g.const("causal_mask", causal)
    half = d_head // 2
    first = (g.ints([0]), g.ints([half]), g.ints([3]))
    second = (g.ints([half]), g.ints([d_head]), g.ints([3]))

    def rotary(x: str) -> str:
        x1 = g.op("Slice", x, *first)
        x2 = g.op("Slice", x, *second)
        rotated = g.op("Concat", g.op("Neg", x2), x1, axis=-1)
        return g.op("Add", g.op("Mul", x, cos), g.op("Mul", rotated, sin))

    x = g.op("Gather", g.weight("embed", (vocab, d)), "input_ids", axis=0)
    for _ in range(layers):
        h = g.rms_norm(x, d)
        q = rotary(g.heads(g.linear(h, d, d, False), seq, n_heads, d_head, [0, 2, 1, 3]))
        k = rotary(g.heads(g.linear(h, d, d, False), seq, n_heads, d_head, [0, 2, 1, 3]))
        v = g.heads(g.linear(h, d, d, False), seq, n_heads, d_head, [0, 2, 1, 3])
        k_t = g.op("Transpose", k, perm=[0, 1, 3, 2])
        x = g.op("Add", x, g.linear(g.attention(q, k_t, v, seq, d, d_head, mask), d, d, False))
        h = g.rms_norm(x, d)
        gate = g.linear(h, d, mlp, False)
        silu = g.op("Mul", gate, g.op("Sigmoid", gate))
        x = g.op("Add", x, g.linear(g.op("Mul", silu, g.linear(h, d, mlp, False)), mlp, d, False))
    logits = g.linear(g.rms_norm(x, d), d, vocab, False)
    inputs = [helper.make_tensor_value_info("input_ids", TensorProto.INT64, [1, seq])]
    feeds = {"input_ids": np.random.default_rng(seed + 1).integers(0, vocab, (1, seq), dtype=np.int64)}
    return g.model("llama_prefill_6l", inputs, logits, [1, seq, vocab]), feeds


def write(name: str, model: onnx.ModelProto, feeds: dict[str, np.ndarray], out: Path) -> None:
    onnx.checker.check_model(model, full_check=True)
    path = out / f"{name}.onnx"
    onnx.save(model, str(path))
    np.savez(out / f"{name}.inputs.npz", **feeds)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (result,) = session.run(None, feeds)
    if not np.all(np.isfinite(result)):
        raise SystemExit(f"{path}: onnxruntime output is not finite")
    np.savez(out / f"{name}.expected.npz", **{model.graph.output[0].name: result})
    ops = sorted({n.op_type for n in model.graph.node})
    print(f"wrote {path} ({path.stat().st_size / 1e6:.0f} MB, {len(model.graph.node)} nodes: {' '.join(ops)}); "
          f"onnxruntime output {list(result.shape)}, std {result.std():.3f}", flush=True)


def main() -> int:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/h6-models")
    out.mkdir(parents=True, exist_ok=True)
    builders = {"vit_b16": vit_b16, "llama_prefill_6l": llama_prefill}
    for spec in sys.argv[2:] or builders:
        name, _, layers = spec.partition(":")
        if name not in builders or (layers and not layers.isdigit()):
            raise SystemExit(f"expected NAME or NAME:LAYERS, got '{spec}' (names: {', '.join(builders)})")
        if layers:
            write(f"{name}_{layers}l", *builders[name](layers=int(layers)), out)
        else:
            write(name, *builders[name](), out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
