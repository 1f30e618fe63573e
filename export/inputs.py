"""The data an export run feeds its model, and the checks on ``export_model``'s arguments.

The parity inputs (generated, half replaced by the checkpoint's own data or a shipped data set; or given), the PTQ
calibration batches, the report notes that say where both came from, and the one-line refusals of arguments of the
wrong type, of given samples that are not finite or not of the model's shape, of parity inputs that cannot fill one
static batch, and of the flags Core ML does not honour.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from edgeattn.errors import EdgeAttnError
from edgeattn.hostinfo import check_seed


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
    if real is None and name == "digits" and _digits_fit(shape):
        from edgeattn.data import digits_dataset

        real = digits_dataset(img_size=shape[2], in_chans=shape[1], split="val", seed=0).tensors[0]
    return _with_real(x, real)


def _digits_fit(shape: tuple[int, ...]) -> bool:
    """Whether digits images fit an NCHW input ``shape`` (:func:`edgeattn.data.digits_fit`). Other inputs (a 16x24
    model) calibrate on random normal images and get no real parity inputs."""
    from edgeattn.data import digits_fit

    return len(shape) == 4 and digits_fit(shape[2], shape[3])


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

    if _digits_fit(shape):
        ds = digits_dataset(img_size=shape[2], in_chans=shape[1], split="train", seed=seed)
        return [ds.tensors[0][:64]]
    return [torch.randn(16, *shape[1:], generator=gen)]


# what each export_model argument must be, when called from Python (typer hands the CLI's values over typed)
_ARG_KINDS: dict[str, tuple[Any, bool]] = {
    "out_dir": (os.PathLike, False),
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
    "cache": (dict, True),
    "torch_threads": (int, True),
    "noise_floor": (bool, False),
}
_KIND_NAMES = {
    str: "a string", int: "an integer", float: "a number", bool: "True or False", dict: "a dict",
    os.PathLike: "a path (str or Path)",
}


def _kind_ok(value: Any, kind: type) -> bool:
    if kind is int:  # numpy integers count; bools do not (True is not a batch size)
        return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))
    if kind is float:
        return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))
    if kind is bool:
        return isinstance(value, (bool, np.bool_))
    if kind is os.PathLike:
        return isinstance(value, (str, os.PathLike))
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
    check_seed(args.get("seed", 0))
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
    elif _digits_fit(shape):
        data = f"{n} digits images at {shape[2]}x{shape[3]}"
    else:
        data = f"{n} random normal inputs of shape {list(shape[1:])}"
    return f"PTQ calibrated on {data}; pass calib_inputs= for your own data"
