"""Write an HLS project (hls4ml-like layout) for one encoder layer or a whole tiny ViT.

::

    PRJ/
      firmware/edgeattn_top.cpp, edgeattn_top.h   top functions (the same for every model)
      firmware/ea/*.h                             the accelerator library (MAC unit, attention, ...)
      firmware/ea/ea_tables.h                     exp / GELU tables from edgeattn.approx.fixed (generated)
      firmware/parameters.h                       widths and sizes (generated)
      firmware/weights.h                          on-chip parameters (LayerNorms, biases, tokens) and the word
                                                  offset of each weight matrix in the DDR image (generated)
      tb/edgeattn_tb.cpp                          test bench: runs the top, compares with the golden model
      tb_data/weights.dat                         the DDR weight image (weight_image.py), read through wmem
      tb_data/tb_input.dat, tb_golden.dat         test vectors (raw ints) and golden outputs
      tb_data/tb_float.dat                        the PyTorch model's outputs for the same inputs (the reference)
      build_prj.tcl                               Vitis HLS script: csim, csynth, cosim, export
      project.json                                what was generated: shapes, formats, estimate, errors
      README.md                                   what the project is, how to run it, its numbers

The project is written to a temporary folder beside ``out_dir`` and renamed at the end: a failure never
leaves a partial project behind.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
from edgeattn.fpga_hls import golden as G
from edgeattn.fpga_hls.estimate import (
    LayerShape,
    attn_slots,
    buffer_banks,
    buffer_width,
    estimate,
    layernorm_widths,
    weight_column_words,
)
from edgeattn.fpga_hls.extract import (
    SUPPORTED_SHAPE,
    check_vit,
    layer_params,
    model_params,
    requantized_weights,
)
from edgeattn.fpga_hls.gate import DEFAULT_TOLERANCE, gate_result, resolve_tolerance
from edgeattn.fpga_hls.vectors import vector_images
from edgeattn.fpga_hls.weight_image import WeightImage, build_weight_image

from edgeattn.atomic import replaceable_dir, staging_dir
from edgeattn.errors import EdgeAttnError
from edgeattn.hostinfo import MAX_SEED

__all__ = ["REFERENCES", "ProjectInfo", "check_reference", "generate_project", "compare"]

# what a brevitas-quantized model is compared with: "design", the arithmetic the design implements in float (the
# checkpoint's quantized weights, activations unquantized), or "checkpoint", its fake-quant model as trained
REFERENCES = ("design", "checkpoint")


@dataclass
class ProjectInfo:
    """What :func:`generate_project` wrote."""

    path: Path
    model: str
    top: str  # "encoder_layer_top" or "vit_top"
    layer: int | None  # None: whole ViT
    vectors: int
    formats: G.HLSFormats
    shape: LayerShape
    golden_vs_float: dict[str, float]
    estimate: dict[str, Any]
    stats: dict[str, Any] = field(default_factory=dict)
    # the same float model computing the profile's softmax/GELU methods, against the model as given: the part of
    # ``golden_vs_float`` that the approximations cause (the rest is the fixed-point arithmetic)
    approx_vs_float: dict[str, float] = field(default_factory=dict)
    # what ``golden_vs_float`` and ``approx_vs_float`` compare with (the "float" in their names is historical):
    # "the float model", or for a brevitas model its quantized weights with float activations ("design") or its
    # fake-quant model with the activation quantizers on ("checkpoint")
    reference: str = "the float model"
    reference_bits: str | None = None  # e.g. "W4A4" for a brevitas model's reference, None for a float one
    reference_kind: str = "design"  # the ``reference`` option (a float model is its own reference either way)
    # the softmax/GELU methods the model computes and the ones the design computes
    approx: dict[str, Any] = field(default_factory=dict)
    # where the test images come from (fpga_hls.vectors.vector_images's record)
    vectors_source: dict[str, Any] = field(default_factory=dict)
    # the accuracy gate on the golden model vs the reference (fpga_hls.gate.gate_result): bounds, figures, verdict
    gate: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "path": os.path.abspath(self.path),  # absolute: the working folder is not recorded
            "model": self.model,
            "top": self.top,
            "layer": self.layer,
            "vectors": self.vectors,
            "formats": self.formats.__dict__,
            "shape": self.shape.__dict__,
            "golden_vs_float": self.golden_vs_float,
            "approx_vs_float": self.approx_vs_float,
            "reference": self.reference,
            "reference_bits": self.reference_bits,
            "reference_kind": self.reference_kind,
            "approx": self.approx,
            "vectors_source": self.vectors_source,
            "gate": self.gate,
            "estimate": self.estimate,
            "stats": self.stats,
        }


def compare(fixed: np.ndarray, ref: np.ndarray) -> dict[str, float]:
    """Max abs error and cosine similarity of two flattened float arrays."""
    a = np.asarray(fixed, dtype=np.float64).ravel()
    b = np.asarray(ref, dtype=np.float64).ravel()
    denom = float(np.linalg.norm(a) * np.linalg.norm(b))
    cos = float(a @ b / denom) if denom > 0 else float(np.array_equal(a, b))
    return {
        "max_abs_err": float(np.max(np.abs(a - b))) if a.size else 0.0,
        "cosine": cos,
        "ref_max_abs": float(np.max(np.abs(b))) if b.size else 0.0,
    }


def _resolve_profile(profile: Any):
    from edgeattn.device_profile import DeviceProfile, load_profile

    prof = profile if isinstance(profile, DeviceProfile) else load_profile(profile)
    prof.require_target("hls")
    assert prof.hls is not None
    return prof


def _resolve_model(model: Any, seed: int = 0) -> tuple[Any, str]:
    """``(module, name)``; a registry name is built with weights drawn from ``seed`` (as ``edgeattn hls`` does),
    without touching the caller's random state, so the same call gives the same project every time."""
    import torch
    from torch import nn

    if isinstance(model, str):
        from edgeattn.models import create_model

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return create_model(model), model
    if not isinstance(model, nn.Module):
        raise EdgeAttnError(f"model must be a registry name or a torch model, got {type(model).__name__}")
    return model, type(model).__name__


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _parallel_range(spec: Any) -> tuple[int, int]:
    """The ``(min, max)`` that the profile schema allows for ``hls.attn_parallel``."""
    lo, hi = 1, 64
    for rule in spec.model_fields["attn_parallel"].metadata:
        lo = getattr(rule, "ge", lo)
        hi = getattr(rule, "le", hi)
    return int(lo), int(hi)


def _resolve_target(
    model: Any, profile: Any, layer: int | None, attn_parallel: int | None, seed: int = 0
) -> tuple[Any, str, Any, Any]:
    """Checked (model, name, profile, hls section): the model (a registry name is built from ``seed``) is a
    supported ViT in eval mode, ``layer`` is one of its encoder layers (or ``None``), and ``attn_parallel`` (when
    given) overrides the profile's."""
    if layer is not None and not _is_int(layer):
        raise EdgeAttnError(f"layer must be an encoder layer index (an integer) or None, got {layer!r}")
    if attn_parallel is not None and not _is_int(attn_parallel):
        raise EdgeAttnError(f"attn_parallel must be an integer (--parallel), got {attn_parallel!r}")
    prof = _resolve_profile(profile)
    hls = prof.hls
    if attn_parallel is not None:
        lo, hi = _parallel_range(type(hls))
        if not lo <= attn_parallel <= hi:  # the profile field's range: model_copy would not check it
            raise EdgeAttnError(f"attn_parallel must be >= {lo} and <= {hi} (--parallel), got {attn_parallel}")
        hls = hls.model_copy(update={"attn_parallel": int(attn_parallel)})
    net, name = _resolve_model(model, seed)
    net.eval()
    check_vit(net, name)
    depth = len(net.blocks)
    if depth == 0:
        raise EdgeAttnError(f"{name} has no encoder layers")
    if layer is not None and not 0 <= layer < depth:
        raise EdgeAttnError(f"layer {layer} does not exist: {name} has encoder layers 0..{depth - 1}")
    return net, name, prof, hls


def model_shape(net: Any, layer: int | None) -> LayerShape:
    """The sizes the accelerator is built for: encoder layer ``layer`` of ``net``, or (``None``) the whole ViT."""
    from edgeattn.models.edge_moe_vit import MoEMlp

    blocks = list(net.blocks) if layer is None else [net.blocks[layer]]
    attn = blocks[0].attn
    moe = [b.mlp for b in blocks if isinstance(b.mlp, MoEMlp)]
    first_mlp = moe[0].experts[0] if moe else blocks[0].mlp
    return LayerShape(
        tokens=int(net.pos_embed.shape[1]),
        dim=attn.qkv.in_features,
        heads=attn.num_heads,
        hidden=first_mlp.fc1.out_features,
        experts=moe[0].num_experts if moe else 0,
        top_k=moe[0].top_k if moe else 0,
        depth=len(blocks),
        moe_layers=len(moe),
        patch_dim=int(net.patch_embed.weight[0].numel()) if layer is None else 0,
        classes=int(net.head.out_features) if layer is None else 0,
        ln_eps=float(blocks[0].norm1.eps),
    )


def _reference(model: Any, images: Any, layer: int | None) -> tuple[np.ndarray, np.ndarray]:
    """(inputs, float outputs) of the part that becomes hardware: block ``layer``, or the whole model."""
    import torch

    if layer is None:
        with torch.no_grad():
            return images.double().numpy(), model(images).double().numpy()
    seen: dict[str, torch.Tensor] = {}

    def hook(_mod, args, out):
        seen["in"], seen["out"] = args[0].detach(), out.detach()
        raise _Stop

    handle = model.blocks[layer].register_forward_hook(hook)
    try:
        with torch.no_grad():
            model(images)
    except _Stop:
        pass
    finally:
        handle.remove()
    return seen["in"].double().numpy(), seen["out"].double().numpy()


def _approx_reference(model: Any, images: Any, layer: int | None, approx: Any) -> np.ndarray:
    """The float outputs of a copy of ``model`` that computes the profile's softmax and GELU methods."""
    import copy

    from edgeattn.approx import set_approximations

    twin = copy.deepcopy(model)
    set_approximations(twin, softmax=approx.softmax, gelu=approx.gelu)
    return _reference(twin, images, layer)[1]


def check_reference(kind: str) -> None:
    """Raise :class:`EdgeAttnError` unless ``kind`` is one of :data:`REFERENCES`."""
    if kind not in REFERENCES:
        raise EdgeAttnError(f"--reference must be one of {', '.join(REFERENCES)}, got {kind!r}")


def reference_label(
    net: Any, fmt: G.HLSFormats, kind: str = "design", part: Any = None
) -> tuple[str, str | None]:
    """What the golden model is compared with: ``(label, bits)``, bits like ``"W4A4"`` (``None``: float model).

    A quantized model (``edgeattn.quant.quantize_model``, e.g. from an ``edgeattn qat`` checkpoint) runs with its
    quantized weights and, for ``kind="checkpoint"``, with its activation quantizers on (which the design does not
    have: its activations are ``ap_fixed<act>``); for ``kind="design"`` with them off. ``bits`` are those the
    quantizers of ``part`` hold (the layer the design implements; default the whole model), so a mixed-precision
    checkpoint is labelled by what this design holds, not by its global setting.
    """
    from edgeattn.export.onnx_export import is_quantized

    if not is_quantized(net):
        return "the float model", None
    bits = _held_bits_label(net if part is None else part)
    design = f"ap_fixed<{fmt.act_width},{fmt.act_int}>"
    if kind == "design":
        return f"the {bits} checkpoint's quantized weights with float activations (the design's are {design})", bits
    return f"the fake-quant {bits} model (its activations are quantized; the design's are {design})", bits


def _held_bits_label(part: Any) -> str:
    """``"W4A8"`` from the bit widths ``part``'s quantizers hold; several widths as ``W4/8A8``, and float layers
    beside quantized ones counted (``W4A8 + 2 float layers``); ``"float"`` when it holds no quantized layer."""
    from edgeattn.quant.quantize import held_bits
    from torch import nn

    held = held_bits(part)
    acts = sorted({*held["activation"], *held["kv"]})
    floats = sum(type(m) in (nn.Linear, nn.Conv1d, nn.Conv2d) for m in part.modules())
    if not held["weight"]:
        return "float"
    label = "W" + "/".join(map(str, held["weight"])) + ("A" + "/".join(map(str, acts)) if acts else "A-float")
    return label + (f" + {floats} float layer{'s' if floats != 1 else ''}" if floats else "")


@contextlib.contextmanager
def reference_mode(net: Any, kind: str = "design") -> Iterator[None]:
    """Run ``net`` inside as the ``kind`` reference: for ``"design"``, a brevitas model's activation quantizers
    (quant points, layer input quantizers, the softmax output's) are off, its weight quantizers on.

    The design holds the quantized weights (:func:`~edgeattn.fpga_hls.extract.quant_weight`) but carries every
    activation at the profile's ``ap_fixed`` widths, so its float counterpart has no activation quantization.
    brevitas's own switch is used (``quantization_status_manager``, which the calibration modes are built on); the
    quantizers are restored on exit. A float model, or ``"checkpoint"``, runs as it is.
    """
    from edgeattn.export.onnx_export import is_quantized

    if kind == "checkpoint" or not is_quantized(net):
        yield
        return
    from brevitas.graph.calibrate import quantization_status_manager

    with quantization_status_manager(net, disable_act_quant=True, is_training=False):
        yield


def _approx_info(part: Any, approx: Any) -> dict[str, Any]:
    """The softmax/GELU methods ``part`` computes (sorted lists) and those the design computes."""
    from edgeattn.approx import approximations_in

    found = approximations_in(part)
    return {
        "model": {kind: sorted(found[kind]) for kind in ("softmax", "gelu")},
        "design": {"softmax": approx.softmax, "gelu": approx.gelu},
    }


class _Stop(Exception):
    """Ends the forward pass once the block of interest has run."""


def _overflow_error(stats: G.GoldenStats, fmt: G.HLSFormats, source: str) -> EdgeAttnError:
    stage, count = max(stats.overflow.items(), key=lambda kv: kv[1])
    peak = stats.max_abs.get(stage, float("nan"))
    return EdgeAttnError(
        f"activation overflow on the test vectors ({source}): {count} values at '{stage}' (up to {peak:.4g}) exceed "
        f"ap_fixed<{fmt.act_width},{fmt.act_int}> (range +-{2.0 ** (fmt.act_int - 1):g}); "
        f"raise hls.act.integer in the profile"
    )


def _check_tolerance_keys(tolerance: Any) -> None:
    """EdgeAttnError unless ``tolerance`` is ``None`` or a mapping with only the gate's keys (a misspelt key
    would otherwise be ignored and the default bound used)."""
    if tolerance is None:
        return
    if not isinstance(tolerance, Mapping):
        raise EdgeAttnError(f"tolerance must be a dict, got {type(tolerance).__name__}")
    unknown = sorted(str(k) for k in tolerance if k not in DEFAULT_TOLERANCE)
    if unknown:
        raise EdgeAttnError(
            f"tolerance: unknown key(s) {', '.join(map(repr, unknown))}; allowed: {', '.join(DEFAULT_TOLERANCE)}"
        )


def generate_project(
    model: Any,
    profile: Any,
    out_dir: str | Path,
    *,
    layer: int | None = 0,
    vectors: int = 4,
    seed: int = 0,
    attn_parallel: int | None = None,
    formats: G.HLSFormats | None = None,
    force: bool = False,
    model_name: str | None = None,
    check: Callable[[Path], Any] | None = None,
    vectors_from: str = "random",
    meta: dict | None = None,
    tolerance: dict[str, float] | None = None,
    reference: str = "design",
) -> ProjectInfo:
    """Generate an HLS project for encoder layer ``layer`` of ``model`` (``None``: the whole tiny ViT).

    Args:
        model: a registry name (``vit_tiny``, ``edge_moe_vit``) or a model instance of that shape (eval mode
            is set here). Its weights are quantized to the profile's widths; a brevitas-quantized model's
            quantized weights (``quant_weight()``) are, not its float master weights; ``reference`` says what
            the golden model is compared with (``ProjectInfo.reference`` says it in words).
        profile: a device profile (name, path or :class:`~edgeattn.device_profile.DeviceProfile`) with an
            ``hls`` section.
        out_dir: project folder; must not exist unless ``force``.
        layer: which encoder layer becomes ``encoder_layer_top``; ``None`` builds ``vit_top`` for the model.
        vectors: number of test vectors (images through the model).
        seed: seed of the random test images, and of a registry model's weights when ``model`` is a name.
        attn_parallel: query rows in flight (default: the profile's ``hls.attn_parallel``); more than the model's
            tokens is clamped to the token count (a slot beyond it could never be busy), and both figures are
            recorded (``estimate["parallelism"]``: ``attn_parallel``, ``attn_parallel_requested``).
        formats: override the profile's widths (for width sweeps).
        force: replace an existing ``out_dir``.
        model_name: name recorded in the project (default: the registry name or class name).
        check: called with the staged project folder once it is complete, before it replaces ``out_dir``
            (e.g. the C simulation): if it raises (or is interrupted), nothing is published and an existing
            ``out_dir`` is left as it was.
        vectors_from: ``"random"`` (standard-normal images from ``seed``) or ``"data"``: validation images of
            the data ``meta`` (an ``edgeattn qat`` checkpoint's) records, else digits (:mod:`.vectors`).
        meta: the ``edgeattn qat`` checkpoint meta of ``model``, for ``vectors_from="data"``.
        tolerance: the accuracy gate's bounds, ``{"max_abs": fraction of the output range, "min_cosine": ...}``
            (either may be left out: :data:`~edgeattn.fpga_hls.gate.DEFAULT_TOLERANCE`). A failed gate does not
            raise: the project is written and ``ProjectInfo.gate["passed"]`` is False (the CLI exits 1).
        reference: for a brevitas-quantized model, ``"design"`` (default): its quantized weights with float
            activations, the arithmetic the design implements; ``"checkpoint"``: its fake-quant model with the
            activation quantizers on, as trained (the total deviation from it). A float model is the reference
            either way.

    Raises:
        EdgeAttnError: unsupported model shape, weights or activations that overflow the declared widths,
            an existing ``out_dir`` without ``force``.
    """
    out_dir = Path(out_dir)
    replaceable_dir(out_dir)  # not '.', a folder above it, or a file: fail before any work
    if out_dir.exists() and not force:
        raise EdgeAttnError(f"{out_dir} already exists; pass --force to replace it")
    if not _is_int(vectors) or vectors < 1:
        raise EdgeAttnError(f"vectors must be an integer >= 1, got {vectors!r}")
    if not _is_int(seed) or not 0 <= seed <= MAX_SEED:
        raise EdgeAttnError(f"seed must be an integer in 0..{MAX_SEED}, got {seed!r}")
    _check_tolerance_keys(tolerance)
    if formats is not None and not isinstance(formats, G.HLSFormats):
        raise EdgeAttnError(f"formats must be an HLSFormats, got {type(formats).__name__}")
    check_reference(reference)
    net, default_name, prof, hls = _resolve_target(model, profile, layer, attn_parallel, seed)
    tol = resolve_tolerance(hls, (tolerance or {}).get("max_abs"), (tolerance or {}).get("min_cosine"))
    fmt = formats or G.HLSFormats.from_profile(hls)
    name = model_name or default_name
    blocks = list(net.blocks) if layer is None else [net.blocks[layer]]
    attn0 = blocks[0].attn
    dim, heads = attn0.qkv.in_features, attn0.num_heads
    try:
        fmt.check(head_dim=dim // heads, profile=formats is None)
    except ValueError as exc:
        where = "formats" if formats is not None else f"profile '{prof.name}'"
        raise EdgeAttnError(f"{where}: {exc}") from None

    # the parameters the hardware holds, quantized to the profile's widths
    mp: G.ModelParams | None = model_params(net, fmt) if layer is None else None
    lps = mp.layers if mp is not None else [layer_params(net.blocks[layer], fmt, f"blocks.{layer}")]
    _check_uniform(lps, name)

    images, source = vector_images(net, vectors, vectors_from, meta, seed)
    with reference_mode(net, reference):
        inputs, ref = _reference(net, images, layer)
        approx_ref = _approx_reference(net, images, layer, prof.approx)
    try:
        in_raw = fmt.act.quantize(inputs, rounding="half-even", saturate=False)
    except ValueError:
        raise EdgeAttnError(
            f"test-vector inputs ({source['description']}; up to {np.max(np.abs(inputs)):.4g}) exceed "
            f"ap_fixed<{fmt.act_width},{fmt.act_int}>; raise hls.act.integer in the profile"
        ) from None
    stats = G.GoldenStats()
    if mp is None:
        gold = np.stack([G.encoder_layer(x, lps[0], fmt, stats, f"blocks.{layer}") for x in in_raw])
    else:
        gold = np.stack([G.vit_forward(x, mp, fmt, stats) for x in in_raw])
    if stats.overflow:
        raise _overflow_error(stats, fmt, source["description"])
    metrics = compare(fmt.act.dequantize(gold), ref)
    approx_metrics = compare(approx_ref, ref)

    shape = model_shape(net, layer)
    est = estimate(shape, hls, fmt)
    requested = hls.attn_parallel
    hls = hls.model_copy(update={"attn_parallel": attn_slots(shape, hls)})  # what the design builds
    top = "vit_top" if layer is None else "encoder_layer_top"
    part = net if layer is None else net.blocks[layer]
    label, bits = reference_label(net, fmt, reference, part)
    info = ProjectInfo(
        path=out_dir,
        model=name,
        top=top,
        layer=layer,
        vectors=vectors,
        formats=fmt,
        shape=shape,
        golden_vs_float=metrics,
        approx_vs_float=approx_metrics,
        reference=label,
        reference_bits=bits,
        reference_kind=reference,
        approx=_approx_info(part, prof.approx),
        vectors_source=source,
        gate=gate_result(fmt.act.dequantize(gold), ref, tol),
        estimate=est,
        stats={
            "score_saturated": stats.score_saturated,
            "scores": stats.scores,
            "max_abs": stats.max_abs,
            "attn_parallel": hls.attn_parallel,
            "attn_parallel_requested": requested,
            "part": hls.part,
            "clock_mhz": hls.clock_mhz,
            "profile": prof.name,
        },
    )
    requantized = requantized_weights(part, fmt)
    if requantized["tensors"]:  # a brevitas-quantized model
        info.stats["quant_weights"] = requantized

    with staging_dir(out_dir, replace=force) as tmp:
        _write_project(tmp, info, hls, lps, mp, in_raw, gold, ref)
        if check is not None:
            check(tmp)
    return info


def _hidden(lp: G.LayerParams) -> int:
    return int(lp.efc1_w.shape[1]) if lp.is_moe else int(lp.fc1_w.shape[0])


def _check_uniform(lps: list[G.LayerParams], name: str) -> None:
    first = lps[0]
    for i, lp in enumerate(lps):
        if (
            lp.qkv_w.shape != first.qkv_w.shape
            or lp.num_heads != first.num_heads
            or _hidden(lp) != _hidden(first)
        ):
            raise EdgeAttnError(
                f"{name}: layer {i} has a different width, head count or MLP width than layer 0; "
                f"the templates "
                f"take {SUPPORTED_SHAPE} with one shape for all layers"
            )
    moe = [lp for lp in lps if lp.is_moe]
    if any(lp.gate_w.shape != moe[0].gate_w.shape or lp.top_k != moe[0].top_k for lp in moe):
        raise EdgeAttnError(f"{name}: all MoE layers must have the same number of experts and top_k")


# ----------------------------------------------------------------------------------- file writers
def _c_array(ctype: str, name: str, arr: np.ndarray, dims: list[str]) -> str:
    flat = np.asarray(arr, dtype=np.int64).ravel().tolist()
    rows = [", ".join(map(str, flat[i : i + 24])) for i in range(0, len(flat), 24)]
    body = ",\n    ".join(rows)
    return f"static const {ctype} {name}{''.join(f'[{d}]' for d in dims)} = {{\n    {body}}};\n"


def _comment(text: str) -> str:
    """``text`` for a one-line C++ comment of an ASCII header: whitespace (newlines too) collapsed, other
    characters as Python escapes (a profile named ``Prüfstand`` becomes ``Pr\\xfcfstand``)."""
    return " ".join(str(text).split()).encode("ascii", "backslashreplace").decode("ascii")


def _raw_ctype(width: int) -> str:
    return "short" if width <= 16 else "int"


def _parameters_h(
    info: ProjectInfo, hls, lps: list[G.LayerParams], mp: G.ModelParams | None, img: WeightImage
) -> str:
    fmt, s = info.formats, info.shape
    n_dense = sum(not lp.is_moe for lp in lps)
    n_moe = len(lps) - n_dense
    head_dim = s.dim // s.heads
    eps = max(lp.ln1_eps for lp in lps)  # eps is a per-model constant in practice; checked below
    if any(lp.ln1_eps != eps or lp.ln2_eps != eps for lp in lps) or (mp is not None and mp.norm_eps != eps):
        raise EdgeAttnError(f"{info.model}: all LayerNorms must share one eps for the templates")
    ln_f = fmt.ln_frac(s.dim)
    defs: list[tuple[str, Any, str]] = [
        ("EA_ACT_W", fmt.act_width, "activations: ap_fixed<W, I>"),
        ("EA_ACT_I", fmt.act_int, ""),
        ("EA_W_W", fmt.weight_width, "linear weights: ap_fixed<W, I>"),
        ("EA_W_I", fmt.weight_int, ""),
        ("EA_SM_IN_W", fmt.score_width, "attention scores (softmax input)"),
        ("EA_SM_IN_I", fmt.score_int, ""),
        ("EA_SM_OUT_F", fmt.prob_frac, "softmax probability fraction bits"),
        ("EA_GELU_F", fmt.gelu_table_frac, "GELU residual table fraction bits"),
        ("EA_QK_F", G.QK_FRAC, "fraction bits of q*scale and k"),
        ("EA_SCALE_F", G.SCALE_FRAC, "fraction bits of 1/sqrt(head_dim)"),
        ("EA_QSCALE_RAW", G.qscale_raw(head_dim), f"1/sqrt({head_dim})"),
        ("EA_LN_F", ln_f, "LayerNorm centred-value fraction bits"),
        ("EA_LN_R", G.LN_INV_FRAC, "LayerNorm 1/std fraction bits"),
        ("EA_LN_EPS_RAW", G.ln_eps_raw(eps, ln_f), f"LayerNorm eps {eps:g}"),
        *layernorm_widths(fmt, s.dim, eps).defines(),
        ("EA_ATTN_P", hls.attn_parallel, "query rows in flight"),
        ("EA_MAC_R", hls.mac_rows, "MAC array rows (inputs per cycle)"),
        ("EA_MAC_C", hls.mac_cols, "MAC array columns (outputs per cycle)"),
        ("EA_TOKENS", s.tokens, ""),
        ("EA_MAX_ROWS", s.tokens, "rows of every activation buffer"),
        ("EA_BUF_W", buffer_width(s, hls), "row width of every activation buffer"),
        ("EA_MAC_BANKS", buffer_banks(s, hls), "cyclic banks of each buffer row"),
        ("EA_WCOL_WORDS", weight_column_words(s, hls), "words of the MAC unit's weight-column buffer"),
        ("EA_WEIGHT_WORDS", img.n_words, f"words of the DDR weight image ({hls.mac_rows} weights each)"),
        ("EA_BIAS_LEN", int(img.bias.size), "entries of bias_rom"),
        ("EA_DIM", s.dim, ""),
        ("EA_HEADS", s.heads, ""),
        ("EA_HIDDEN", s.hidden, "MLP / expert hidden width"),
        ("EA_DEPTH", len(lps), "encoder layers generated"),
        ("EA_LAYER", 0, "layer run by encoder_layer_top"),
        ("EA_N_DENSE", n_dense, "layers with a dense MLP"),
        ("EA_N_MOE", n_moe, "layers with an MoE MLP"),
        ("EA_EXPERTS", max(s.experts, 1), ""),
        ("EA_TOPK", max(s.top_k, 1), ""),
        ("EA_LAYER_DEPTH", s.tokens * s.dim, "m_axi depth of encoder_layer_top ports"),
        ("EA_HAS_VIT", int(mp is not None), "vit_top is generated"),
        ("EA_TOP_VIT", int(info.top == "vit_top"), "the test bench runs vit_top"),
        ("EA_ARAW_T", _raw_ctype(fmt.act_width), "raw activation-typed parameter ROM type"),
    ]
    if mp is not None:
        defs += [
            ("EA_IN_CHANS", mp.in_chans, ""),
            ("EA_IMG", mp.img_size, ""),
            ("EA_PATCH", mp.patch, ""),
            ("EA_NUM_PATCHES", (mp.img_size // mp.patch) ** 2, ""),
            ("EA_PATCH_DIM", int(mp.patch_w.shape[1]), ""),
            ("EA_CLASSES", int(mp.head_w.shape[0]), ""),
            ("EA_IMAGE_DEPTH", mp.in_chans * mp.img_size**2, "m_axi depth of the image port"),
        ]
    lines = [
        f"// Generated by `edgeattn hls` for {_comment(info.model)} "
        f"({'whole model' if mp is not None else f'layer {info.layer}'}).",
        f"// Profile {_comment(info.stats['profile'])}: {_comment(hls.part)} at {hls.clock_mhz:g} MHz.",
        "#ifndef EA_PARAMETERS_H",
        "#define EA_PARAMETERS_H",
        "",
    ]
    for key, value, comment in defs:
        lines.append(f"#define {key} {value}" + (f"  // {comment}" if comment else ""))
    lines += ["", "#endif", ""]
    return "\n".join(lines)


def _weights_h(info: ProjectInfo, lps: list[G.LayerParams], mp: G.ModelParams | None, img: WeightImage) -> str:
    a = "araw_t"
    layer_moe, layer_dense, im, idn = [], [], 0, 0
    for lp in lps:
        layer_moe.append(im if lp.is_moe else -1)
        layer_dense.append(-1 if lp.is_moe else idn)
        im, idn = im + lp.is_moe, idn + (not lp.is_moe)
    out = [
        f"// Generated by `edgeattn hls`: on-chip parameters of {_comment(info.model)} at the profile's widths",
        "// (raw integers: LayerNorms, biases, tokens) and where each linear layer's weights start in the DDR",
        "// weight image (tb_data/weights.dat, read through the wmem port; layout in docs/hls.md).",
        "#ifndef EA_WEIGHTS_H",
        "#define EA_WEIGHTS_H",
        "",
        '#include "ea/ea_types.h"',
        "",
        "namespace ea {",
        "",
        _c_array("short", "layer_moe", np.array(layer_moe), ["EA_DEPTH"]),
        _c_array("short", "layer_dense", np.array(layer_dense), ["EA_DEPTH"]),
    ]

    def stack(attr: str) -> np.ndarray:
        return np.stack([getattr(lp, attr) for lp in lps])

    for attr in ("ln1_g", "ln1_b", "ln2_g", "ln2_b"):
        out.append(_c_array(a, attr, stack(attr), ["EA_DEPTH", "EA_DIM"]))
    out.append("// every linear layer's biases, from its *_b_off")
    out.append(_c_array(a, "bias_rom", img.bias, ["EA_BIAS_LEN"]))
    out.append("// word offsets (*_w_off) in wmem and bias offsets (*_b_off) in bias_rom")
    groups = [("qkv", "EA_DEPTH"), ("proj", "EA_DEPTH"), ("fc1", "EA_N_DENSE"), ("fc2", "EA_N_DENSE"),
              ("gate", "EA_N_MOE"), ("efc1", "EA_N_MOE"), ("efc2", "EA_N_MOE")]
    for name, count in groups:
        if name not in img.w_off:
            continue
        dims = [count] + (["EA_EXPERTS"] if name.startswith("efc") else [])
        out.append(_c_array("int", f"{name}_w_off", np.array(img.w_off[name]), dims))
        out.append(_c_array("int", f"{name}_b_off", np.array(img.b_off[name]), dims))
    if mp is not None:
        out.append("// patch embedding, class token, positions, final norm and head")
        for name in ("patch", "head"):
            out.append(f"static const int {name}_w_off = {img.w_off[name][0]};")
            out.append(f"static const int {name}_b_off = {img.b_off[name][0]};")
        out.append(_c_array(a, "cls_token", mp.cls_token, ["EA_DIM"]))
        out.append(_c_array(a, "pos_embed", mp.pos_embed, ["EA_TOKENS", "EA_DIM"]))
        out.append(_c_array(a, "norm_g", mp.norm_g, ["EA_DIM"]))
        out.append(_c_array(a, "norm_b", mp.norm_b, ["EA_DIM"]))
    out += ["}  // namespace ea", "", "#endif", ""]
    return "\n".join(out)


def _readme(info: ProjectInfo, hls, img: WeightImage) -> str:
    """The project's own README: what it is, how to run it, where the weights go, what the estimate says."""
    part = "the whole model" if info.layer is None else f"encoder layer {info.layer}"
    est, fmt = info.estimate, info.formats
    gate = info.gate or {}
    ports = (
        "image (C x H x W act_t) on gmem0, logits on gmem1"
        if info.top == "vit_top"
        else "x_in (tokens x dim act_t) on gmem0, x_out on gmem1"
    )
    lines = [
        f"# edgeattn HLS project: {_comment(info.model)}, {part}",
        "",
        f"Generated by `edgeattn hls` for `{_comment(hls.part)}` at {hls.clock_mhz:g} MHz (profile "
        f"`{_comment(info.stats.get('profile', ''))}`): an Edge-MoE-style attention accelerator, top function "
        f"`{info.top}`. Activations `ap_fixed<{fmt.act_width},{fmt.act_int}>`, weights "
        f"`ap_fixed<{fmt.weight_width},{fmt.weight_int}>`; one {hls.mac_rows}x{hls.mac_cols} MAC unit serves every "
        f"linear layer, {hls.attn_parallel} attention rows in flight. The full "
        "specification is edgeattn's docs/hls.md.",
        "",
        "## Run it",
        "",
        "```",
        "vitis_hls -f build_prj.tcl                       # csim, csynth, cosim (first test vector), export",
        'vitis_hls -f build_prj.tcl "cosim=0 export=0"    # only some steps; cosim_vectors=N or =all for cosim',
        "python -c \"from edgeattn.fpga_hls import run_csim; run_csim('.')\"   # C simulation with g++, no Vitis",
        "```",
        "",
        "The test bench runs the top on every vector of `tb_data/tb_input.dat` and compares each output with the",
        "golden model (`tb_data/tb_golden.dat`) bit for bit; it prints `EDGEATTN_CSIM vectors=... mismatches=...`",
        "and exits 0 only when nothing differs.",
        "",
        "## Interface",
        "",
        f"- `{info.top}`: {ports}; `wmem` (the weights) on gmem2; control on s_axilite.",
        f"- `wmem` holds {img.n_words} words of {hls.mac_rows * fmt.weight_width} bits "
        f"({img.n_words * hls.mac_rows * fmt.weight_width // 8} bytes): `tb_data/weights.dat` as text, first line "
        "`words lanes`, then one word per line, lane 0 first. A host copies it to DDR and writes its address to "
        "the `wmem` register. Matrix `W[out][in]` starts at its word offset `off` (the `*_w_off` tables in "
        "`firmware/weights.h`): word `off + (o * ceil(in / R) + i) * C + c` holds `W[o * C + c][i * R + k]` in lane "
        f"`k` (R = {hls.mac_rows}, C = {hls.mac_cols}), zero outside the matrix.",
        "- Biases, LayerNorm parameters and tokens are on-chip ROMs in `firmware/weights.h`.",
        "",
        "## Numbers",
        "",
        f"- Fixed point vs {info.reference}: max abs err {info.golden_vs_float['max_abs_err']:.3g}, cosine "
        f"{info.golden_vs_float['cosine']:.6f} over {info.vectors} test vectors; accuracy gate "
        f"{'passed' if gate.get('passed') else 'FAILED'}.",
        f"- Estimate (analytical, not synthesis): {est['cycles']['total']} cycles = {est['latency_us']:.1f} us, "
        f"DSP {est['dsp']['total']} of {est['budget']['dsp']}, BRAM18K {est['bram18k']['total']} of "
        f"{est['budget']['bram18k']}, {est['ddr']['weight_bytes'] / 1e6:.2f} MB of weights from DDR per "
        "inference. `project.json` has every figure and the arithmetic behind the estimate.",
        "",
    ]
    return "\n".join(lines)


def _tables_h(fmt: G.HLSFormats) -> str:
    from edgeattn.approx.fixed import EXP2_HI, EXP2_LO

    table = G.gelu_table(fmt)
    return "\n".join(
        [
            "// Generated by `edgeattn hls` from edgeattn.approx.fixed (docs/fixed_point.md): the 2^f tables",
            f"// (24 fraction bits) and the Edge-MoE GELU residual table delta(i/32) "
            f"({fmt.gelu_table_frac} bits).",
            "#ifndef EA_TABLES_H",
            "#define EA_TABLES_H",
            "",
            f"#define EA_GELU_ENTRIES {len(table)}",
            _c_array("unsigned int", "EA_EXP2_HI", EXP2_HI, [str(len(EXP2_HI))]),
            _c_array("unsigned int", "EA_EXP2_LO", EXP2_LO, [str(len(EXP2_LO))]),
            _c_array("int", "EA_GELU_DELTA", table, ["EA_GELU_ENTRIES"]),
            "#endif",
            "",
        ]
    )


def _write_rows(path: Path, rows: np.ndarray, header: str | None = None, fmt: str = "%d") -> None:
    with open(path, "w", encoding="ascii") as fh:
        if header:
            fh.write(header + "\n")
        np.savetxt(fh, rows.reshape(rows.shape[0], -1), fmt=fmt, delimiter=" ")


def _tcl(info: ProjectInfo, hls) -> str:
    text = (
        resources.files("edgeattn.fpga_hls").joinpath("templates/build_prj.tcl").read_text(encoding="utf-8")
    )
    safe = "".join(ch if (ch.isascii() and ch.isalnum()) or ch == "_" else "_" for ch in info.path.name) or "edgeattn"
    subs = {
        "@MODEL@": _comment(info.model) + ("" if info.layer is None else f" layer {info.layer}"),
        "@PROJECT@": safe,
        "@TOP@": info.top,
        "@PART@": hls.part,
        "@PERIOD_NS@": f"{1000.0 / hls.clock_mhz:.3f}",
    }
    for key, value in subs.items():
        text = text.replace(key, str(value))
    return text


def _copy_templates(dst: Path) -> None:
    root = resources.files("edgeattn.fpga_hls").joinpath("templates")
    for rel in ("firmware/edgeattn_top.cpp", "firmware/edgeattn_top.h", "tb/edgeattn_tb.cpp"):
        (dst / rel).parent.mkdir(parents=True, exist_ok=True)
        (dst / rel).write_bytes(root.joinpath(rel).read_bytes())
    lib = root.joinpath("firmware/ea")
    (dst / "firmware/ea").mkdir(parents=True, exist_ok=True)
    for item in lib.iterdir():
        if item.name.endswith(".h"):
            (dst / "firmware/ea" / item.name).write_bytes(item.read_bytes())


def _write_project(
    dst: Path,
    info: ProjectInfo,
    hls,
    lps: list[G.LayerParams],
    mp: G.ModelParams | None,
    in_raw: np.ndarray,
    gold: np.ndarray,
    ref: np.ndarray,
) -> None:
    final = info.path
    info_tmp = replace(info, path=dst)
    _copy_templates(dst)
    img = build_weight_image(lps, mp, hls.mac_rows, hls.mac_cols)
    (dst / "firmware/parameters.h").write_text(_parameters_h(info_tmp, hls, lps, mp, img), encoding="ascii")
    (dst / "firmware/weights.h").write_text(_weights_h(info_tmp, lps, mp, img), encoding="ascii")
    (dst / "firmware/ea/ea_tables.h").write_text(_tables_h(info.formats), encoding="ascii")
    data = dst / "tb_data"
    data.mkdir()
    v = in_raw.shape[0]
    in_len = int(np.prod(in_raw.shape[1:]))
    out_len = int(np.prod(gold.shape[1:]))
    _write_rows(data / "tb_input.dat", in_raw, header=f"{v} {in_len} {out_len}")
    _write_rows(data / "tb_golden.dat", gold)
    _write_rows(data / "weights.dat", img.words, header=f"{img.n_words} {hls.mac_rows}")
    # %.17g: the float64 values exactly, so run_csim's error against them is the golden model's bit for bit
    _write_rows(data / "tb_float.dat", ref, fmt="%.17g")
    (dst / "build_prj.tcl").write_text(_tcl(replace(info, path=final), hls), encoding="utf-8")
    (dst / "project.json").write_text(json.dumps(info.to_json(), indent=2) + "\n", encoding="utf-8")
    (dst / "README.md").write_text(_readme(info, hls, img), encoding="utf-8")
