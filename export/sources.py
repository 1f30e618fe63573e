"""Model resolution for :func:`edgeattn.export.api.export_model`: what its ``model`` argument can be (a registry
name, a checkpoint written by ``edgeattn qat``, a path-like, an ``nn.Module``) and how it is built or loaded; the
checks that refuse, in one line and before any work, a model, checkpoint or profile an export cannot take (image
flags on a token-id model, settings a checkpoint fixes, approximations the profile does not deploy, more bits than
Q/DQ carry); the export input's shape; report.json's ``checkpoint`` section; and the token-adaptive helpers (what
stripping per-token bits costs).
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import numpy as np

from edgeattn.errors import EdgeAttnError, did_you_mean

# the targets edgeattn export writes (defined here, beside TOKEN_TARGETS, and re-exported by edgeattn.export.api)
TARGETS = ("onnx", "tensorrt", "openvino", "coreml")


def _looks_like_file(text: str) -> bool:
    return os.path.sep in text or text.endswith((".pt", ".pth", ".ckpt")) or Path(text).is_file()


def _folder_error(path: str) -> EdgeAttnError:
    """A folder given where a checkpoint file belongs (a qat run folder, most often): name the .pt files it holds."""
    # state.pt is edgeattn qat's resume state (optimizer, rng), not a model checkpoint
    names = sorted(p.name for p in Path(path).glob("*.pt") if p.is_file() and p.name != "state.pt")
    if not names:
        return EdgeAttnError(
            f"'{path}' is a folder and holds no .pt file; give a checkpoint file (edgeattn qat writes "
            "OUTPUT/model.pt)",
            exit_code=7,
        )
    example = "model.pt" if "model.pt" in names else names[0]
    return EdgeAttnError(
        f"'{path}' is a folder; give a checkpoint file such as {os.path.join(path, example)} "
        f"(it holds {', '.join(names)})",
        exit_code=7,
    )


def _refuse_nonfinite(path: str, module: Any) -> None:
    """Refuse a checkpoint whose weights or buffers (quantizer scales included) hold NaN or inf: a diverged
    run's, which would otherwise fail deep inside the exporter with a message that does not point at it."""
    from edgeattn.quant.checkpoint import nonfinite_weights

    bad = nonfinite_weights(module)
    if bad is not None:
        raise EdgeAttnError(
            f"checkpoint '{path}' holds non-finite weights ({bad}); it is from a diverged run: retrain it or export "
            "an earlier checkpoint",
            exit_code=7,
        )


def _load_ckpt(path: str) -> tuple[Any, dict[str, Any]]:
    import torch
    from edgeattn.quant.checkpoint import load_checkpoint

    if Path(path).is_dir():
        raise _folder_error(path)
    if not Path(path).is_file():
        raise EdgeAttnError(f"checkpoint '{path}' not found", exit_code=7)
    try:
        # exported in float32 whatever it was saved in; _export_model strips in-memory modules too
        module, meta = load_checkpoint(path, strip_token_adaptive=True, dtype=torch.float32)
    except EdgeAttnError as exc:
        raise EdgeAttnError(str(exc), exit_code=7) from None
    _refuse_nonfinite(path, module)
    return module, meta


def resolve_model(
    model: Any,
    checkpoint: str | None,
    profile: Any,
    model_kwargs: dict[str, Any] | None,
    seed: int = 0,
    sample_shape: tuple[int, ...] | None = None,
) -> tuple[Any, str, dict[str, Any] | None]:
    """(module in eval mode, name for the report, checkpoint meta or None).

    A registry model is built with the profile's softmax and GELU approximations (explicit ``model_kwargs``
    win) and random weights drawn from ``seed`` (the same artifact and parity figures every run; the caller's
    global torch RNG is left as it was); a trained model (checkpoint, in-memory module) keeps its own and must
    match the profile's. ``sample_shape`` is the shape of the given parity inputs, if any: it sets the export
    input of an in-memory module without ``input_size`` (:func:`_input_shape`).
    """
    model = _check_model_arg(model)
    if not isinstance(model, str):
        if checkpoint:
            raise EdgeAttnError("--checkpoint goes with a registry model name, not an in-memory module")
        if model_kwargs:  # they build a registry model; a module given in memory is exported as it was built
            raise EdgeAttnError("model_kwargs go with a registry model name, not an in-memory module")
        fix = "switch it with edgeattn.approx.set_approximations and fine-tune it"
        _check_approximations(model, profile, "the model", fix)
        module = copy.deepcopy(model).eval()  # the caller's model keeps its training flag (and everything else)
        if not is_token_model(module):
            _probe_forward(module, (1, *_input_shape(module, profile, 1, sample_shape)[1:]))
        return module, type(model).__name__, None
    from edgeattn.models import approximation_kwargs, create_model, is_language_model, list_models

    # a folder is taken for a checkpoint path unless it shares a registry model's name (e.g. an old `-o fmvit_t`)
    if _looks_like_file(model) or (Path(model).is_dir() and model not in list_models()):
        module, meta = _load_ckpt(model)
        _refuse_image_flags(str(meta.get("model", model)), module, model_kwargs)  # before the kwargs check
        _check_model_kwargs(model, module, meta, model_kwargs)
        _check_approximations(module, profile, f"checkpoint '{model}'", set_by=_kwargs_given(meta))
        return module, str(meta.get("model", model)), meta
    if model not in list_models():
        hint = did_you_mean(model, list_models())
        raise EdgeAttnError(f"unknown model '{model}'{hint}; registered models: {', '.join(list_models())}")
    if checkpoint:
        module, meta = _load_ckpt(checkpoint)
        if meta.get("model") != model:
            raise EdgeAttnError(
                f"checkpoint '{checkpoint}' is for model '{meta.get('model')}', not '{model}'", exit_code=7
            )
        _refuse_image_flags(model, module, model_kwargs)
        _check_model_kwargs(checkpoint, module, meta, model_kwargs)
        _check_approximations(module, profile, f"checkpoint '{checkpoint}'", set_by=_kwargs_given(meta))
        return module, model, meta
    if is_language_model(model):  # before building it: create_model would name 'img_size', not the flag
        _refuse_image_flags(model, None, model_kwargs)
    kwargs = {**approximation_kwargs(model, profile.approx.softmax, profile.approx.gelu), **(model_kwargs or {})}
    shape = tuple(profile.export.input_shape)
    if is_language_model(model):
        if len(shape) == 2:  # (batch, tokens): the context the profile deploys
            kwargs.setdefault("seq_len", shape[1])
    else:
        c, h, w = shape[1:4] if len(shape) == 4 else (3, 224, 224)
        if h != w and "img_size" not in kwargs:
            raise EdgeAttnError(
                f"profile '{profile.name}' gives input_shape {list(shape)}, not square: registry vision models are "
                f"built at img_size x img_size; pass --img-size, or export your own nn.Module for {h}x{w}"
            )
        kwargs.setdefault("img_size", h)
        kwargs.setdefault("in_chans", c)
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return create_model(model, **kwargs).eval(), model, None


TOKEN_TARGETS = TARGETS  # where a token-id (language) model exports: every target (Core ML takes the ids as int32)
# the integer type of the token ids each target's artifact takes: Core ML has no int64 inputs; the ONNX-based
# targets keep torch's int64 (TensorRT 10+ takes INT64 inputs and Gather indices: tensorrt_target.TENSORRT_ELEM_TYPES)
TOKEN_ID_DTYPES = {"onnx": "int64", "tensorrt": "int64", "openvino": "int64", "coreml": "int32"}


def is_token_model(module: Any | None) -> bool:
    """Whether ``module`` takes token ids: it has ``vocab_size`` and ``seq_len`` (the convention of
    ``edgeattn.models.inputs.example_input``). ``None`` stands for a registry language model not yet built."""
    return module is None or (hasattr(module, "vocab_size") and hasattr(module, "seq_len"))


def _refuse_image_flags(name: str, module: Any | None, model_kwargs: dict[str, Any] | None) -> None:
    """A token-id model has no image size: refuse ``--img-size`` in one line (exit 2) before anything is built."""
    given = [k for k in (model_kwargs or {}) if k in _MODEL_FLAGS]
    if given and is_token_model(module):
        raise EdgeAttnError(
            f"{_MODEL_FLAGS[given[0]]}: model '{name}' takes no image size (a language model: its input is token ids)"
        )


def _refuse_unsupported_input(name: str, module: Any, target: str) -> None:
    """Refuse, in one line with exit code 2, an input edgeattn export cannot handle for ``target``: token ids
    for a target not in :data:`TOKEN_TARGETS`, and an ``input_size`` that is neither token ids nor (C, H, W)."""
    if is_token_model(module):
        if target not in TOKEN_TARGETS:
            raise EdgeAttnError(
                f"'{name}' takes token ids: edgeattn export handles token-id models for "
                f"{' and '.join(TOKEN_TARGETS)}, not {target} yet"
            )
        return
    size = getattr(module, "input_size", None)
    if size is not None and len(tuple(size)) != 3:
        raise EdgeAttnError(
            f"edgeattn export handles vision models with (B, C, H, W) inputs and token-id models; '{name}' takes "
            f"input_size {tuple(size)}"
        )


def _probe_forward(module: Any, shape: tuple[int, ...]) -> None:
    """Run an in-memory module once on zeros of the export input's shape, so that a module that cannot take
    (B, C, H, W) floats (a language model without ``input_size``) is refused in one line, not deep in PTQ."""
    import torch

    try:
        with torch.no_grad():
            out = module(torch.zeros(shape))
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise EdgeAttnError(
            f"the model cannot run on the export input, float32 {list(shape)} ({first}); edgeattn export handles "
            "vision models with (B, C, H, W) float inputs: give the module an input_size (C, H, W), pass "
            "inputs= of the shape it takes, or pass a profile whose export.input_shape it takes"
        ) from None
    from edgeattn.export.parity import require_tensor_output

    require_tensor_output(out)


def _check_model_arg(model: Any) -> Any:
    """``model`` as resolve_model takes it (a path-like becomes its string); one line for anything that is
    neither a registry name, a checkpoint path nor an ``nn.Module``."""
    import torch

    if isinstance(model, os.PathLike):
        return os.fspath(model)
    if not isinstance(model, (str, torch.nn.Module)):
        raise EdgeAttnError(
            f"model must be a registry model name, a checkpoint path or a torch nn.Module, got {type(model).__name__}"
        )
    return model


# model_kwargs the CLI sets, by the flag that sets them
_MODEL_FLAGS = {"img_size": "--img-size"}


def _check_model_kwargs(path: str, module: Any, meta: dict[str, Any], model_kwargs: dict[str, Any] | None) -> None:
    """Refuse a model-building setting (``--img-size``, ``model_kwargs``) that a checkpoint already fixes to
    another value: the checkpoint is rebuilt as it was trained, so the setting would be silently ignored."""
    fixed = dict(meta.get("model_kwargs") or {})
    size = getattr(module, "input_size", None)
    if size is not None and len(tuple(size)) == 3:
        fixed.setdefault("in_chans", int(size[0]))
        fixed.setdefault("img_size", int(size[1]))
    for key, value in (model_kwargs or {}).items():
        if key in fixed and fixed[key] == value:
            continue
        flag = f"{_MODEL_FLAGS[key]} {value}" if key in _MODEL_FLAGS else f"model_kwargs {key}={value!r}"
        has = f"{key} {fixed[key]!r}" if key in fixed else f"its own {key}"
        raise EdgeAttnError(
            f"{flag} cannot apply to checkpoint '{path}': the model is rebuilt as it was trained, with {has}; "
            "leave it out"
        )


def _kwargs_given(meta: dict[str, Any]) -> dict[str, Any]:
    """The checkpoint's ``model_kwargs`` its maker chose: those ``meta["model_kwargs_given"]`` names (``edgeattn
    qat`` adds the data's settings and its profile's softmax/GELU to the ones its config gave), else all of them."""
    kwargs = dict(meta.get("model_kwargs") or {})
    given = meta.get("model_kwargs_given")
    return kwargs if given is None else {k: v for k, v in kwargs.items() if k in given}


def _check_approximations(
    module: Any, profile: Any, what: str, fix: str = "", set_by: dict[str, Any] | None = None
) -> None:
    """Refuse a trained model whose softmax or GELU approximation is not the one the profile deploys: its weights
    were fitted to the one it has, so it is not swapped behind the user's back. ``set_by`` is a checkpoint's
    ``meta["model_kwargs"]``: where an entry of it chose the method, the message names that entry, since
    fine-tuning with the profile would not help while the entry is set (explicit model_kwargs win)."""
    from edgeattn.approx import approximations_in

    wanted = {"softmax": profile.approx.softmax, "gelu": profile.approx.gelu}
    found = approximations_in(module)
    differ = {op: ", ".join(sorted(m)) for op, m in found.items() if m and m != {wanted[op]}}
    if not differ:
        return
    op, have = next(iter(differ.items()))
    # the model_kwargs entries that chose a differing method (every one: fixing one would only reveal the next)
    entries = {k: v for k, v in (set_by or {}).items() if k in differ and isinstance(v, str) and v in found[k]}
    if entries and not fix:
        named = ", ".join(f"{k}: {v}" for k, v in entries.items())
        approx = " and ".join(f"approx.{k} {v}" for k, v in entries.items())
        why = (
            f"the checkpoint's model_kwargs set {named} (meta['model_kwargs'], which wins over the qat profile's "
            f"approx), so its qat run must not set {'them' if len(entries) > 1 else 'it'}, or must use a profile "
            f"with {approx}; or export with such a profile"
        )
    else:
        why = fix or f"fine-tune it with that profile (edgeattn qat --profile {profile.name})"
        why += f", or use a profile whose approx.{op} is {have}"
    raise EdgeAttnError(
        f"{what} computes {op} with {have}, but profile '{profile.name}' deploys {op} '{wanted[op]}': {why}"
    )


# what report.json's ``checkpoint.quant`` copies from a checkpoint's QuantConfig (meta["quant"])
_CKPT_QUANT_KEYS = (
    "weight_bits",
    "act_bits",
    "kv_max_bits",
    "weight_max_bits",
    "preset",
    "quantize_linear",
    "quantize_attention",
    "overrides",
    "float_layers",
    "token_adaptive",
)


def _checkpoint_section(
    model: Any, checkpoint: str | None, module: Any, meta: dict[str, Any] | None, prof: Any, stripped: bool
) -> dict[str, Any] | None:
    """report.json's ``checkpoint``: what a trained model (a checkpoint or an in-memory module) holds, and
    whether the profile's ``quant`` applies to it. None for a registry model built here."""
    from edgeattn.export.onnx_export import is_quantized
    from edgeattn.quant.quantize import held_bits

    path = checkpoint or (model if isinstance(model, str) and meta is not None else None)
    if path is None and isinstance(model, str):
        return None
    quantized = is_quantized(module)
    cfg = (meta or {}).get("quant")
    if not quantized:
        quant: Any = "float"
    elif cfg:
        quant = {k: cfg.get(k) for k in _CKPT_QUANT_KEYS}
    else:
        quant = None  # an in-memory quantized module: no config to show, only its bits
    section = {
        "path": str(path) if path is not None else None,
        "module": None if path is not None else type(module).__name__,
        "quant": quant,
        "token_adaptive_stripped": stripped,
        "exported_bits": held_bits(module) if quantized else None,
        "profile_quant_applied": False,  # True once PTQ quantized a float model with the profile's quant
    }
    if stripped:  # how far stripping moved the outputs: measured on the parity inputs by _export_model
        section["token_adaptive_gap"] = None
    section["note"] = _checkpoint_note(section, prof) if quantized else ""
    return section


def _checkpoint_note(section: dict[str, Any], prof: Any) -> str:
    """The one line that says a quantized model is exported as trained, and where its bits differ from the
    profile's ``quant``."""
    what = f"checkpoint '{section['path']}'" if section["path"] else f"module {section['module']}"
    bits = section["exported_bits"]
    held = ", ".join(f"{k} {'/'.join(map(str, v))}" for k, v in bits.items() if v)
    line = (
        f"{what} is quantized ({held} bits): its own quantizers are exported as trained; the profile's quant "
        "section applies only to PTQ of float models"
    )
    pq = prof.quant
    want = {"weight": [pq.weight_bits], "activation": [pq.act_bits], "kv": [min(pq.act_bits, pq.kv_max_bits or 99)]}
    differ = [f"{k} {'/'.join(map(str, bits[k]))} vs {want[k][0]}" for k in want if bits[k] and bits[k] != want[k]]
    if differ:
        line += f"; its bits differ from profile '{prof.name}' ({', '.join(differ)})"
    return line


# the widest integer a QCDQ graph carries: QuantizeLinear/DequantizeLinear are int8/uint8 (brevitas' ONNX export
# refuses more, after PTQ has run)
QCDQ_MAX_BITS = 8


def _refuse_wide_profile_bits(target: str, prof: Any) -> None:
    """Refuse (exit 2, before calibration) a profile whose ``quant`` asks PTQ for more bits than an ONNX-based
    target's Q/DQ carry."""
    if target == "coreml":
        return
    for key in ("weight_bits", "act_bits"):
        bits = getattr(prof.quant, key)
        if bits > QCDQ_MAX_BITS:
            raise EdgeAttnError(
                f"profile '{prof.name}': quant.{key} is {bits}, but the {target} export carries 2 to "
                f"{QCDQ_MAX_BITS} bits (int8 QuantizeLinear/DequantizeLinear); set quant.{key} to {QCDQ_MAX_BITS} "
                "or less"
            )


def _refuse_wide_model_bits(target: str, section: dict[str, Any]) -> None:
    """Refuse (exit 2) a quantized model whose own quantizers hold more bits than an ONNX-based target's Q/DQ
    carry (``section``: report.json's ``checkpoint``, whose ``exported_bits`` lists them)."""
    bits = section.get("exported_bits") or {}
    wide = {k: [b for b in v if b > QCDQ_MAX_BITS] for k, v in bits.items()}
    wide = {k: v for k, v in wide.items() if v}
    if target == "coreml" or not wide:
        return
    what = f"checkpoint '{section['path']}'" if section["path"] else f"module {section['module']}"
    held = " and ".join(f"{'/'.join(map(str, v))}-bit {k}" for k, v in wide.items())
    raise EdgeAttnError(
        f"{what} holds {held} quantizers, but the {target} export carries 2 to {QCDQ_MAX_BITS} bits (int8 "
        f"QuantizeLinear/DequantizeLinear); quantize it with at most {QCDQ_MAX_BITS} bits (quant weight_bits, "
        "act_bits and overrides)"
    )


def _token_adaptive_gap(adaptive: Any, x: np.ndarray, stripped_ref: np.ndarray) -> dict[str, Any]:
    """How far stripping token-adaptive bits moves the outputs, in the gate's figures: the trained (adaptive)
    model on the parity inputs ``x`` is the reference, the stripped model's outputs ``stripped_ref`` are compared
    with it. Reported only, never gated: the artifact is the stripped model."""
    from edgeattn.export.parity import _metrics, reference_outputs

    m = _metrics(reference_outputs(adaptive, x), stripped_ref)
    return {k: m[k] for k in ("max_abs_rel_range", "cosine", "top1")} | {"n_inputs": len(x)}


def _load_adaptive(path: str) -> Any:
    """The token-adaptive checkpoint ``path`` as trained (not stripped); raises EdgeAttnError for a file that
    loads only stripped (token-adaptive, from before pooled-key scores)."""
    import torch
    from edgeattn.quant.checkpoint import load_checkpoint

    return load_checkpoint(path, dtype=torch.float32)[0]


def _is_float_source(model: Any, checkpoint: str | None) -> bool:
    """Whether ``model`` is certainly a float model before it is resolved: a registry name built here (no
    checkpoint) or an in-memory module without quantizers. A checkpoint file is known only once loaded."""
    if isinstance(model, str):
        from edgeattn.models import list_models

        return checkpoint is None and model in list_models() and not Path(model).is_file()
    from edgeattn.export.onnx_export import is_quantized

    return not is_quantized(model)


def _gap_line(gap: dict[str, Any] | None, problem: str) -> str:
    """The tail of the stripping note: what stripping cost on the parity inputs, or why it was not measured."""
    if gap is None:
        return f"; what stripping costs was not measured ({problem})"
    return (
        f"; against the token-adaptive model as trained, the stripped one is off by max {gap['max_abs_rel_range']:.3g}"
        f" of the range, cosine {gap['cosine']:.4f}, top-1 agreement {gap['top1']:.3f} on the {gap['n_inputs']} "
        "parity inputs (checkpoint.token_adaptive_gap; the QAT top-1 is the adaptive model's)"
    )


def _input_shape(
    model: Any, profile: Any, batch: int | None, sample_shape: tuple[int, ...] | None = None
) -> tuple[int, ...]:
    """The export input's shape: ``(batch, *input_size)``; for a model without ``input_size``,
    ``(batch, *sample_shape[1:])`` when parity inputs were given, ``(batch, seq_len)`` for a token-id model, else
    the profile's ``export.input_shape``. ``batch`` overrides the first dimension of any of them."""
    size = getattr(model, "input_size", None)
    if size is None and sample_shape is not None:
        size = tuple(sample_shape[1:])
    elif size is None and is_token_model(model):
        size = (int(model.seq_len),)
    base = tuple(profile.export.input_shape)
    rest = tuple(size) if size is not None else base[1:]
    return (batch or base[0], *rest)
