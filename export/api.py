"""``export_model``: one export run (model -> deploy form -> artifact -> parity gate -> report.json).

Everything is built in a temporary directory next to ``out_dir`` and renamed into place at the end, so a
failed run leaves nothing half-written; a run whose parity gate fails still writes its artifact, under a
name containing ``FAILED_PARITY``, and its report, then raises :class:`ParityFailure` (exit code 3). A TensorRT
lint error writes the report alone (every finding in ``lint``, no artifact) and raises :class:`LintFailure` (exit 5).
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import math
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from edgeattn.export.report import ExportReport, LintFailure, ParityFailure, environment, write_report

from edgeattn.atomic import OutputTakenError, replaceable_dir, staging_dir
from edgeattn.errors import EdgeAttnError
from edgeattn.hostinfo import MAX_THREADS

__all__ = ["DEFAULT_PROFILES", "MAX_N_INPUTS", "MAX_THREADS", "TARGETS", "export_all", "export_model", "resolve_model"]

TARGETS = ("onnx", "tensorrt", "openvino", "coreml")
FAILED_TAG = "FAILED_PARITY"
# OpenVINO's INFERENCE_PRECISION_HINT -> the float precision it computes in ("auto" is f32 on CPUs without
# native bf16 and bf16 on the others: the wider noise floor is the safe side)
_OV_COMPUTE = {"f32": "fp32", "f16": "fp16", "bf16": "bf16", "auto": "bf16"}
# the profile each target uses in export_all unless told otherwise. ONNX Runtime and OpenVINO run their parity
# checks on this machine's CPU, so they get host-cpu: 8-bit on a VNNI CPU, 7-bit weights and K/V on one without
# (whose int8 kernels saturate with 8 bits)
DEFAULT_PROFILES = {
    "onnx": "host-cpu",
    "tensorrt": "jetson-orin-trt10",
    "openvino": "host-cpu",
    "coreml": "apple-a17-coreml",
}

# parity inputs, and every runtime's outputs for them, are held in memory at once: a gate needs tens, and
# 100 million token windows asked numpy for 47.7 GiB
MAX_N_INPUTS = 4096


def _check_counts(n_inputs: int, threads: int) -> None:
    """Refuse ``--n-inputs`` and ``--threads`` outside their bounds, before any work (exit code 2)."""
    for flag, value, top in (("--n-inputs", n_inputs, MAX_N_INPUTS), ("--threads", threads, MAX_THREADS)):
        if value < 1:
            raise EdgeAttnError(f"{flag} must be >= 1, got {value}")
        if value > top:
            raise EdgeAttnError(f"{flag} must be <= {top}, got {value}")


# ----------------------------------------------------------------------------------------------------------
# model resolution
# ----------------------------------------------------------------------------------------------------------
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
    from edgeattn.quant.checkpoint import load_checkpoint

    if Path(path).is_dir():
        raise _folder_error(path)
    if not Path(path).is_file():
        raise EdgeAttnError(f"checkpoint '{path}' not found", exit_code=7)
    try:
        module, meta = load_checkpoint(path, strip_token_adaptive=True)  # _export_model strips in-memory modules too
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
        _check_approximations(module, profile, f"checkpoint '{model}'", set_by=meta.get("model_kwargs"))
        return module, str(meta.get("model", model)), meta
    if model not in list_models():
        raise EdgeAttnError(f"unknown model '{model}'; registered models: {', '.join(list_models())}")
    if checkpoint:
        module, meta = _load_ckpt(checkpoint)
        if meta.get("model") != model:
            raise EdgeAttnError(
                f"checkpoint '{checkpoint}' is for model '{meta.get('model')}', not '{model}'", exit_code=7
            )
        _refuse_image_flags(model, module, model_kwargs)
        _check_model_kwargs(checkpoint, module, meta, model_kwargs)
        _check_approximations(module, profile, f"checkpoint '{checkpoint}'", set_by=meta.get("model_kwargs"))
        return module, model, meta
    if is_language_model(model):  # before building it: create_model would name 'img_size', not the flag
        _refuse_image_flags(model, None, model_kwargs)
    kwargs = {**approximation_kwargs(model, profile.approx.softmax, profile.approx.gelu), **(model_kwargs or {})}
    if not is_language_model(model):
        c, h, _ = profile.export.input_shape[1:4] if len(profile.export.input_shape) == 4 else (3, 224, 224)
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
    from edgeattn.quant.checkpoint import load_checkpoint

    return load_checkpoint(path)[0]


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


def _check_batch_fits(
    target: str,
    profile: Any,
    batch: int | None,
    dynamic_batch: bool | None,
    n_inputs: int,
    inputs: np.ndarray | None,
) -> None:
    """Refuse, before any work, parity inputs that cannot fill one static batch of the exported model.

    A static-batch artifact runs whole batches only, and the first batch is the tracing example.
    """
    b = batch or profile.export.input_shape[0]
    dyn = profile.export.dynamic_batch if dynamic_batch is None else dynamic_batch
    if dyn and target != "coreml":  # Core ML exports a static batch always
        return
    n = n_inputs if inputs is None else min(n_inputs, len(inputs))
    if n < b:
        hint = "" if target == "coreml" else ", or --dynamic-batch"
        raise EdgeAttnError(
            f"{n} parity input(s) cannot fill one static batch of {b}: pass --n-inputs {b} or more{hint}"
        )


def _refuse_coreml_flags(opset: int | None, exporter: str, dynamic_batch: bool | None) -> None:
    """Refuse the flags Core ML does not honour: it converts the traced torch model with coremltools (no ONNX,
    so no opset or ONNX exporter) into a package with a static batch (``--batch`` sets it)."""
    if opset is not None:
        raise EdgeAttnError("--opset applies to --target onnx, tensorrt or openvino only, not coreml")
    if exporter != "torchscript":
        raise EdgeAttnError(f"--exporter {exporter} applies to --target onnx, tensorrt or openvino only, not coreml")
    if dynamic_batch:
        raise EdgeAttnError("--dynamic-batch does not apply to --target coreml (a static batch; set it with --batch)")


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


def _parity_inputs(
    shape: tuple[int, ...],
    n: int,
    meta: dict[str, Any] | None,
    seed: int,
    given: np.ndarray | None,
    vocab: int | None = None,
) -> tuple[np.ndarray, dict[str, int]]:
    """``n`` inputs: random normal, half replaced by real samples when the checkpoint names its data.

    A token-id model (``vocab`` set) gets int64 ids: uniform in ``[0, vocab)``, half replaced by windows of the
    standard library's source text (byte ids, the corpus edgeattn's language models train on) when the vocabulary
    holds every byte.
    """
    rng = np.random.default_rng(seed)
    if vocab is not None:
        if given is not None:
            ids = np.asarray(given)
            if ids.dtype.kind not in "iu" or ids.size == 0 or ids.min() < 0 or ids.max() >= vocab:
                raise EdgeAttnError(f"inputs: token ids must be integers in [0, {vocab}) for this model")
            return ids.astype(np.int64)[:n], {"random": 0, "real": 0, "given": min(n, len(ids))}
        x = rng.integers(0, vocab, (n, *shape[1:]), dtype=np.int64)
        real = _own_data(meta, shape, "val")  # the user's text file the checkpoint was trained on
        if real is None and vocab >= 256:
            from edgeattn.data import stdlib_corpus

            real = stdlib_corpus(seq_len=shape[1], split="val", seed=0).tensors[0]
        return _with_real(x, real)
    if given is not None:
        x = np.asarray(given, np.float32)[:n]
        return x, {"random": 0, "real": 0, "given": len(x)}
    x = rng.standard_normal((n, *shape[1:])).astype(np.float32)
    data = (meta or {}).get("data") or (meta or {}).get("dataset")
    name = data.get("name") if isinstance(data, dict) else data
    real = _own_data(meta, shape, "val")  # the user's image folder the checkpoint was trained on
    if real is None and name == "digits" and len(shape) == 4:
        from edgeattn.data import digits_dataset

        real = digits_dataset(img_size=shape[2], in_chans=shape[1], split="val", seed=0).tensors[0]
    return _with_real(x, real)


def _with_real(x: np.ndarray, real: Any) -> tuple[np.ndarray, dict[str, int]]:
    """``x`` with its first half replaced by the leading ``real`` samples (a tensor, or None for none), and the
    counts of each kind."""
    n = len(x)
    if real is None:
        return x, {"random": n, "real": 0}
    part = real[: n // 2].numpy()
    x[: len(part)] = part
    return x, {"random": n - len(part), "real": len(part)}


def _own_data(meta: dict[str, Any] | None, shape: tuple[int, ...], split: str) -> Any:
    """Samples of ``split`` from the user's own image folder or text file that the checkpoint was trained on
    (``meta["data_path"]``, written by ``edgeattn qat``), prepared as training prepared them (images resampled as
    ``meta["resize"]`` records: :func:`edgeattn.data.checkpoint_samples`); ``None`` for the shipped data sets, when
    the data is gone or no longer what the checkpoint was trained on (its recorded classes and content fingerprint:
    :func:`edgeattn.data.checkpoint_data_problem`), or when its sample shape is not the export's."""
    if not (meta or {}).get("data_path"):
        return None
    from edgeattn.data import checkpoint_samples

    samples = checkpoint_samples(meta, split)
    if samples is None or tuple(samples.shape[1:]) != tuple(shape[1:]) or len(samples) == 0:
        return None
    return samples


def _own_data_notes(
    meta: dict[str, Any] | None, counts: dict[str, int], shape: tuple[int, ...], vocab: int | None, ptq: bool
) -> list[str]:
    """Report notes on the user's own data a checkpoint records (``meta["data_path"]``): how many parity inputs
    and (``ptq``: a PTQ calibrated without given inputs) the calibration came from it, or, when it cannot stand
    for the training data (gone, or changed since: :func:`edgeattn.data.checkpoint_data_problem`), one note saying
    why and what stood in for it. Empty when the checkpoint names no such data or parity inputs were given."""
    path = (meta or {}).get("data_path")
    if not path or "given" in counts:
        return []
    from edgeattn.data import LEGACY_RESIZE, checkpoint_data_problem

    if vocab is not None:
        kind, stand_in = "text windows", "standard-library text" if vocab >= 256 else "random ids"
    else:
        kind = f"images (resize {(meta or {}).get('resize', LEGACY_RESIZE)})"
        stand_in = "digits images" if len(shape) == 4 else "random inputs"
    problem = checkpoint_data_problem(meta or {})
    if counts["real"] and problem is None:
        notes = [f"parity: {counts['real']} of the inputs are validation {kind} of the checkpoint's data '{path}'"]
        return notes + ([f"PTQ calibrated on training {kind} of the checkpoint's data '{path}'"] if ptq else [])
    parity = f"{counts['random']} random inputs" + (f" and {counts['real']} {stand_in}" if counts["real"] else "")
    why = problem or "gives no inputs of the model's shape"
    calib = f" and PTQ calibrated on {stand_in}" if ptq else ""
    return [f"the checkpoint's data '{path}' {why}: parity ran on {parity}{calib} instead of its own samples"]


def _calibration_batches(
    shape: tuple[int, ...], calib_inputs: Any, seed: int, vocab: int | None = None, meta: dict | None = None
) -> list[Any]:
    """PTQ calibration inputs: ``calib_inputs``, else the user's own data the checkpoint was trained on, else
    digits images (vision) or standard-library text windows (a token-id model whose vocabulary holds every byte;
    random ids otherwise)."""
    import torch

    if calib_inputs is not None:
        dtype = np.int64 if vocab is not None else np.float32
        return [torch.as_tensor(np.asarray(calib_inputs, dtype))]
    own = _own_data(meta, shape, "train")
    if own is not None:
        return [own[:64]]
    gen = torch.Generator().manual_seed(seed)
    if vocab is not None:
        if vocab < 256:
            return [torch.randint(0, vocab, (16, *shape[1:]), generator=gen)]
        from edgeattn.data import stdlib_corpus

        return [stdlib_corpus(seq_len=shape[1], split="train", seed=seed).tensors[0][:64]]
    from edgeattn.data import digits_dataset

    if len(shape) == 4:
        ds = digits_dataset(img_size=shape[2], in_chans=shape[1], split="train", seed=seed)
        return [ds.tensors[0][:64]]
    return [torch.randn(16, *shape[1:], generator=gen)]


# what each export_model argument must be, when called from Python (typer hands the CLI's values over typed)
_ARG_KINDS = {
    "target": (str, False),
    "precision": (str, True),
    "checkpoint": (str, True),
    "opset": (int, True),
    "batch": (int, True),
    "dynamic_batch": (bool, True),
    "atol": (float, True),
    "force": (bool, False),
    "n_inputs": (int, False),
    "model_kwargs": (dict, True),
    "exporter": (str, False),
    "cpu_isa": (str, True),
    "threads": (int, False),
    "seed": (int, False),
    "torch_threads": (int, True),
    "noise_floor": (bool, False),
}
_KIND_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "True or False", dict: "a dict"}


def _kind_ok(value: Any, kind: type) -> bool:
    if kind is int:  # numpy integers count; bools do not (True is not a batch size)
        return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))
    if kind is float:
        return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))
    if kind is bool:
        return isinstance(value, (bool, np.bool_))
    return isinstance(value, kind)


def _check_arg_types(args: dict[str, Any]) -> None:
    """Refuse an argument of the wrong type in one line that names it, before any work."""
    for name, value in args.items():
        if name not in _ARG_KINDS:
            continue
        kind, optional = _ARG_KINDS[name]
        if (value is None and optional) or _kind_ok(value, kind):
            continue
        want = _KIND_NAMES[kind] + (" or None" if optional else "")
        raise EdgeAttnError(f"{name} must be {want}, got {value!r} ({type(value).__name__})")
    exporter = args.get("exporter", "torchscript")
    if exporter not in ("torchscript", "dynamo"):
        raise EdgeAttnError(f"exporter must be torchscript or dynamo, got '{exporter}'")


def _checked_samples(name: str, value: Any) -> np.ndarray | None:
    """``inputs``/``calib_inputs`` as an array of samples (N, ...), refused in one line when it is not numeric,
    holds no sample, or holds NaN/inf (the gate would compare NaN with NaN, PTQ would fit scales to them)."""
    if value is None:
        return None
    try:
        arr = np.asarray(value)
    except Exception as exc:  # ragged lists, tensors on another device
        raise EdgeAttnError(f"{name} must be an array of samples (N, ...): {exc}") from None
    if arr.dtype.kind not in "biuf" or arr.ndim < 2 or len(arr) == 0:
        raise EdgeAttnError(
            f"{name} must be a numeric array of samples (N, ...) with N >= 1, got {arr.dtype} of shape "
            f"{list(arr.shape)}"
        )
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        bad = int((~np.isfinite(arr)).sum())
        raise EdgeAttnError(f"{name} holds {bad} non-finite value(s) (NaN or inf) of {arr.size}; give finite samples")
    return arr


def _check_sample_shape(module: Any, sample_shape: tuple[int, ...]) -> None:
    """Refuse given parity inputs whose sample shape is not the model's ``input_size`` (the shape it is
    exported, traced and calibrated with)."""
    size = getattr(module, "input_size", None)
    if size is not None and tuple(int(d) for d in size) != tuple(sample_shape[1:]):
        want = ", ".join(str(int(d)) for d in size)
        raise EdgeAttnError(
            f"inputs: samples of shape {list(sample_shape[1:])} do not match the model's input_size "
            f"{[int(d) for d in size]}; give inputs of shape (N, {want})"
        )


def _calibration_note(batches: list[Any], shape: tuple[int, ...], vocab: int | None, meta: dict | None) -> str:
    """The report note saying what PTQ calibrated on when no calibration data was given ('' when the
    checkpoint names its own data: :func:`_own_data_notes` says what happened to it)."""
    if (meta or {}).get("data_path"):
        return ""
    n = sum(len(b) for b in batches)
    if vocab is not None:
        what = "standard-library text windows" if vocab >= 256 else "random token-id sequences"
        data = f"{n} {what} of {shape[1]} tokens"
    elif len(shape) == 4:
        data = f"{n} digits images at {shape[2]}x{shape[3]}"
    else:
        data = f"{n} random normal inputs of shape {list(shape[1:])}"
    return f"PTQ calibrated on {data}; pass calib_inputs= for your own data"


# ----------------------------------------------------------------------------------------------------------
# the run
# ----------------------------------------------------------------------------------------------------------
def export_model(
    model: Any,
    target: str,
    profile: Any,
    out_dir: str | Path,
    *,
    precision: str | None = None,
    checkpoint: str | None = None,
    opset: int | None = None,
    batch: int | None = None,
    dynamic_batch: bool | None = None,
    atol: float | None = None,
    force: bool = False,
    n_inputs: int = 32,
    inputs: np.ndarray | None = None,
    calib_inputs: Any = None,
    model_kwargs: dict[str, Any] | None = None,
    exporter: str = "torchscript",
    cpu_isa: str | None = None,
    threads: int = 2,
    seed: int = 0,
    cache: dict | None = None,
    torch_threads: int | None = 1,
    noise_floor: bool = True,
) -> ExportReport:
    """Export ``model`` for ``target`` with ``profile`` into ``out_dir`` and run the parity gate.

    Args:
        model: a registry name, a checkpoint path written by ``edgeattn qat``, or an ``nn.Module`` (float or
            brevitas-quantized; float modules are reparameterized, quantized ones are taken as deploy form).
        target: ``onnx``, ``tensorrt``, ``openvino`` or ``coreml``.
        profile: a DeviceProfile or a profile name/path; it must list ``target``.
        out_dir: created; an existing directory needs ``force=True``.
        precision: ``fp32``/``fp16``/``int8`` (default: the profile's). INT8 of a float model runs PTQ
            (edgeattn.quant.ptq with the profile's bits) on ``calib_inputs`` or digits samples, except for
            Core ML, where it means int8 *weights* only (coremltools' linear weight quantization; activations
            stay in the compute precision, no PTQ). For Core ML an explicit ``fp32``/``fp16`` sets the compute
            precision; left out, the profile's ``coreml.compute_precision`` applies.
        atol: overrides the profile's ``max_abs`` tolerance (fraction of the output range).
        n_inputs / inputs: parity inputs (``inputs`` replaces the generated ones), 1 to :data:`MAX_N_INPUTS`.
            With a static batch there must be at least one batch of them (the first batch is also the example
            the model is traced with). ``inputs`` (finite, ``(N, ...)``) sets the export input of a module
            without ``input_size`` to ``(batch, *inputs.shape[1:])``; a module with one must match it.
        seed: draws the generated parity inputs, the PTQ calibration batches and a registry model's random
            weights (the same artifact and figures on every run).
        cpu_isa: run OpenVINO's CPU plugin capped at this oneDNN ISA (e.g. ``"AVX2"``, any case; one of
            :data:`edgeattn.export.openvino_target.ONEDNN_ISAS`) in a child process.
        cache: a dict shared by several calls in one process (e.g. one model to several targets, see
            :func:`export_all`): the resolved/deploy/PTQ'd model, the calibration data, the torch reference
            outputs, the exported ONNX and its ONNX Runtime (no-optimisation) outputs are reused when their
            inputs are the same (registry names only; in-memory modules are keyed by identity).
        threads: intra-op threads of the runtimes under test (ONNX Runtime, OpenVINO), 1 to :data:`MAX_THREADS`.
        noise_floor: a quantized model that misses the profile's tolerance is judged again with it widened
            to twice the reference's rounding noise floor, at most 4x the profile's
            (:mod:`edgeattn.export.noise_floor`); the report says when a gate passed only that way. False
            keeps the profile's tolerance as the last word.
        torch_threads: torch's intra-op threads while the run does torch work (PTQ calibration, the
            reference forward, tracing, the Core ML reference evaluator); restored afterwards. The default 1
            is deliberate: that work is thousands of small ops, each of which pays a thread-pool barrier;
            on a loaded 2-core machine one barrier costs milliseconds (a batch-1 fmvit_t fake-quant forward
            measured 6.0 s with 2 threads vs 0.06 s with 1, docs/export.md). ``None`` leaves torch's
            setting alone.
    Returns the :class:`ExportReport` (also written to ``out_dir/report.json``). Raises
    :class:`ParityFailure` (exit 3) after writing everything when a gate fails, and :class:`LintFailure` (exit 5)
    after writing report.json alone (every finding, no artifact) when TensorRT's lint finds an error.
    """
    _check_arg_types({k: v for k, v in locals().items() if k not in ("model", "profile", "out_dir")})
    with _torch_threads(torch_threads):
        return _export_model(
            model,
            target,
            profile,
            out_dir,
            precision=precision,
            checkpoint=checkpoint,
            opset=opset,
            batch=batch,
            dynamic_batch=dynamic_batch,
            atol=atol,
            force=force,
            n_inputs=n_inputs,
            inputs=inputs,
            calib_inputs=calib_inputs,
            model_kwargs=model_kwargs,
            exporter=exporter,
            cpu_isa=cpu_isa,
            threads=threads,
            seed=seed,
            cache=cache,
            noise_floor=noise_floor,
        )


# the keyword arguments export_all passes on (taken once: tests replace export_model with stand-ins)
_EXPORT_ARGS = frozenset(inspect.signature(export_model).parameters) - {"model", "target", "profile", "out_dir"}


@contextlib.contextmanager
def _torch_threads(n: int | None):
    """torch's intra-op thread count set to ``n`` for the block, then restored (``None``: untouched)."""
    if n is None:
        yield
        return
    if n < 1:
        raise EdgeAttnError(f"torch_threads must be >= 1, got {n}")
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextlib.contextmanager
def _staged(out: Path, force: bool) -> Iterator[Path]:
    """:func:`staging_dir` for ``out``: without ``force`` a folder another run published there meanwhile is not
    replaced but refused, with the exit code of the start check's refusal (6)."""
    try:
        with staging_dir(out, replace=force) as stage:
            yield stage
    except OutputTakenError as exc:
        exc.exit_code = 6
        raise


def _export_model(
    model: Any,
    target: str,
    profile: Any,
    out_dir: str | Path,
    *,
    precision: str | None,
    checkpoint: str | None,
    opset: int | None,
    batch: int | None,
    dynamic_batch: bool | None,
    atol: float | None,
    force: bool,
    n_inputs: int,
    inputs: np.ndarray | None,
    calib_inputs: Any,
    model_kwargs: dict[str, Any] | None,
    exporter: str,
    cpu_isa: str | None,
    threads: int,
    seed: int,
    cache: dict | None,
    noise_floor: bool,
) -> ExportReport:
    from edgeattn.device_profile import DeviceProfile, load_profile

    t_start = time.perf_counter()
    model = _check_model_arg(model)
    inputs = _checked_samples("inputs", inputs)
    calib_inputs = _checked_samples("calib_inputs", calib_inputs)
    sample_shape = None if inputs is None else tuple(inputs.shape)
    if target not in TARGETS:
        raise EdgeAttnError(f"unknown target '{target}'; choose one of {', '.join(TARGETS)}")
    prof = profile if isinstance(profile, DeviceProfile) else load_profile(profile)
    prof.require_target(target)
    if precision is not None and precision not in ("fp32", "fp16", "int8"):
        raise EdgeAttnError(f"--precision must be fp32, fp16 or int8, got '{precision}'")
    if opset is not None and not 13 <= opset <= 23:
        raise EdgeAttnError(f"--opset must be between 13 and 23, got {opset}")
    if batch is not None and batch < 1:
        raise EdgeAttnError(f"--batch must be >= 1, got {batch}")
    _check_counts(n_inputs, threads)
    if atol is not None and not (math.isfinite(atol) and atol > 0):
        raise EdgeAttnError(f"--atol must be a finite number > 0 (a fraction of the output range), got {atol}")
    if cpu_isa is not None:
        from edgeattn.export.openvino_target import normalize_isa

        cpu_isa = normalize_isa(cpu_isa)
        if target != "openvino":  # only OpenVINO's CPU plugin runs oneDNN kernels that the cap applies to
            raise EdgeAttnError(f"--cpu-isa applies to --target openvino only, not {target}")
    if target == "coreml":
        _refuse_coreml_flags(opset, exporter, dynamic_batch)
    _check_batch_fits(target, prof, batch, dynamic_batch, n_inputs, inputs)
    if (precision or prof.precision) == "int8" and _is_float_source(model, checkpoint):
        _refuse_wide_profile_bits(target, prof)  # a float checkpoint is checked once loaded, before its PTQ
    out = replaceable_dir(out_dir)  # refuses '.', a folder above it, a file: before any work
    _require_backend(target)
    if out.exists() and any(out.iterdir()) and not force:
        raise EdgeAttnError(
            f"output directory '{out_dir}' exists and is not empty; pass --force to replace it", exit_code=6
        )

    model_key = (
        model if isinstance(model, str) else id(model),
        repr(sorted((model_kwargs or {}).items())),
        checkpoint,
        repr(prof.export.input_shape),
        prof.approx.softmax,
        prof.approx.gelu,
        None if sample_shape is None else sample_shape[1:],
    )
    stage_s: dict[str, float] = {}  # seconds per stage; ~0 where the cache served it
    t0 = time.perf_counter()
    module, name, meta = _cached(
        cache,
        ("model", *model_key, seed),
        lambda: resolve_model(model, checkpoint, prof, model_kwargs, seed, sample_shape),
    )
    _refuse_unsupported_input(name, module, target)
    if sample_shape is not None:
        _check_sample_shape(module, sample_shape)
    from edgeattn.export.onnx_export import is_quantized
    from edgeattn.quant.adaptive import has_token_adaptive, strip_token_adaptive

    # per-token mixed precision has no ONNX form: export (and check against) the model with every token at act_bits
    # (a checkpoint comes stripped by _load_ckpt; its meta says it was token-adaptive)
    token_adaptive = bool(((meta or {}).get("quant") or {}).get("token_adaptive"))
    adaptive = None  # an in-memory model as trained, per-token bits included (a checkpoint's is loaded for the gap)
    if has_token_adaptive(module):
        token_adaptive = True
        adaptive = module
        module = _cached(cache, ("strip", *model_key), lambda: strip_token_adaptive(copy.deepcopy(module)))
    quantized = is_quantized(module)
    ckpt = _checkpoint_section(model, checkpoint, module, meta, prof, token_adaptive)  # before any PTQ
    if quantized and ckpt:
        _refuse_wide_model_bits(target, ckpt)
    if not quantized and not (meta or {}).get("reparameterized"):
        from edgeattn.reparameterize import reparameterize

        module = _cached(cache, ("deploy", *model_key), lambda: reparameterize(module).eval())
    stage_s["model"] = round(time.perf_counter() - t0, 3)
    prec = precision or prof.precision
    if quantized and prec != "int8":
        if precision is not None:
            raise EdgeAttnError(f"the model is quantized: it exports as int8, not {precision}")
        prec = "int8"
    # a profile that says fp32 but computes Core ML in fp16 is judged as fp16; an explicit --precision fp32 wins
    if (
        target == "coreml"
        and precision is None
        and prec == "fp32"
        and prof.coreml
        and prof.coreml.compute_precision == "fp16"
    ):
        prec = "fp16"
    shape = _input_shape(module, prof, batch, sample_shape)
    vocab = int(module.vocab_size) if is_token_model(module) else None  # token ids in [0, vocab)
    dyn = prof.export.dynamic_batch if dynamic_batch is None else dynamic_batch
    notes: list[str] = [ckpt["note"]] if ckpt and ckpt["note"] else []
    if target == "coreml" and dyn:  # only the profile can ask for it here: the flag is refused above
        notes.append(f"the profile's dynamic_batch does not apply to Core ML: a static batch of {shape[0]}")
        dyn = False
    ta_note = len(notes)  # the index of the stripping note, which the measured gap completes
    if token_adaptive:
        notes.append(
            "token-adaptive bits stripped (edgeattn.quant.adaptive.strip_token_adaptive): every token runs at the "
            "model's act_bits, and parity is checked against that model"
        )
    calibrated = prec == "int8" and not quantized and target != "coreml"
    if calibrated:
        _refuse_wide_profile_bits(target, prof)
        from edgeattn.quant import ptq

        calib_key = ("ptq", *model_key, prof.quant.model_dump_json(), shape, seed)
        t0 = time.perf_counter()
        shared = cache if calib_inputs is None else None
        batches = _cached(
            shared,
            ("calib", shape, seed, vocab, *map((meta or {}).get, ("data_path", "resize", "data_fingerprint"))),
            lambda: _calibration_batches(shape, calib_inputs, seed, vocab, meta),
        )
        module = _cached(shared, calib_key, lambda: ptq(module, prof, batches).eval())
        stage_s["ptq"] = round(time.perf_counter() - t0, 3)
        quantized = True
        if ckpt:
            ckpt["profile_quant_applied"] = True
        notes.append("float model quantized by PTQ (edgeattn.quant.ptq) with the profile's bit widths")
        if calib_inputs is None and (note := _calibration_note(batches, shape, vocab, meta)):
            notes.append(note)
    elif prec == "int8" and not quantized:  # Core ML
        notes.append(
            "Core ML int8 of a float model: weights stored int8 by coremltools' linear_quantize_weights, "
            "activations in the compute precision (no PTQ; quantize the model first for W8A8)"
        )

    tol = prof.tolerance_for(prec)
    if atol is not None:
        tol = tol.model_copy(update={"max_abs": float(atol)})
    x, counts = _parity_inputs(shape, n_inputs, meta, seed, inputs, vocab)
    notes += _own_data_notes(meta, counts, shape, vocab, calibrated and calib_inputs is None)
    run = len(x) if dyn else len(x) // shape[0] * shape[0]  # a static-batch artifact runs whole batches only
    if run < len(x):
        notes.append(
            f"{len(x) - run} of the {len(x)} parity inputs do not fill a last static batch of {shape[0]} and "
            f"were not run: the gates compare {run}"
        )
    report = ExportReport(
        model=name,
        target=target,
        precision=prec,
        profile=prof.model_dump(mode="json"),
        out_dir=str(out),
        checkpoint=ckpt,
        settings={
            "opset": None if target == "coreml" else opset or prof.export.opset,
            "exporter": None if target == "coreml" else exporter,
            "batch": shape[0],
            "dynamic_batch": dyn,
            "threads": threads,
            "cpu_isa": cpu_isa,
            "noise_floor": noise_floor,
            "seed": seed,
        },
        inputs=[
            {
                "name": "input",
                "shape": ["batch" if dyn else shape[0], *shape[1:]],
                "dtype": TOKEN_ID_DTYPES[target] if vocab is not None else "float32",
            }
        ],
        parity_inputs=counts,
        notes=notes,
        versions=environment(),
    )
    from edgeattn.export.parity import reference_outputs

    ref_key = ("ref", id(module), x.shape, float(x.sum()))
    t0 = time.perf_counter()
    ref = _cached(cache, ref_key, lambda: reference_outputs(module, x))
    stage_s["reference"] = round(time.perf_counter() - t0, 3)
    if not np.isfinite(ref).all():  # nothing to gate against: refused before any artifact is staged
        bad = int((~np.isfinite(ref)).sum())
        raise EdgeAttnError(
            f"{name}'s torch output on the parity inputs is not finite ({bad} of {ref.size} values NaN or inf): "
            "the parity gate has no reference to compare with; check the model's forward (a division by zero, "
            "an overflow) and its inputs"
        )
    if token_adaptive and ckpt is not None:
        t0 = time.perf_counter()
        gap, problem = None, ""
        try:
            gap = _cached(
                cache,
                ("ta-gap", *model_key, x.shape, float(x.sum())),
                lambda: _token_adaptive_gap(adaptive if adaptive is not None else _load_adaptive(ckpt["path"]), x, ref),
            )
        except EdgeAttnError as exc:  # a file from before pooled-key scores loads only stripped
            problem = str(exc)
        ckpt["token_adaptive_gap"] = gap
        notes[ta_note] += _gap_line(gap, problem)
        stage_s["token_adaptive_gap"] = round(time.perf_counter() - t0, 3)
    report.timings_s.update(stage_s)
    report.outputs = [
        {"name": "output", "shape": ["batch" if dyn else shape[0], *ref.shape[1:]], "dtype": "float32"}
    ]

    import torch

    # staged beside ``out``; renamed into place (replacing an old ``out``) only when the block succeeds
    with _staged(out, force) as stage:
        example = torch.from_numpy(np.ascontiguousarray(x[: shape[0]]))
        job = _Job(
            module=module,
            example=example,
            prof=prof,
            prec=prec,
            target=target,
            stage=stage,
            x=x,
            ref=ref,
            tol=tol,
            report=report,
            opset=opset or prof.export.opset,
            dyn=dyn,
            exporter=exporter,
            cpu_isa=cpu_isa,
            threads=threads,
            shape=shape,
            cache=cache,
            noise_floor=noise_floor and quantized,
            atol_given=atol is not None,
        )
        (_run_coreml if target == "coreml" else _run_onnx_based)(job)
        report.passed = all(p["passed"] for p in report.parity) and not job.lint_errors
        if job.lint_errors:  # TensorRT rejects the graph: no artifact, the report says why
            for path in report.artifacts.values():
                Path(path).unlink()
            report.artifacts = {}
        elif not report.passed:
            _tag_failed(stage, report)
        report.timings_s["total"] = round(time.perf_counter() - t_start, 3)
        # report.json names where the artifacts will be, not the staging folder
        report.artifacts = {k: str(out / Path(v).name) for k, v in report.artifacts.items()}
        write_report(stage / "report.json", report)
    if job.lint_errors:
        first, more = job.lint_errors[0], len(job.lint_errors) - 1
        raise LintFailure(
            f"tensorrt: {first.line(prof.name)}{f' (+{more} more)' if more else ''}; every finding in "
            f"{out / 'report.json'} (lint)",
            report,
        )
    if not report.passed:
        failed = [p for p in report.parity if not p["passed"]]
        first = failed[0]
        where = ""
        named = next((p for p in failed if p.get("first_diverging_node")), None)
        if named is not None:  # the first failed gate may be one that is not bisected (onnxruntime-noopt)
            d = named["first_diverging_node"]
            runtime = "" if named is first else f" in {named['runtime']}"
            where = f"; first diverging node {d['node']} ({d['op_type']}){runtime}"
        hint = _saturation_hint(module, first["runtime"], cpu_isa, (meta or {}).get("quant"))
        raise ParityFailure(
            f"parity gate failed for {name} on {first['runtime']}: {'; '.join(first['failures'])}{where}{hint} "
            f"(report: {out / 'report.json'})",
            report,
        )
    return report


# oneDNN ISAs without VNNI: their int8 kernels add u8 x s8 products in pairs in 16 bits (vpmaddubsw)
_NO_VNNI_ISAS = frozenset({"SSE41", "AVX", "AVX2", "AVX512_CORE"})


def _saturation_hint(module: Any, runtime: str, cpu_isa: str | None, quant: dict[str, Any] | None = None) -> str:
    """The likely cause when a CPU int8 runtime fails on a CPU (or ISA cap) without VNNI and the model has 8-bit
    weights or 8-bit K/V, which saturate those kernels' 16-bit pair sums; '' when that is not the case. ``quant``
    (a checkpoint's QuantConfig as a dict) lets it name the ``overrides`` patterns that set the wide weights."""
    if not runtime.startswith(("openvino", "onnxruntime")) or runtime == "onnxruntime-noopt":
        return ""  # ONNX Runtime without graph optimisations computes exact integers
    if cpu_isa:  # already normalised (upper case) by export_model
        no_vnni = cpu_isa in _NO_VNNI_ISAS
    else:
        from edgeattn.hostinfo import detect_host

        no_vnni = detect_host().recommended_kv_max_bits is not None
    if not no_vnni:
        return ""
    from brevitas import nn as qnn
    from edgeattn.quant.config import KV_POINTS

    layers = (qnn.QuantLinear, qnn.QuantConv1d, qnn.QuantConv2d)
    wide_layers = [
        n for n, m in module.named_modules() if isinstance(m, layers) and float(m.weight_quant.bit_width()) > 7
    ]
    weights = bool(wide_layers)
    kv = any(
        float(m.act_quant.bit_width()) > 7
        for n, m in module.named_modules()
        if isinstance(m, qnn.QuantIdentity) and n.endswith(KV_POINTS)
    )
    wide = [what for what, is_wide in (("weights", weights), ("K/V", kv)) if is_wide]
    if not wide:
        return ""
    cpu = f"the {cpu_isa} cap" if cpu_isa else "this CPU"
    patterns = _wide_weight_overrides(wide_layers, quant)
    cause = (
        f" (set by quant.overrides {', '.join(repr(p) for p in patterns)}: give them weight_bits 7 or less)"
        if patterns
        else ""
    )
    return (
        f"; {cpu} has no VNNI: its int8 kernels add products in pairs in 16 bits, and the model's 8-bit "
        f"{' and '.join(wide)}{cause} saturate them; quantize for host-cpu or intel-avx2-openvino (7-bit weights, K "
        "and V)"
    )


def _wide_weight_overrides(layers: list[str], quant: dict[str, Any] | None) -> list[str]:
    """The ``overrides`` patterns of a checkpoint's QuantConfig (``quant``) that gave any of ``layers`` (module
    names) more than 7 weight bits: for each layer the last matching pattern with ``weight_bits``, as
    :meth:`edgeattn.quant.config.QuantConfig.weight_bits_for` picks it."""
    from edgeattn.quant.config import matches_module

    overrides = (quant or {}).get("overrides") or {}
    setting = [p for p, o in overrides.items() if (o or {}).get("weight_bits") is not None]
    found: list[str] = []
    for name in layers:
        chosen = [p for p in setting if matches_module(name, p)]
        if chosen and overrides[chosen[-1]]["weight_bits"] > 7 and chosen[-1] not in found:
            found.append(chosen[-1])
    return found


def export_all(
    model: Any,
    out_dir: str | Path,
    targets: Any = TARGETS,
    profiles: dict[str, Any] | None = None,
    *,
    force: bool = False,
    **kwargs: Any,
) -> dict[str, ExportReport]:
    """Export ``model`` to several targets in one run, into ``out_dir/<target>/`` each.

    One process, one shared cache: the model, its deploy form, each distinct PTQ model, the calibration
    data, the torch reference outputs, each distinct ONNX export and its ONNX Runtime (no-optimisation)
    outputs are built once and reused by every target they fit. Every target still runs its own parity gates
    with its own profile's tolerances. ``profiles`` maps target -> profile (name, path or DeviceProfile);
    missing targets use :data:`DEFAULT_PROFILES`. ``kwargs`` go to :func:`export_model` (``cache`` is
    supplied here). All targets and profiles are checked, and every ``out_dir/<target>`` for emptiness,
    before any work starts. A target whose gate fails does not stop the others; after all ran,
    :class:`ParityFailure` is raised for the first failure, with ``reports`` (every report) attached.
    Returns ``{target: report}``.
    """
    from edgeattn.device_profile import DeviceProfile, load_profile

    if "cache" in kwargs:
        raise EdgeAttnError("export_all builds its own cache; do not pass cache=")
    unknown_args = sorted(set(kwargs) - _EXPORT_ARGS)
    if unknown_args:
        raise EdgeAttnError(f"export_all got an unexpected argument '{unknown_args[0]}'")
    _check_arg_types({"force": force, **kwargs})
    for key in ("inputs", "calib_inputs"):
        kwargs[key] = _checked_samples(key, kwargs.get(key))
    if isinstance(targets, str):
        targets = [targets]
    elif not isinstance(targets, (list, tuple, set, frozenset)) or not all(isinstance(t, str) for t in targets):
        raise EdgeAttnError(f"targets must be a target name or a list of them, got {targets!r}")
    targets = list(targets)
    if profiles is not None and not isinstance(profiles, dict):
        raise EdgeAttnError(f"profiles must be a dict of target -> profile, got {type(profiles).__name__}")
    if not targets:
        raise EdgeAttnError("export_all needs at least one target")
    unknown = [t for t in targets if t not in TARGETS]
    if unknown:
        raise EdgeAttnError(f"unknown target '{unknown[0]}'; choose from {', '.join(TARGETS)}")
    if len(set(targets)) != len(targets):
        raise EdgeAttnError(f"targets must be distinct, got {', '.join(targets)}")
    extra = sorted(set(profiles or {}) - set(targets))
    if extra:
        raise EdgeAttnError(f"profiles given for targets not exported: {', '.join(extra)}")
    _check_counts(kwargs.get("n_inputs", 32), kwargs.get("threads", 2))
    float_source = _is_float_source(_check_model_arg(model), kwargs.get("checkpoint"))
    resolved = {}
    for t in targets:
        p = (profiles or {}).get(t, DEFAULT_PROFILES[t])
        resolved[t] = p if isinstance(p, DeviceProfile) else load_profile(p)
        resolved[t].require_target(t)
        if float_source and (kwargs.get("precision") or resolved[t].precision) == "int8":
            _refuse_wide_profile_bits(t, resolved[t])  # before any target's work
        _check_batch_fits(
            t,
            resolved[t],
            kwargs.get("batch"),
            kwargs.get("dynamic_batch"),
            kwargs.get("n_inputs", 32),
            kwargs.get("inputs"),
        )
        _require_backend(t)
    if targets == ["coreml"]:
        _refuse_coreml_flags(kwargs.get("opset"), kwargs.get("exporter", "torchscript"), kwargs.get("dynamic_batch"))
    if kwargs.get("cpu_isa") is not None:
        from edgeattn.export.openvino_target import normalize_isa

        normalize_isa(kwargs["cpu_isa"])
        if "openvino" not in targets:  # the cap is for OpenVINO's kernels: without it, nothing would be capped
            raise EdgeAttnError("--cpu-isa applies to the openvino target, which is not among the targets")
    root = Path(out_dir)
    if root.exists() and not root.is_dir():
        raise EdgeAttnError(f"output folder '{out_dir}' exists and is not a folder")
    for t in targets:
        d = replaceable_dir(root / t)  # each out_dir/<target> is replaced as a whole: same rules
        if d.exists() and any(d.iterdir()) and not force:
            raise EdgeAttnError(
                f"output directory '{root / t}' exists and is not empty; pass --force to replace it",
                exit_code=6,
            )
    cache: dict = {}
    reports: dict[str, ExportReport] = {}
    failures: list[ParityFailure] = []
    for t in targets:
        try:
            # --cpu-isa caps OpenVINO's kernels; the other targets run without it
            own = kwargs if t == "openvino" else {**kwargs, "cpu_isa": None}
            if t == "coreml":  # ONNX-only settings; Core ML's batch is static (docs/export.md)
                own = {**own, "opset": None, "exporter": "torchscript", "dynamic_batch": False}
            reports[t] = export_model(model, t, resolved[t], root / t, force=force, cache=cache, **own)
        except ParityFailure as exc:  # the artifact and report are written; go on with the other targets
            reports[t] = exc.report
            failures.append(exc)
    if failures:
        first = failures[0]
        what = "parity" if all(type(f) is ParityFailure for f in failures) else "their gates"
        err = ParityFailure(f"{len(failures)} of {len(targets)} targets failed {what}; first: {first}", first.report)
        err.exit_code = first.exit_code
        err.reports = reports
        raise err
    return reports


def _require_backend(target: str) -> None:
    if target == "openvino":
        from edgeattn.export.openvino_target import require_openvino

        require_openvino()
    elif target == "coreml":
        from edgeattn.export.coreml_target import require_coremltools

        require_coremltools()


def _tag_failed(stage: Path, report: ExportReport) -> None:
    """Rename every artifact to a name that says it failed parity."""
    renamed = {}
    for key, path in report.artifacts.items():
        p = Path(path)
        stem, dot, ext = p.name.partition(".")
        new = p.with_name(f"{stem}.{FAILED_TAG}{dot}{ext}")
        os.replace(p, new)
        renamed[key] = str(new)
    # an OpenVINO IR is two files: keep the .bin next to its renamed .xml
    for p in stage.glob("*.bin"):
        if FAILED_TAG not in p.name:
            stem, dot, ext = p.name.partition(".")
            os.replace(p, p.with_name(f"{stem}.{FAILED_TAG}{dot}{ext}"))
    report.artifacts = renamed


@dataclass
class _Job:
    """What one export run hands its target runner: the deploy-form module, the parity inputs and torch
    reference, the gate's tolerance and the settings from the profile and the caller."""

    module: Any
    example: Any  # the torch example input (one static batch)
    prof: Any
    prec: str
    target: str
    stage: Path  # the temporary output directory
    x: np.ndarray
    ref: np.ndarray
    tol: Any
    report: ExportReport
    opset: int
    dyn: bool
    exporter: str
    cpu_isa: str | None
    threads: int
    shape: tuple[int, ...]
    cache: dict | None
    noise_floor: bool  # widen the gate by the reference's rounding noise floor (quantized models)
    atol_given: bool = False  # tol.max_abs is the caller's --atol, not the profile's
    floors: dict = field(default_factory=dict)  # noise floors of this run, when no shared cache is given
    lint_errors: list = field(default_factory=list)  # TensorRT lint findings of severity error

    def floor(self, x: np.ndarray, ref: np.ndarray, compute: str) -> Any:
        """The reference's rounding noise floor on ``x`` at ``compute`` precision (None when off)."""
        if not self.noise_floor:
            return None
        from edgeattn.export.noise_floor import rounding_noise_floor

        key = ("floor", id(self.module), x.shape, float(x.sum()), compute)
        t0 = time.perf_counter()
        memo = self.cache if self.cache is not None else self.floors  # two gates on one input: one floor
        floor = _cached(memo, key, lambda: rounding_noise_floor(self.module, x, ref, compute=compute))
        stage = f"noise_floor_{compute}"
        spent = self.report.timings_s.get(stage, 0.0) + time.perf_counter() - t0
        self.report.timings_s[stage] = round(spent, 3)
        return floor


def _gate(
    job: _Job,
    x: np.ndarray,
    ref: np.ndarray,
    got: np.ndarray,
    runtime: str,
    compute: str = "fp32",
    bisect: Any = None,
    note: str = "",
) -> bool:
    """Compare ``got`` (the runtime's outputs on ``x``) with the torch reference ``ref``; record the result.

    A quantized model that misses the profile's tolerance is judged again with the tolerance widened by the
    reference's rounding noise floor at ``compute``, the float precision the runtime computes in."""
    from edgeattn.export.parity import compare_outputs, cosine_resolvable

    given = job.atol_given
    res = compare_outputs(ref, got, job.tol, runtime=runtime, atol_given=given)
    counted = None  # the samples whose cosine the gate judged (all of them without a floor)
    if not res.passed:  # judge again against the reference's own rounding noise (quantized models only)
        floor = job.floor(x, ref, compute)
        if floor is not None:
            res = compare_outputs(ref, got, job.tol, runtime=runtime, noise_floor=floor, atol_given=given)
            counted = cosine_resolvable(ref, floor, job.tol.min_cosine)
    res.note = note
    if not res.passed and bisect is not None:
        res.first_diverging_node, bisect_note = _bisect_worst(job, x, ref, got, bisect, counted)
        res.note = "; ".join(n for n in (note, bisect_note) if n)
    job.report.parity.append(res.to_dict())
    return res.passed


def _bisect_worst(
    job: _Job, x: np.ndarray, ref: np.ndarray, got: np.ndarray, bisect: Any, cosine_counted: np.ndarray | None = None
) -> tuple[dict[str, Any] | None, str]:
    """Bisect on the static batch holding the input whose output misses the tolerance the most (where the
    divergence shows; another batch's output may still agree), its cosine counted only where the gate judged it
    (``cosine_counted``). Returns (the node or None, a note or '')."""
    from edgeattn.export.parity import worst_batch

    rows = worst_batch(ref, got, job.shape[0], job.tol, cosine_counted)
    where = f"inputs {rows.start}..{rows.stop - 1}"
    try:
        node = bisect(x[rows])
    except Exception as exc:  # bisecting is best effort; the failure itself is what matters
        return None, f"bisect failed: {type(exc).__name__}: {exc}"
    if node is None:
        return None, (
            f"bisect on {where} (the worst output): there the runtime's final output agrees with ONNX Runtime "
            "without optimisations within the tolerance, so no node is named (compare the onnxruntime-noopt "
            "entry with PyTorch)"
        )
    return {**node, "inputs": [rows.start, rows.stop]}, ""


@contextlib.contextmanager
def _timed(report: ExportReport, stage: str):
    """Record the block's wall time as ``report.timings_s[stage]``, less the noise-floor time spent inside it
    (recorded as its own ``noise_floor_<compute>`` stage), so that no second is counted in two stages."""

    def floor_s() -> float:
        return sum(v for k, v in report.timings_s.items() if k.startswith("noise_floor_"))

    before, t0 = floor_s(), time.perf_counter()
    try:
        yield
    finally:
        report.timings_s[stage] = round(time.perf_counter() - t0 - (floor_s() - before), 3)


def _cached(cache: dict | None, key: Any, build: Any) -> Any:
    """``build()``, memoised in ``cache`` under ``key`` when a cache is given."""
    if cache is None:
        return build()
    if key not in cache:
        cache[key] = build()
    return cache[key]


def _run_onnx_based(job: _Job) -> None:
    module, example, prof, prec, target, stage = job.module, job.example, job.prof, job.prec, job.target, job.stage
    tol, report, opset, dyn, exporter = job.tol, job.report, job.opset, job.dyn, job.exporter
    cpu_isa, threads, shape, cache, x = job.cpu_isa, job.threads, job.shape, job.cache, job.x
    from edgeattn.export import lint as lint_mod
    from edgeattn.export.onnx_export import export_onnx, node_counts, save_onnx
    from edgeattn.export.parity import first_diverging_node, ort_reference_session, run_batched, run_ort
    from edgeattn.export.qdq import summarize_qdq

    t0 = time.perf_counter()
    onnx_key = ("onnx", id(module), opset, prec, dyn, exporter, tuple(example.shape))
    exported = _cached(
        cache,
        onnx_key,
        lambda: export_onnx(
            module, example, opset=opset, precision=prec, dynamic_batch=dyn, exporter=exporter
        ),
    )
    report.timings_s["onnx_export"] = round(time.perf_counter() - t0, 3)
    onnx_model = exported.model
    # the opset the file declares (the dynamo exporter's may differ from the one asked for)
    report.settings["opset"] = next((o.version for o in onnx_model.opset_import if o.domain in ("", "ai.onnx")), None)
    onnx_path = save_onnx(onnx_model, stage / "model.onnx")
    report.artifacts["onnx"] = str(onnx_path)
    report.node_counts = node_counts(onnx_model)
    if exported.quantized:
        report.qdq = {**summarize_qdq(onnx_model).__dict__, "cleanup": exported.cleanup}
    batch = shape[0]
    x_run = x if dyn or batch == 1 else x[: (len(x) // batch) * batch]
    ref_run = job.ref[: len(x_run)]
    onnx_bytes = onnx_model.SerializeToString()

    # second reference: ONNX Runtime, no graph optimisations
    def ort_noopt() -> np.ndarray:
        sess = ort_reference_session(onnx_bytes, threads)
        return run_batched(lambda b: run_ort(sess, b), x_run, batch)

    with _timed(report, "parity_ort"):
        # the same ONNX on the same inputs gives the same outputs: one ORT run serves every target sharing them
        ort_out = _cached(cache, ("ort-noopt", *onnx_key, x_run.shape, float(x_run.sum()), threads), ort_noopt)
        _gate(job, x_run, ref_run, ort_out, "onnxruntime-noopt")

    if target == "onnx":
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.log_severity_level = 3
        sess = ort.InferenceSession(onnx_bytes, opts, providers=["CPUExecutionProvider"])

        def run_ort_model(m, xb):
            return run_ort(
                ort.InferenceSession(m.SerializeToString(), opts, providers=["CPUExecutionProvider"]), xb
            )

        with _timed(report, "parity_onnxruntime"):
            _gate(
                job,
                x_run,
                ref_run,
                run_batched(lambda b: run_ort(sess, b), x_run, batch),
                "onnxruntime",
                bisect=lambda xb: first_diverging_node(onnx_model, xb, run_ort_model, tol),
            )
    elif target == "tensorrt":
        spec = prof.tensorrt
        findings = lint_mod.lint_tensorrt(
            onnx_model, major=spec.major, precision=prec, profile_name=prof.name
        )
        report.lint = [f.to_dict() for f in findings]
        report.attention_fusion = [a.to_dict() for a in lint_mod.attention_fusion(onnx_model)]
        job.lint_errors = [f for f in findings if f.severity == "error"]
        if job.lint_errors:  # _export_model writes the report (every finding) and raises LintFailure
            # no [rule] in a note: the console prints notes as rich markup
            report.notes += [
                f"tensorrt lint error ({f.rule}): {f.line(prof.name, rule=False)}" for f in job.lint_errors
            ]
            return
        from edgeattn.export import tensorrt_target as trt_mod

        bad_types = trt_mod.unsupported_tensor_types(onnx_model)
        if bad_types:
            name, elem = bad_types[0]
            more = f" (+{len(bad_types) - 1} more)" if len(bad_types) > 1 else ""
            raise EdgeAttnError(
                f"tensor '{name}' is {elem}, a type TensorRT has no DataType for (profile '{prof.name}'){more}",
                exit_code=5,
            )
        report.trtexec = trt_mod.trtexec_command(
            "model.onnx", "model.engine", spec, prec, "input", shape, dyn
        )
        if trt_mod.tensorrt_available():
            engine = trt_mod.build_engine(onnx_bytes, stage / "model.engine", spec, prec, "input", shape, dyn)
            report.artifacts["engine"] = str(engine)
            runner = trt_mod.TensorRTRunner(engine)
            got = run_batched(runner, x_run, batch)
            compute = "fp16" if prec == "fp16" else "fp32"
            _gate(job, x_run, ref_run, got, f"tensorrt-{spec.major}", compute)
        else:
            report.notes.append(
                "tensorrt is not importable here: ONNX + lint + trtexec command written; the "
                "engine build and its parity gate run where TensorRT is installed"
            )
    elif target == "openvino":
        from edgeattn.export.openvino_target import OpenVINORunner, convert_to_ir, for_openvino, kernel_report

        ovs = prof.openvino
        compress = bool(ovs and ovs.compress_to_fp16) or prec == "fp16"
        t0 = time.perf_counter()
        ov_model, rewrites = for_openvino(onnx_model)
        ov_onnx = onnx_path
        if rewrites["concat_split"]:
            report.notes.append(
                f"OpenVINO IR: {rewrites['concat_split']} Concat->Q/DQ->Conv rewritten as per-part convs + Add"
                " (same integers; works around OpenVINO CPU's wrong int8 Conv after a Concat, see docs/export.md)"
            )
        if rewrites["pool_as_conv"]:
            report.notes.append(
                f"OpenVINO IR: {rewrites['pool_as_conv']} AveragePool of a quantized input rewritten as a depthwise"
                " mean Conv (same values; works around OpenVINO CPU's wrong int8 pooling before a Clip, see"
                " docs/export.md)"
            )
        if any(rewrites.values()):
            ov_onnx = save_onnx(ov_model, stage / ".openvino_input.onnx")
        xml = convert_to_ir(ov_onnx, stage / "model.xml", compress_to_fp16=compress and prec != "int8")
        if any(rewrites.values()):
            ov_onnx.unlink()
        report.timings_s["openvino_convert"] = round(time.perf_counter() - t0, 3)
        report.artifacts["openvino_xml"] = str(xml)
        report.artifacts["openvino_bin"] = str(xml.with_suffix(".bin"))
        infer_prec = ovs.inference_precision if ovs else "f32"
        hint = ovs.hint if ovs else "latency"
        label = "openvino-cpu" + (f"-{cpu_isa.lower()}" if cpu_isa else "")
        with _timed(report, "parity_openvino"), OpenVINORunner(
            xml, threads=threads, inference_precision=infer_prec, hint=hint, isa=cpu_isa
        ) as r:
            got = run_batched(r, x_run, batch)
            with OpenVINORunner(
                ov_model, threads=threads, inference_precision=infer_prec, hint=hint, isa=cpu_isa
            ) as probe:
                _gate(
                    job,
                    x_run,
                    ref_run,
                    got,
                    label,
                    _OV_COMPUTE.get(infer_prec, "fp32"),
                    bisect=lambda xb: first_diverging_node(ov_model, xb, probe.run_model, tol),
                )
            if prec == "int8" and not cpu_isa:
                report.kernels = kernel_report(r, x_run[:batch], ov_model)
            elif prec == "int8":
                report.notes.append(
                    f"kernels: not collected under --cpu-isa {cpu_isa} (the capped OpenVINO runs in a child "
                    "process); run without the cap for the per-node kernel report"
                )


def _run_coreml(job: _Job) -> None:
    module, example, prof, prec, stage = job.module, job.example, job.prof, job.prec, job.stage
    x, report = job.x, job.report
    from edgeattn.export import coreml_target as cm

    t0 = time.perf_counter()
    path = stage / "model.mlpackage"
    info = cm.convert_coreml(module, example, prof, prec, path)
    report.timings_s["coreml_convert"] = round(time.perf_counter() - t0, 3)
    report.artifacts["mlpackage"] = str(path)
    target_name = info["deployment_target"]
    in_dtype = "float32" if example.dtype.is_floating_point else TOKEN_ID_DTYPES["coreml"]
    spec = cm.validate_spec(
        path, deployment_target=target_name, input_shape=tuple(example.shape), input_dtype=in_dtype
    )
    report.coreml = {**info, "spec": spec}
    report.node_counts = spec["op_counts"]
    if not spec["passed"]:
        raise EdgeAttnError(
            f"Core ML spec check failed for profile '{prof.name}': {'; '.join(spec['problems'])}", exit_code=5
        )
    batch = example.shape[0]
    x_run = x[: (len(x) // batch) * batch]
    if x_run.dtype.kind in "iu":  # token ids: the package takes them as int32 (Core ML has no int64 inputs)
        x_run = x_run.astype(np.int32)
    ref_run = job.ref[: len(x_run)]
    compute = info["compute_precision"]  # what the program computes in (an explicit --precision decides)
    with _timed(report, "parity_coreml"):
        _coreml_gate(job, path, x_run, ref_run, compute)


def _coreml_gate(job: _Job, path: Path, x_run: np.ndarray, ref_run: np.ndarray, compute: str) -> None:
    """The Core ML gate: Core ML itself on macOS, else the MIL reference evaluator of the saved program."""
    from edgeattn.export import coreml_target as cm
    from edgeattn.export.mil_eval import MILProgram, UnsupportedMILOp
    from edgeattn.export.parity import run_batched

    prof, report, batch = job.prof, job.report, len(job.example)
    if cm.coreml_prediction_available():
        units = prof.coreml.compute_units if prof.coreml else "ALL"
        _gate(
            job,
            x_run,
            ref_run,
            run_batched(lambda b: cm.predict_macos(path, b, units), x_run, batch),
            f"coreml-{units.lower()}",
            compute,
        )
    else:
        try:
            prog = MILProgram.from_package(path)
            got = run_batched(lambda b: prog(input=b)["output"], x_run, batch)
            _gate(
                job,
                x_run,
                ref_run,
                got,
                "coreml-mil-reference",
                compute,
                note="numpy reference evaluator of the saved mlprogram (FP16 storage per op); Core ML itself "
                "runs only on macOS, so on-device numeric parity awaits a macOS run",
            )
            report.notes.append(
                "coreml runs only on macOS: Core ML itself did not run here; the parity gate used the numpy MIL "
                "reference evaluator of the saved mlprogram, and on-device numeric parity awaits a macOS run"
            )
        except UnsupportedMILOp as exc:
            report.notes.append(f"spec validated; numeric parity awaits a macOS run ({exc})")
