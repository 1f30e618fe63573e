"""Small models for the export tests, written from plain torch ops and brevitas layers.

They stand in for the registry models where a test needs a model the test controls (a conv + attention
net with LayerNorm, and the same net quantized with brevitas: signed int8 activations, per-channel
weights, float bias).
"""

from __future__ import annotations

import torch
from torch import nn


class TinyAttention(nn.Module):
    """Multi-head self-attention in the project's order: q is scaled before its quant point."""

    def __init__(self, dim: int = 32, heads: int = 4, quant: dict | None = None) -> None:
        super().__init__()
        self.heads, self.hd = heads, dim // heads
        self.scale = self.hd**-0.5
        lin = quant["linear"] if quant else nn.Linear
        ident = quant["identity"] if quant else (lambda signed=True: nn.Identity())
        self.qkv = lin(dim, 3 * dim)
        self.proj = lin(dim, dim)
        kv_ident = quant.get("kv_identity", ident) if quant else ident
        self.in_quant, self.q_quant, self.k_quant, self.v_quant = ident(), ident(), kv_ident(), kv_ident()
        self.attn_quant, self.proj_in_quant = ident(), ident()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        x = self.in_quant(x)
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, self.hd).permute(2, 0, 3, 1, 4)
        q = self.q_quant(qkv[0] * self.scale)
        k = self.k_quant(qkv[1])
        v = self.v_quant(qkv[2])
        attn = self.attn_quant((q @ k.transpose(-2, -1)).softmax(-1))
        out = (attn @ v).transpose(1, 2).reshape(b, n, c)
        return self.proj(self.proj_in_quant(out))


class TinyViT(nn.Module):
    """Conv stem (+BN) -> LayerNorm -> attention -> MLP (GELU) -> mean pool -> head."""

    def __init__(
        self, num_classes: int = 10, dim: int = 32, img: int = 32, quant: dict | None = None
    ) -> None:
        super().__init__()
        conv = quant["conv"] if quant else nn.Conv2d
        lin = quant["linear"] if quant else nn.Linear
        ident = quant["identity"] if quant else (lambda signed=True: nn.Identity())
        self.input_size = (3, img, img)
        self.in_quant = ident()
        self.stem = conv(3, dim, 4, 4)
        self.act0 = nn.ReLU()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = TinyAttention(dim, 4, quant)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp_in = ident()
        self.fc1 = lin(dim, 2 * dim)
        self.gelu = nn.GELU()
        self.mlp_hidden = ident()
        self.fc2 = lin(2 * dim, dim)
        self.head_in = ident()
        self.head = lin(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act0(self.stem(self.in_quant(x))).flatten(2).transpose(1, 2)
        x = x + self.attn(self.norm1(x))
        x = x + self.fc2(self.mlp_hidden(self.gelu(self.fc1(self.mlp_in(self.norm2(x))))))
        return self.head(self.head_in(x.mean(1)))


def host_bits() -> tuple[int, int]:
    """(weight bits, K/V bits) whose int8 products this machine's CPU kernels add without saturating: 8 and 8 with
    VNNI; 7 and 7 on x86 without it (16-bit pair sums, see edgeattn.quant.config.KV_POINTS). This is what the
    ``host-cpu`` profile resolves to here."""
    from edgeattn.device_profile import load_profile

    quant = load_profile("host-cpu").quant
    return quant.weight_bits, quant.kv_max_bits or quant.act_bits


def brevitas_layers(weight_bits: int = 8, kv_bits: int = 8) -> dict:
    """brevitas layer factories: signed int8 activations, per-channel ``weight_bits`` weights, float bias;
    ``kv_identity`` quantizes K and V of TinyAttention with ``kv_bits``."""
    import brevitas.nn as qnn
    from brevitas.quant import Int8ActPerTensorFloat, Int8WeightPerChannelFloat

    class WeightQ(Int8WeightPerChannelFloat):
        bit_width = weight_bits

    class KVQ(Int8ActPerTensorFloat):
        bit_width = kv_bits

    return {
        "conv": lambda *a, **k: qnn.QuantConv2d(*a, weight_quant=WeightQ, bias_quant=None, **k),
        "linear": lambda *a, **k: qnn.QuantLinear(*a, weight_quant=WeightQ, bias_quant=None, **k),
        "identity": lambda signed=True: qnn.QuantIdentity(act_quant=Int8ActPerTensorFloat),
        "kv_identity": lambda signed=True: qnn.QuantIdentity(act_quant=KVQ),
    }


def calibrate(model: nn.Module, batches: list[torch.Tensor]) -> nn.Module:
    """Collect activation ranges with brevitas' calibration mode; returns the model in eval mode."""
    from brevitas.graph.calibrate import calibration_mode

    model.eval()
    with torch.no_grad(), calibration_mode(model):
        for xb in batches:
            model(xb)
    return model.eval()


def tiny_quant_vit(weight_bits: int = 8, seed: int = 0, img: int = 32, kv_bits: int = 8) -> TinyViT:
    """A calibrated brevitas TinyViT."""
    torch.manual_seed(seed)
    model = TinyViT(img=img, quant=brevitas_layers(weight_bits, kv_bits))
    gen = torch.Generator().manual_seed(seed + 1)
    return calibrate(model, [torch.randn(8, 3, img, img, generator=gen) for _ in range(4)])


def corrupt_weight_scale(model, which: int, factor: float):
    """A copy of the ONNX ``model`` with the scale of its ``which``-th int8 weight DequantizeLinear multiplied by
    ``factor``; returns (the copy, that DequantizeLinear node)."""
    import onnx
    from onnx import TensorProto, numpy_helper

    m = onnx.ModelProto()
    m.CopyFrom(model)
    int8 = {i.name for i in m.graph.initializer if i.data_type == TensorProto.INT8}
    dq = [n for n in m.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in int8][which]
    init = next(i for i in m.graph.initializer if i.name == dq.input[1])
    init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * factor, init.name))
    return m, dq
