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
* whisper_tiny_encoder: Whisper tiny's audio encoder (the paper's
  AUD-I_enc) at full size: 80 mel bins x 3000 frames, Conv1d 80->384 k3
  and Conv1d 384->384 k3/2 with GELU -> 1500 frames, learned positions,
  4 pre-LN layers, 6 heads, MLP 1536 (k projection without bias, as
  Whisper's), final LayerNorm; output [1, 1500, 384].
* clip_text_encoder: CLIP ViT-B's text encoder (the paper's TXT_enc is
  CLIP's) at full size: 77 tokens, vocabulary 49408 (Gather embedding) +
  learned positions, d=512, 12 pre-LN layers, 8 heads, causal mask as an
  additive constant (0 / float32 min), MLP 2048 with QuickGELU
  (x*Sigmoid(1.702x)), final LayerNorm; output the last hidden state
  [1, 77, 512] (the EOT pooling and projection are left out).
* llama_prefill_6l: 128 tokens, vocabulary 32000 (Gather embedding),
  d=768, 6 layers, 12 heads (no grouped KV), MLP 2048 with a SiLU gate
  (Sigmoid/Mul), RMSNorm as Pow/ReduceMean/Add/Sqrt/Div/Mul, rotary
  embeddings in full (HF rotate_half form: Slice/Neg/Concat/Mul/Add, with
  the cos/sin tables for positions 0..127 folded to constants, as the
  exporter folds them for a static shape), causal mask as an additive
  constant [1, 1, 128, 128] (0 / float32 min), final RMSNorm, LM head
  MatMul; output the logits of every position [1, 128, 32000].

Convolutional stacks (batch 1, NCHW, batch norm folded into the convolution
biases as exporters fold it; output the last feature map):

* mobilenet_v2_blocks: 224x224 image, 3x3/2 stem with 32 filters, then the
  17 inverted-residual blocks of MobileNetV2 (1x1 expand x6, 3x3
  depthwise, 1x1 project, residual add where the shape allows; ReLU6 as
  Clip 0..6), final 1x1 to 1280 channels.
* mobilenet_v3_blocks: the 11 bottlenecks of MobileNetV3-small at 224x224
  (3x3 and 5x5 depthwise, strides 1 and 2, ReLU and HardSwish written as
  x*Clip(x+3, 0, 6)/6, squeeze-excite as GlobalAveragePool, 1x1 ReLU,
  1x1, HardSigmoid, Mul), final 1x1 to 576 channels.
* efficientnet_blocks: EfficientNet-B0's 16 MBConv blocks at 224x224
  (3x3 and 5x5 depthwise, SiLU as x*Sigmoid(x), squeeze-excite), final 1x1
  to 1280 channels.
* squeezenet_blocks: SqueezeNet 1.1 at 224x224: 3x3/2 stem with 64
  filters, ReLU, the 8 fire modules (1x1 squeeze, then 1x1 and 3x3 expand
  concatenated on the channels, each with ReLU) with 3x3/2 MaxPools after
  the stem and after fire modules 2 and 4 (ceil mode off, no padding),
  final 1x1 to 1000 channels with ReLU, GlobalAveragePool.
* depthwise_layer: one 3x3 depthwise convolution on a 1x96x112x112 input
  (bias, ReLU6): a kernel so cheap that a call's fixed cost (copying
  inputs and outputs) shows.
* resnet50_blocks: the ResNet-50 body at 224x224: 7x7/2 stem, 3x3/2
  MaxPool, 16 bottlenecks (1x1, 3x3 (stride 2 at a stage's start), 1x1 x4,
  projection shortcut at each stage's start, ReLU after the residual add).
"""

from __future__ import annotations

import argparse
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


def whisper_tiny_encoder(seed: int = 0, layers: int = 4) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    d, n_heads, mlp, mels, frames = 384, 6, 1536, 80, 3000
    d_head, seq = d // n_heads, frames // 2
    g = Graph(seed)
    x = g.op("Conv", "input_features", g.weight("conv1_w", (d, mels, 3)), g.const("conv1_b", np.zeros(d, np.float32)),
             kernel_shape=[3], pads=[1, 1])
    x = g.gelu(x)
    x = g.op("Conv", x, g.weight("conv2_w", (d, d, 3)), g.const("conv2_b", np.zeros(d, np.float32)),
             kernel_shape=[3], pads=[1, 1], strides=[2])
    x = g.op("Transpose", g.gelu(x), perm=[0, 2, 1])
    x = g.op("Add", x, g.weight("pos", (seq, d)))
    for _ in range(layers):
        h = g.layer_norm(x, d)
        q = g.heads(g.linear(h, d, d, True), seq, n_heads, d_head, [0, 2, 1, 3])
        k_t = g.heads(g.linear(h, d, d, False), seq, n_heads, d_head, [0, 2, 3, 1])
        v = g.heads(g.linear(h, d, d, True), seq, n_heads, d_head, [0, 2, 1, 3])
        x = g.op("Add", x, g.linear(g.attention(q, k_t, v, seq, d, d_head, None), d, d, True))
        h = g.gelu(g.linear(g.layer_norm(x, d), d, mlp, True))
        x = g.op("Add", x, g.linear(h, mlp, d, True))
    out = g.layer_norm(x, d)
    inputs = [helper.make_tensor_value_info("input_features", TensorProto.FLOAT, [1, mels, frames])]
    feeds = {"input_features": np.random.default_rng(seed + 1).standard_normal((1, mels, frames), np.float32)}
    return g.model("whisper_tiny_encoder", inputs, out, [1, seq, d]), feeds


def clip_text_encoder(seed: int = 0, layers: int = 12) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    d, n_heads, mlp, vocab, seq = 512, 8, 2048, 49408, 77
    d_head = d // n_heads
    g = Graph(seed)
    causal = np.triu(np.full((seq, seq), np.finfo(np.float32).min, np.float32), k=1)[None, None]
    mask = g.const("causal_mask", causal)
    x = g.op("Gather", g.weight("token_embedding", (vocab, d)), "input_ids", axis=0)
    x = g.op("Add", x, g.weight("position_embedding", (seq, d)))
    for _ in range(layers):
        h = g.layer_norm(x, d)
        q = g.heads(g.linear(h, d, d, True), seq, n_heads, d_head, [0, 2, 1, 3])
        k_t = g.heads(g.linear(h, d, d, True), seq, n_heads, d_head, [0, 2, 3, 1])
        v = g.heads(g.linear(h, d, d, True), seq, n_heads, d_head, [0, 2, 1, 3])
        x = g.op("Add", x, g.linear(g.attention(q, k_t, v, seq, d, d_head, mask), d, d, True))
        h = g.linear(g.layer_norm(x, d), d, mlp, True)
        quick_gelu = g.op("Mul", h, g.op("Sigmoid", g.op("Mul", h, g.scalar(1.702))))
        x = g.op("Add", x, g.linear(quick_gelu, mlp, d, True))
    out = g.layer_norm(x, d)
    inputs = [helper.make_tensor_value_info("input_ids", TensorProto.INT64, [1, seq])]
    feeds = {"input_ids": np.random.default_rng(seed + 1).integers(0, vocab, (1, seq), dtype=np.int64)}
    return g.model("clip_text_encoder", inputs, out, [1, seq, d]), feeds


def bert_base(seed: int = 0, layers: int = 12, seq: int = 128) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """BERT-base (d 768, 12 heads, MLP 3072, post-LayerNorm, GELU) over
    `seq` tokens without padding: word and position embeddings in, the last
    hidden state out."""
    d, n_heads, mlp, vocab = 768, 12, 3072, 30522
    d_head = d // n_heads
    g = Graph(seed)
    x = g.op("Gather", g.weight("word_embeddings", (vocab, d)), "input_ids", axis=0)
    x = g.layer_norm(g.op("Add", x, g.weight("position_embeddings", (seq, d))), d)
    for _ in range(layers):
        q = g.heads(g.linear(x, d, d, True), seq, n_heads, d_head, [0, 2, 1, 3])
        k_t = g.heads(g.linear(x, d, d, True), seq, n_heads, d_head, [0, 2, 3, 1])
        v = g.heads(g.linear(x, d, d, True), seq, n_heads, d_head, [0, 2, 1, 3])
        attn = g.linear(g.attention(q, k_t, v, seq, d, d_head, None), d, d, True)
        x = g.layer_norm(g.op("Add", x, attn), d)
        h = g.linear(g.gelu(g.linear(x, d, mlp, True)), mlp, d, True)
        x = g.layer_norm(g.op("Add", x, h), d)
    inputs = [helper.make_tensor_value_info("input_ids", TensorProto.INT64, [1, seq])]
    feeds = {"input_ids": np.random.default_rng(seed + 1).integers(0, vocab, (1, seq), dtype=np.int64)}
    return g.model("bert_base", inputs, x, [1, seq, d]), feeds


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


def _conv(g: Graph, x: str, c_in: int, c_out: int, k: int, stride: int = 1, group: int = 1) -> str:
    w = g.const("conv_w", (g.rng.standard_normal((c_out, c_in // group, k, k), dtype=np.float32)
                           * np.sqrt(2.0 / (c_in // group * k * k))).astype(np.float32))
    b = g.const("conv_b", (g.rng.standard_normal(c_out, dtype=np.float32) * 0.1).astype(np.float32))
    return g.op("Conv", x, w, b, kernel_shape=[k, k], strides=[stride, stride], pads=[k // 2] * 4, group=group)


def _act(g: Graph, x: str, kind: str) -> str:
    if kind == "relu":
        return g.op("Relu", x)
    if kind == "relu6":
        return g.op("Clip", x, g.scalar(0.0), g.scalar(6.0))
    if kind == "hswish":
        return g.op("Div", g.op("Mul", x, g.op("Clip", g.op("Add", x, g.scalar(3.0)), g.scalar(0.0), g.scalar(6.0))),
                    g.scalar(6.0))
    if kind == "silu":
        return g.op("Mul", x, g.op("Sigmoid", x))
    assert kind == "none", kind
    return x


def _squeeze_excite(g: Graph, x: str, c: int, squeeze: int, gate: str) -> str:
    s = g.op("GlobalAveragePool", x)
    s = _act(g, _conv(g, s, c, squeeze, 1), "relu" if gate == "hsigmoid" else "silu")
    s = _conv(g, s, squeeze, c, 1)
    s = g.op("HardSigmoid", s, alpha=1.0 / 6.0) if gate == "hsigmoid" else g.op("Sigmoid", s)
    return g.op("Mul", x, s)


def _inverted_residual(g: Graph, x: str, c_in: int, expand: int, c_out: int, k: int, stride: int, act: str,
                       se: str | None = None, se_ratio: float = 0.25) -> str:
    h = x
    if expand != c_in:
        h = _act(g, _conv(g, h, c_in, expand, 1), act)
    h = _act(g, _conv(g, h, expand, expand, k, stride, group=expand), act)
    if se:
        squeeze = max(8, int(c_in * se_ratio)) if se == "sigmoid" else max(8, (expand // 4 + 4) // 8 * 8)
        h = _squeeze_excite(g, h, expand, squeeze, se)
    h = _conv(g, h, expand, c_out, 1)
    return g.op("Add", x, h) if stride == 1 and c_in == c_out else h


def _image_model(g: Graph, name: str, x: str, out_c: int, out_hw: int, seed: int):
    inputs = [helper.make_tensor_value_info("pixel_values", TensorProto.FLOAT, [1, 3, 224, 224])]
    feeds = {"pixel_values": np.random.default_rng(seed + 1).standard_normal((1, 3, 224, 224), np.float32)}
    return g.model(name, inputs, x, [1, out_c, out_hw, out_hw]), feeds


def mobilenet_v2_blocks(seed: int = 0, layers: int = 17) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    g = Graph(seed)
    x = _act(g, _conv(g, "pixel_values", 3, 32, 3, 2), "relu6")
    c = 32
    blocks = [(t, co, s if i == 0 else 1) for t, co, n, s in
              [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
               (6, 320, 1, 1)] for i in range(n)][:layers]
    hw = 112
    for t, co, s in blocks:
        x = _inverted_residual(g, x, c, c * t, co, 3, s, "relu6")
        c, hw = co, hw // s
    x = _act(g, _conv(g, x, c, 1280, 1), "relu6")
    return _image_model(g, "mobilenet_v2_blocks", x, 1280, hw, seed)


def mobilenet_v3_blocks(seed: int = 0, layers: int = 11) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    g = Graph(seed)
    x = _act(g, _conv(g, "pixel_values", 3, 16, 3, 2), "hswish")
    c, hw = 16, 112
    blocks = [(3, 16, 16, "hsigmoid", "relu", 2), (3, 72, 24, None, "relu", 2), (3, 88, 24, None, "relu", 1),
              (5, 96, 40, "hsigmoid", "hswish", 2), (5, 240, 40, "hsigmoid", "hswish", 1),
              (5, 240, 40, "hsigmoid", "hswish", 1), (5, 120, 48, "hsigmoid", "hswish", 1),
              (5, 144, 48, "hsigmoid", "hswish", 1), (5, 288, 96, "hsigmoid", "hswish", 2),
              (5, 576, 96, "hsigmoid", "hswish", 1), (5, 576, 96, "hsigmoid", "hswish", 1)][:layers]
    for k, e, co, se, act, s in blocks:
        x = _inverted_residual(g, x, c, e, co, k, s, act, se)
        c, hw = co, hw // s
    x = _act(g, _conv(g, x, c, 576, 1), "hswish")
    return _image_model(g, "mobilenet_v3_blocks", x, 576, hw, seed)


def efficientnet_blocks(seed: int = 0, layers: int = 16) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    g = Graph(seed)
    x = _act(g, _conv(g, "pixel_values", 3, 32, 3, 2), "silu")
    c, hw = 32, 112
    blocks = [(t, k, co, s if i == 0 else 1) for t, k, co, n, s in
              [(1, 3, 16, 1, 1), (6, 3, 24, 2, 2), (6, 5, 40, 2, 2), (6, 3, 80, 3, 2), (6, 5, 112, 3, 1),
               (6, 5, 192, 4, 2), (6, 3, 320, 1, 1)] for i in range(n)][:layers]
    for t, k, co, s in blocks:
        x = _inverted_residual(g, x, c, c * t, co, k, s, "silu", "sigmoid")
        c, hw = co, hw // s
    x = _act(g, _conv(g, x, c, 1280, 1), "silu")
    return _image_model(g, "efficientnet_blocks", x, 1280, hw, seed)


def squeezenet_blocks(seed: int = 0, layers: int = 8) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    g = Graph(seed)

    def conv(x: str, c_in: int, c_out: int, k: int, stride: int = 1, pad: int = 0) -> str:
        w = g.const("conv_w", (g.rng.standard_normal((c_out, c_in, k, k), dtype=np.float32)
                               * np.sqrt(2.0 / (c_in * k * k))).astype(np.float32))
        b = g.const("conv_b", (g.rng.standard_normal(c_out, dtype=np.float32) * 0.1).astype(np.float32))
        return g.op("Relu", g.op("Conv", x, w, b, kernel_shape=[k, k], strides=[stride, stride], pads=[pad] * 4))

    def pool(x: str) -> str:
        return g.op("MaxPool", x, kernel_shape=[3, 3], strides=[2, 2])

    x = pool(conv("pixel_values", 3, 64, 3, 2))
    c = 64
    fires = [(16, 64), (16, 64), (32, 128), (32, 128), (48, 192), (48, 192), (64, 256), (64, 256)][:layers]
    for i, (squeeze, expand) in enumerate(fires):
        s = conv(x, c, squeeze, 1)
        x = g.op("Concat", conv(s, squeeze, expand, 1), conv(s, squeeze, expand, 3, pad=1), axis=1)
        c = 2 * expand
        if i in (1, 3):
            x = pool(x)
    x = g.op("GlobalAveragePool", conv(x, c, 1000, 1))
    inputs = [helper.make_tensor_value_info("pixel_values", TensorProto.FLOAT, [1, 3, 224, 224])]
    feeds = {"pixel_values": np.random.default_rng(seed + 1).standard_normal((1, 3, 224, 224), np.float32)}
    return g.model("squeezenet_blocks", inputs, x, [1, 1000, 1, 1]), feeds


def depthwise_layer(seed: int = 0, layers: int = 1) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    g = Graph(seed)
    x = _act(g, _conv(g, "x", 96, 96, 3, 1, group=96), "relu6")
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 96, 112, 112])]
    feeds = {"x": np.random.default_rng(seed + 1).standard_normal((1, 96, 112, 112), np.float32)}
    return g.model("depthwise_layer", inputs, x, [1, 96, 112, 112]), feeds


def resnet50_blocks(seed: int = 0, layers: int = 16) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    g = Graph(seed)
    x = _act(g, _conv(g, "pixel_values", 3, 64, 7, 2), "relu")
    x = g.op("MaxPool", x, kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    c, hw = 64, 56
    blocks = [(w, s if i == 0 else 1) for w, n, s in [(64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)]
              for i in range(n)][:layers]
    for width, s in blocks:
        h = _act(g, _conv(g, x, c, width, 1), "relu")
        h = _act(g, _conv(g, h, width, width, 3, s), "relu")
        h = _conv(g, h, width, width * 4, 1)
        shortcut = x if c == width * 4 and s == 1 else _conv(g, x, c, width * 4, 1, s)
        x = _act(g, g.op("Add", h, shortcut), "relu")
        c, hw = width * 4, hw // s
    return _image_model(g, "resnet50_blocks", x, c, hw, seed)


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
    builders = {"vit_b16": vit_b16, "bert_base": bert_base, "llama_prefill_6l": llama_prefill, "whisper_tiny_encoder": whisper_tiny_encoder,
                "clip_text_encoder": clip_text_encoder, "mobilenet_v2_blocks": mobilenet_v2_blocks,
                "mobilenet_v3_blocks": mobilenet_v3_blocks, "efficientnet_blocks": efficientnet_blocks,
                "resnet50_blocks": resnet50_blocks, "squeezenet_blocks": squeezenet_blocks,
                "depthwise_layer": depthwise_layer}
    parser = argparse.ArgumentParser(
        description="Build full-size random-weight benchmark models (hundreds of MB: write them outside the repository).")
    parser.add_argument("out", nargs="?", default="/tmp/h6-models", type=Path, help="output folder (default /tmp/h6-models)")
    parser.add_argument("models", nargs="*", metavar="NAME[:LAYERS]",
                        help=f"models to build (default all): {', '.join(builders)}")
    args = parser.parse_args()
    specs = args.models or list(builders)
    for spec in specs:
        name, _, layers = spec.partition(":")
        if name not in builders or (layers and not layers.isdigit()):
            parser.error(f"expected NAME or NAME:LAYERS, got '{spec}' (names: {', '.join(builders)})")
    args.out.mkdir(parents=True, exist_ok=True)
    for spec in specs:
        name, _, layers = spec.partition(":")
        if layers:
            write(f"{name}_{layers}l", *builders[name](layers=int(layers)), args.out)
        else:
            write(name, *builders[name](), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
