#!/usr/bin/env python3
"""Exports full-size, random-weight versions of the M4 encoders and a LLaMA
prefill for benchmarking (not committed: hundreds of MB). Needs torch and
transformers (the fixture venv, see scripts/fixtures/requirements.txt).

    /work/venv-fixtures/bin/python scripts/bench/make_models.py /work/bench-models

Writes NAME.onnx and NAME.inputs.npz (the convention peers.py and
`m4c bench --inputs` use) for:

* vit_b16: CLIP ViT-B/16 image encoder, 224x224 image (197 tokens, d=768,
  12 layers, 12 heads, MLP 3072), ~17.5 G MAC;
* clip_text_b: 12-layer CLIP text encoder, 77 tokens, d=512, 8 heads;
* whisper_tiny_encoder: Whisper-tiny encoder, 80 mel bins x 3000 frames,
  d=384, 4 layers, 6 heads;
* llama_prefill_6l: 6-layer LLaMA, 128 tokens, d=768, 12 heads, MLP 2048,
  vocabulary 32000 (logits of every position).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPVisionConfig,
    CLIPVisionModel,
    LlamaConfig,
    LlamaForCausalLM,
    WhisperConfig,
    WhisperModel,
)


class Hidden(nn.Module):
    """Returns only the last hidden state (or logits) of a transformers model."""

    def __init__(self, model: nn.Module, attr: str = "last_hidden_state"):
        super().__init__()
        self.model, self.attr = model, attr

    def forward(self, *inputs):
        return getattr(self.model(*inputs), self.attr)


class Encoder(nn.Module):
    def __init__(self, model: WhisperModel):
        super().__init__()
        self.encoder = model.encoder

    def forward(self, features):
        return self.encoder(features).last_hidden_state


def export(name: str, module: nn.Module, inputs: dict[str, np.ndarray], out: Path, dynamo: bool = False) -> None:
    module.eval()
    args = tuple(torch.from_numpy(v) for v in inputs.values())
    path = out / f"{name}.onnx"
    with torch.no_grad():
        torch.onnx.export(module, args, str(path), input_names=list(inputs), output_names=["output"],
                          opset_version=18 if dynamo else 17, dynamo=dynamo)
    np.savez(out / f"{name}.inputs.npz", **inputs)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.0f} MB)", flush=True)


def main() -> int:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "bench-models")
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    only = set(sys.argv[2:])

    def wanted(name: str) -> bool:
        return not only or name in only

    vit = CLIPVisionModel(CLIPVisionConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                           num_attention_heads=12, image_size=224, patch_size=16))
    if wanted("vit_b16"):
        export("vit_b16", Hidden(vit), {"pixel_values": rng.standard_normal((1, 3, 224, 224), np.float32)}, out)
    text = CLIPTextModel(CLIPTextConfig(hidden_size=512, intermediate_size=2048, num_hidden_layers=12,
                                        num_attention_heads=8, max_position_embeddings=77))
    ids = rng.integers(0, 49408, (1, 77), dtype=np.int64)
    # The causal masks of CLIP text and LLaMA go through the dynamo exporter,
    # whose graphs avoid Trilu (which the ONNX frontend does not lower).
    if wanted("clip_text_b"):
        export("clip_text_b", Hidden(text), {"input_ids": ids}, out, dynamo=True)
    whisper = WhisperModel(WhisperConfig(num_mel_bins=80, d_model=384, encoder_layers=4, encoder_attention_heads=6,
                                         encoder_ffn_dim=1536, decoder_layers=1, max_source_positions=1500))
    if wanted("whisper_tiny_encoder"):
        export("whisper_tiny_encoder", Encoder(whisper),
               {"input_features": rng.standard_normal((1, 80, 3000), np.float32)}, out)
    llama = LlamaForCausalLM(LlamaConfig(hidden_size=768, intermediate_size=2048, num_hidden_layers=6,
                                         num_attention_heads=12, num_key_value_heads=12, vocab_size=32000))
    ids = rng.integers(0, 32000, (1, 128), dtype=np.int64)
    if wanted("llama_prefill_6l"):
        export("llama_prefill_6l", Hidden(llama, "logits"), {"input_ids": ids}, out, dynamo=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
