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
leaves a partial project behind. This module resolves the model and profile, runs the golden model and the gate
(:func:`generate_project`); :mod:`edgeattn.fpga_hls.project_files` writes the files.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from edgeattn.fpga_hls import golden as G
from edgeattn.fpga_hls.estimate import LayerShape, attn_slots, estimate, layernorm_widths
from edgeattn.fpga_hls.extract import (
    SUPPORTED_SHAPE,
    check_vit,
    layer_params,
    model_params,
    requantized_weights,
)
from edgeattn.fpga_hls.gate import DEFAULT_TOLERANCE, gate_result, resolve_tolerance
from edgeattn.fpga_hls.project_files import write_project
from edgeattn.fpga_hls.vectors import vector_images

from edgeattn.atomic import replaceable_dir, staging_dir
from edgeattn.errors import EdgeAttnError
from edgeattn.hostinfo import MAX_SEED
from edgeattn.models import eval_mode

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
    without touching the caller's random state, so the same call gives the same project every time. A given
    module is returned as it is (not copied): callers run it under :func:`~edgeattn.models.eval_mode`."""
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


def _refuse_nonfinite(net: Any, name: str) -> None:
    """EdgeAttnError when ``net``'s weights or buffers hold NaN or inf (a diverged run's): no fixed-point width
    can hold them, so no profile change helps."""
    from edgeattn.quant.checkpoint import nonfinite_weights

    bad = nonfinite_weights(net)
    if bad is not None:
        raise EdgeAttnError(f"{name} holds non-finite weights ({bad}); no fixed-point type can hold NaN or inf")


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
    supported ViT, ``layer`` is one of its encoder layers (or ``None``), and ``attn_parallel`` (when given)
    overrides the profile's. The model's training flags are left alone."""
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
    check_vit(net, name)
    depth = len(net.blocks)
    if depth == 0:
        raise EdgeAttnError(f"{name} has no encoder layers")
    if layer is not None and not 0 <= layer < depth:
        raise EdgeAttnError(f"layer {layer} does not exist: {name} has encoder layers 0..{depth - 1}")
    return net, name, prof, hls


def profile_label(profile: Any, prof: Any) -> str:
    """How error lines name the profile: ``profile 'zcu102-hls'`` for a shipped one or a DeviceProfile, the file
    for one read from a path (``my.yaml (profile 'zcu102-hls')``), so that a copy's mistake is not laid at the
    shipped profile's door."""
    from edgeattn.device_profile import names_a_file

    if isinstance(profile, str | Path) and names_a_file(profile):
        return f"{profile} (profile '{prof.name}')"
    return f"profile '{prof.name}'"


def check_formats(fmt: G.HLSFormats, shape: LayerShape, where: str, profile: bool) -> None:
    """EdgeAttnError starting with ``where`` when the templates cannot take ``fmt`` for ``shape``: a field out of range
    (:meth:`~.golden.HLSFormats.check`, naming the profile's fields if ``profile``) or a LayerNorm too wide for the
    64-bit divide constants (:func:`~.estimate.layernorm_widths`, cached: the project reuses it)."""
    try:
        fmt.check(head_dim=shape.dim // shape.heads, profile=profile)
        layernorm_widths(fmt, shape.dim, shape.ln_eps)
    except ValueError as exc:
        raise EdgeAttnError(f"{where}: {exc}") from None


def model_shape(net: Any, layer: int | None, name: str = "model") -> LayerShape:
    """The sizes the accelerator is built for: encoder layer ``layer`` of ``net``, or (``None``) the whole ViT.

    Raises EdgeAttnError (naming ``name``) when the LayerNorms it holds differ in eps: the templates build one
    LayerNorm, its widths derived from one eps.
    """
    from edgeattn.models.edge_moe_vit import MoEMlp

    blocks = list(net.blocks) if layer is None else [net.blocks[layer]]
    attn = blocks[0].attn
    moe = [b.mlp for b in blocks if isinstance(b.mlp, MoEMlp)]
    first_mlp = moe[0].experts[0] if moe else blocks[0].mlp
    norms = [n for b in blocks for n in (b.norm1, b.norm2)] + ([net.norm] if layer is None else [])
    eps = {float(n.eps) for n in norms}
    if len(eps) > 1:
        raise EdgeAttnError(f"{name}: all LayerNorms must share one eps for the templates, got {sorted(eps)}")
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
        ln_eps=eps.pop(),
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


def _check_tolerance(tolerance: Any) -> None:
    """EdgeAttnError unless ``tolerance`` is ``None`` or a mapping with only the gate's keys (a misspelt key
    would otherwise be ignored and the default bound used), each ``None`` or a bound in the gate's range."""
    if tolerance is None:
        return
    if not isinstance(tolerance, Mapping):
        raise EdgeAttnError(f"tolerance must be a dict, got {type(tolerance).__name__}")
    unknown = sorted(str(k) for k in tolerance if k not in DEFAULT_TOLERANCE)
    if unknown:
        raise EdgeAttnError(
            f"tolerance: unknown key(s) {', '.join(map(repr, unknown))}; allowed: {', '.join(DEFAULT_TOLERANCE)}"
        )
    resolve_tolerance(None, **tolerance, names={key: f"tolerance[{key!r}]" for key in DEFAULT_TOLERANCE})


def as_path(value: Any, name: str) -> Path:
    """``value`` as a Path; EdgeAttnError naming the argument ``name`` unless it is a str or os.PathLike."""
    if not isinstance(value, str | os.PathLike) or isinstance(os.fspath(value), bytes):
        raise EdgeAttnError(f"{name} must be a path (str or os.PathLike), got {value!r} ({type(value).__name__})")
    return Path(value)


def _check_args(force: Any, model_name: Any, check: Any) -> None:
    """EdgeAttnError naming the first of these :func:`generate_project` arguments whose type is wrong."""
    if not isinstance(force, bool | np.bool_):  # as export_model: "yes" or 1 is not a meant replace
        raise EdgeAttnError(f"force must be True or False, got {force!r} ({type(force).__name__})")
    if model_name is not None and not isinstance(model_name, str):
        raise EdgeAttnError(f"model_name must be a string or None, got {model_name!r} ({type(model_name).__name__})")
    if check is not None and not callable(check):
        raise EdgeAttnError(f"check must be a callable taking the project folder, or None, got {check!r}")


def _check_vectors(vectors: Any) -> None:
    """EdgeAttnError unless ``vectors`` is an integer in 1..MAX_N_INPUTS: ``edgeattn export``'s bound on its
    parity inputs, as the test vectors (and their outputs) are held in memory at once too."""
    from edgeattn.export.api import MAX_N_INPUTS

    if not _is_int(vectors) or vectors < 1:
        raise EdgeAttnError(f"vectors must be an integer >= 1, got {vectors!r}")
    if vectors > MAX_N_INPUTS:
        raise EdgeAttnError(f"vectors must be <= {MAX_N_INPUTS} (--vectors), got {vectors}")


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
        model: a registry name (``vit_tiny``, ``edge_moe_vit``) or a model instance of that shape (run in eval
            mode; every module gets its own training flag back). Its weights (finite: NaN or inf is refused) are
            quantized to the profile's widths; a brevitas-quantized model's quantized weights (``quant_weight()``)
            are, not its float master weights; ``reference`` says what the golden model is compared with
            (``ProjectInfo.reference`` says it in words).
        profile: a device profile (name, path or :class:`~edgeattn.device_profile.DeviceProfile`) with an
            ``hls`` section.
        out_dir: project folder (a str or os.PathLike); must not exist unless ``force``.
        layer: which encoder layer becomes ``encoder_layer_top``; ``None`` builds ``vit_top`` for the model.
        vectors: number of test vectors (images through the model), 1 to
            :data:`edgeattn.export.api.MAX_N_INPUTS` (as ``edgeattn export``'s parity inputs).
        seed: seed of the random test images, and of a registry model's weights when ``model`` is a name.
        attn_parallel: query rows in flight (default: the profile's ``hls.attn_parallel``); more than the model's
            tokens is clamped to the token count (a slot beyond it could never be busy), and both figures are
            recorded (``estimate["parallelism"]``: ``attn_parallel``, ``attn_parallel_requested``).
        formats: override the profile's widths (for width sweeps).
        force: replace an existing ``out_dir`` (True or False).
        model_name: name recorded in the project (default: the registry name or class name).
        check: called with the staged project folder once it is complete, before it replaces ``out_dir``
            (e.g. the C simulation): if it raises (or is interrupted), nothing is published and an existing
            ``out_dir`` is left as it was.
        vectors_from: ``"random"`` (standard-normal images from ``seed``) or ``"data"``: validation images of
            the data ``meta`` (an ``edgeattn qat`` checkpoint's) records, else digits (:mod:`.vectors`).
        meta: the ``edgeattn qat`` checkpoint meta of ``model``, for ``vectors_from="data"``.
        tolerance: the accuracy gate's bounds, ``{"max_abs": fraction of the output range (> 0), "min_cosine":
            in [-1, 1]}`` (numbers; either may be left out or ``None``:
            :data:`~edgeattn.fpga_hls.gate.DEFAULT_TOLERANCE`). A failed gate does not raise: the project is
            written and ``ProjectInfo.gate["passed"]`` is False (the CLI exits 1).
        reference: for a brevitas-quantized model, ``"design"`` (default): its quantized weights with float
            activations, the arithmetic the design implements; ``"checkpoint"``: its fake-quant model with the
            activation quantizers on, as trained (the total deviation from it). A float model is the reference
            either way.

    Raises:
        EdgeAttnError: an argument of the wrong type or out of range (before any work), unsupported model
            shape, non-finite weights, weights or activations that overflow the declared widths, an existing
            ``out_dir`` without ``force``.
    """
    out_dir = as_path(out_dir, "out_dir")
    _check_args(force, model_name, check)
    replaceable_dir(out_dir)  # not '.', a folder above it, or a file: fail before any work
    if out_dir.exists() and not force:
        raise EdgeAttnError(f"{out_dir} already exists; pass --force to replace it")
    _check_vectors(vectors)
    if not _is_int(seed) or not 0 <= seed <= MAX_SEED:
        raise EdgeAttnError(f"seed must be an integer in 0..{MAX_SEED}, got {seed!r}")
    _check_tolerance(tolerance)
    if formats is not None and not isinstance(formats, G.HLSFormats):
        raise EdgeAttnError(f"formats must be an HLSFormats, got {type(formats).__name__}")
    check_reference(reference)
    net, default_name, prof, hls = _resolve_target(model, profile, layer, attn_parallel, seed)
    name = model_name or default_name
    _refuse_nonfinite(net, name)
    tol = resolve_tolerance(hls, (tolerance or {}).get("max_abs"), (tolerance or {}).get("min_cosine"))
    fmt = formats or G.HLSFormats.from_profile(hls)
    shape = model_shape(net, layer, name)
    check_formats(fmt, shape, "formats" if formats is not None else profile_label(profile, prof), formats is None)

    part = net if layer is None else net.blocks[layer]
    # the model runs in eval mode and the caller's gets every module's own training flag back (a brevitas
    # weight quantizer called in training mode may also update its state)
    with eval_mode(net):
        # the parameters the hardware holds, quantized to the profile's widths
        mp: G.ModelParams | None = model_params(net, fmt) if layer is None else None
        lps = mp.layers if mp is not None else [layer_params(net.blocks[layer], fmt, f"blocks.{layer}")]
        _check_uniform(lps, name)
        requantized = requantized_weights(part, fmt)

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

    est = estimate(shape, hls, fmt)
    requested = hls.attn_parallel
    hls = hls.model_copy(update={"attn_parallel": attn_slots(shape, hls)})  # what the design builds
    top = "vit_top" if layer is None else "encoder_layer_top"
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
    if requantized["tensors"]:  # a brevitas-quantized model
        info.stats["quant_weights"] = requantized

    with staging_dir(out_dir, replace=force) as tmp:
        write_project(tmp, info, hls, lps, mp, in_raw, gold, ref)
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
