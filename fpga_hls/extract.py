"""Read a PyTorch ViT into the accelerator's raw integer parameters (and check the templates can take it).

The templates take plain pre-norm ViT encoder layers: ``norm1`` (LayerNorm) -> ``attn``
(:class:`edgeattn.blocks.Attention`) -> residual, ``norm2`` -> ``mlp`` (:class:`edgeattn.blocks.Mlp` or the
``edge_moe_vit`` :class:`~edgeattn.models.edge_moe_vit.MoEMlp`) -> residual; and around them the ViT's
``patch_embed`` (Conv2d, kernel = stride), ``cls_token``, ``pos_embed``, ``norm`` and ``head``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from edgeattn.fpga_hls.golden import HLSFormats, LayerParams, ModelParams

from edgeattn.errors import EdgeAttnError

SUPPORTED_SHAPE = (
    "a plain pre-norm ViT (patch_embed Conv2d, cls_token, pos_embed, blocks of norm1/attn/norm2/mlp with "
    "edgeattn Attention and Mlp or MoEMlp, norm, head), e.g. vit_tiny or edge_moe_vit"
)


def _np(t: Any) -> np.ndarray:
    return t.detach().cpu().double().numpy()


def _q(fmt, value: Any, what: str, kind: str) -> np.ndarray:
    arr = _np(value) if not isinstance(value, np.ndarray) else value
    bad = int(np.count_nonzero(~np.isfinite(arr)))
    if bad:  # no width holds NaN or inf: "widen hls.*.integer" would not help
        raise EdgeAttnError(
            f"{what} holds {bad} non-finite value(s) (NaN or inf) of {arr.size}; no ap_fixed {kind} type can hold "
            "them (a diverged model?)"
        )
    try:
        return fmt.quantize(arr, rounding="half-even", saturate=False)
    except ValueError:
        peak = float(np.max(np.abs(arr))) if arr.size else 0.0
        raise EdgeAttnError(
            f"{what}: values up to {peak:.4g} do not fit the {kind} type ap_fixed<{fmt.width},"
            f"{fmt.width - fmt.frac}> (range [{fmt.min_value:g}, {fmt.max_value:g}]); "
            f"widen hls.{kind}.integer in the profile"
        ) from None


def quant_weight(layer: Any) -> Any | None:
    """A brevitas layer's quantized weights (the dequantized values it computes with), else ``None``.

    ``quant_weight()`` (brevitas 0.13) returns an ``IntQuantTensor``; ``.value`` is ``int * scale``. A layer
    whose weight quantization is disabled, or a plain torch layer, computes with its float ``weight``.
    """
    proxy = getattr(layer, "weight_quant", None)
    if proxy is None or not getattr(proxy, "is_quant_enabled", False) or not hasattr(layer, "quant_weight"):
        return None
    return layer.quant_weight().value


def _weight(layer: Any) -> Any:
    """The weights ``layer`` computes with: a brevitas layer's quantized ones (what QAT trained), else ``weight``.

    They are then quantized to the profile's ``ap_fixed`` weight type by :func:`_q`. A power-of-two scale (the
    ``fpga`` preset) no finer than the weight LSB (4-bit QAT weights: scale ~2^-7 against 2^-14) puts every value
    exactly on that grid, so the trained values reach the weight image unchanged. Otherwise (a finer power-of-two
    scale, as 16-bit weights under 1 in magnitude get; or a float scale from another preset) each value is rounded
    again, half to even, to the nearest multiple of the weight LSB: :func:`requantized_weights` measures that
    change. Biases stay float in these checkpoints (``QuantConfig.bias`` is ``"float"``): quantized from ``bias``.
    """
    value = quant_weight(layer)
    return layer.weight if value is None else value


def requantized_weights(root: Any, fmt: HLSFormats) -> dict[str, Any]:
    """How the profile's weight type changes the brevitas-quantized weights under ``root``.

    ``tensors``: quantized weight tensors; ``rerounded``: those with a value off the ``ap_fixed`` weight grid;
    ``max_change``: the largest change that rounding made (0.0 when every quantized weight is exact).
    """
    tensors = rerounded = 0
    worst = 0.0
    for module in root.modules():
        value = quant_weight(module)
        if value is None:
            continue
        arr = _np(value)
        on_grid = fmt.weight.dequantize(fmt.weight.quantize(arr, rounding="half-even"))
        change = float(np.max(np.abs(on_grid - arr), initial=0.0))
        tensors += 1
        rerounded += change > 0.0
        worst = max(worst, change)
    return {"tensors": tensors, "rerounded": rerounded, "max_change": worst}


def _linear(lin, fmt: HLSFormats, what: str) -> tuple[np.ndarray, np.ndarray]:
    w = _q(fmt.weight, _weight(lin), f"{what}.weight", "weight")
    b = lin.bias if lin.bias is not None else lin.weight.new_zeros(lin.weight.shape[0])
    return w, _q(fmt.act, b, f"{what}.bias", "act")


def _ln(norm, fmt: HLSFormats, what: str) -> tuple[np.ndarray, np.ndarray, float]:
    import torch

    if not isinstance(norm, torch.nn.LayerNorm) or len(norm.normalized_shape) != 1:
        raise EdgeAttnError(
            f"{what}: expected a LayerNorm over the last axis; the templates take {SUPPORTED_SHAPE}"
        )
    dim = norm.normalized_shape[0]
    g = norm.weight if norm.weight is not None else torch.ones(dim)
    b = norm.bias if norm.bias is not None else torch.zeros(dim)
    return _q(fmt.act, g, f"{what}.weight", "act"), _q(fmt.act, b, f"{what}.bias", "act"), float(norm.eps)


def check_vit(model: Any, name: str = "model") -> None:
    """Raise :class:`EdgeAttnError` naming what does not fit unless ``model`` has the supported ViT shape."""
    import torch

    for attr in ("patch_embed", "cls_token", "pos_embed", "blocks", "norm", "head"):
        if not hasattr(model, attr):
            raise EdgeAttnError(f"{name} has no '{attr}': the HLS templates take {SUPPORTED_SHAPE}")
    pe = model.patch_embed
    if not isinstance(pe, torch.nn.Conv2d) or pe.kernel_size != pe.stride or pe.padding not in ((0, 0), 0):
        raise EdgeAttnError(f"{name}.patch_embed must be a Conv2d with kernel == stride and no padding")
    for i, block in enumerate(model.blocks):
        check_block(block, f"{name}.blocks.{i}")


def check_block(block: Any, what: str) -> None:
    """Raise :class:`EdgeAttnError` unless ``block`` is a plain pre-norm encoder layer the templates take."""
    from edgeattn.blocks import Attention, Mlp
    from edgeattn.models.edge_moe_vit import MoEMlp

    for attr in ("norm1", "attn", "norm2", "mlp"):
        if not hasattr(block, attr):
            raise EdgeAttnError(f"{what} has no '{attr}': the HLS templates take {SUPPORTED_SHAPE}")
    if not isinstance(block.attn, Attention):
        raise EdgeAttnError(
            f"{what}.attn is {type(block.attn).__name__}, not edgeattn Attention ({SUPPORTED_SHAPE})"
        )
    if not isinstance(block.mlp, (Mlp, MoEMlp)):
        raise EdgeAttnError(f"{what}.mlp is {type(block.mlp).__name__}, not Mlp/MoEMlp ({SUPPORTED_SHAPE})")
    experts = block.mlp.experts if isinstance(block.mlp, MoEMlp) else [block.mlp]
    for mlp in experts:
        if mlp.fc2.out_features != mlp.fc1.in_features:
            raise EdgeAttnError(f"{what}.mlp: fc2 must map back to the token width")


def layer_params(block: Any, fmt: HLSFormats, what: str) -> LayerParams:
    """Raw integer parameters of one encoder layer (quantized to the profile's widths)."""
    from edgeattn.models.edge_moe_vit import MoEMlp

    check_block(block, what)
    attn = block.attn
    ln1_g, ln1_b, eps1 = _ln(block.norm1, fmt, f"{what}.norm1")
    ln2_g, ln2_b, eps2 = _ln(block.norm2, fmt, f"{what}.norm2")
    qkv_w, qkv_b = _linear(attn.qkv, fmt, f"{what}.attn.qkv")
    proj_w, proj_b = _linear(attn.proj, fmt, f"{what}.attn.proj")
    lp = LayerParams(
        ln1_g=ln1_g,
        ln1_b=ln1_b,
        qkv_w=qkv_w,
        qkv_b=qkv_b,
        proj_w=proj_w,
        proj_b=proj_b,
        ln2_g=ln2_g,
        ln2_b=ln2_b,
        num_heads=attn.num_heads,
        ln1_eps=eps1,
        ln2_eps=eps2,
    )
    mlp = block.mlp
    if isinstance(mlp, MoEMlp):
        lp.gate_w, lp.gate_b = _linear(mlp.gates[mlp.task], fmt, f"{what}.mlp.gates.{mlp.task}")
        parts = [
            (
                _linear(ex.fc1, fmt, f"{what}.mlp.experts.{e}.fc1"),
                _linear(ex.fc2, fmt, f"{what}.mlp.experts.{e}.fc2"),
            )
            for e, ex in enumerate(mlp.experts)
        ]
        lp.efc1_w = np.stack([p[0][0] for p in parts])
        lp.efc1_b = np.stack([p[0][1] for p in parts])
        lp.efc2_w = np.stack([p[1][0] for p in parts])
        lp.efc2_b = np.stack([p[1][1] for p in parts])
        lp.top_k = mlp.top_k
    else:
        lp.fc1_w, lp.fc1_b = _linear(mlp.fc1, fmt, f"{what}.mlp.fc1")
        lp.fc2_w, lp.fc2_b = _linear(mlp.fc2, fmt, f"{what}.mlp.fc2")
    return lp


def model_params(model: Any, fmt: HLSFormats) -> ModelParams:
    """Raw integer parameters of the whole tiny ViT."""
    check_vit(model)
    pe = model.patch_embed
    dim = pe.out_channels
    patch = int(pe.kernel_size[0])
    w = _weight(pe).reshape(dim, -1)
    patch_w = _q(fmt.weight, w, "patch_embed.weight", "weight")
    b = pe.bias if pe.bias is not None else pe.weight.new_zeros(dim)
    patch_b = _q(fmt.act, b, "patch_embed.bias", "act")
    norm_g, norm_b, norm_eps = _ln(model.norm, fmt, "norm")
    head_w, head_b = _linear(model.head, fmt, "head")
    in_chans, img, _ = model.input_size
    return ModelParams(
        patch=patch,
        in_chans=int(in_chans),
        img_size=int(img),
        patch_w=patch_w,
        patch_b=patch_b,
        cls_token=_q(fmt.act, model.cls_token.reshape(-1), "cls_token", "act"),
        pos_embed=_q(fmt.act, model.pos_embed.reshape(-1, dim), "pos_embed", "act"),
        layers=[layer_params(blk, fmt, f"blocks.{i}") for i, blk in enumerate(model.blocks)],
        norm_g=norm_g,
        norm_b=norm_b,
        norm_eps=norm_eps,
        head_w=head_w,
        head_b=head_b,
    )
