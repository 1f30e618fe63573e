"""Model checkpoints written by ``edgeattn qat`` and read by ``export``/``hls``/``demo``.

A checkpoint is one ``torch.save`` file holding ``{"format", "version", "meta", "state_dict"}``. ``meta`` says how
to rebuild the module before loading the weights:

* ``"model"``: registry name, ``"model_kwargs"``: its keyword arguments; ``"model_kwargs_given"`` (``edgeattn
  qat``): which of them the run's config gave, the rest came from the data and the profile (its softmax/GELU);
* ``"reparameterized"``: whether the weights are the deploy form (``edgeattn.reparameterize``);
* ``"quant"``: a :class:`~edgeattn.quant.config.QuantConfig` dict, or ``None`` for a float model;
* ``"approximations"``: the softmax and GELU methods the model computes, ``{"softmax": [...], "gelu": [...]}``
  (:func:`edgeattn.approx.approximations_in`), re-applied when the registry model is rebuilt (a checkpoint
  without it, from an older edgeattn, gets what ``model_kwargs`` builds);
* ``"uncalibrated"`` (quantized models): the activation scale/zero-point modules that had seen no statistics when
  saved; :func:`load_checkpoint` leaves them uncalibrated (their saved placeholders would load as measured values).
* ``"token_scores"`` (token-adaptive models): :data:`edgeattn.quant.adaptive.TOKEN_SCORES`, the token scoring the
  low-bit quantizers were trained under (see :func:`load_checkpoint`).
* ``"data"``, ``"split"``, ``"classes"``, ``"data_path"`` and, for a user's image folder, ``"resize"`` (``crop`` or
  ``stretch``; none recorded means ``stretch``, what edgeattn did before): the data the model was trained on and how
  it was prepared, so that :func:`edgeattn.data.checkpoint_samples` can prepare the same inputs again;
  ``"data_fingerprint"`` (a user's folder or file): its content then (:func:`edgeattn.data.data_fingerprint`), so
  that a folder changed since is not read as that data (:func:`edgeattn.data.checkpoint_data_problem`).

Files are written atomically (temp file + rename), so an interrupted run never leaves a half-written checkpoint.
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import pickle
import shutil
import warnings
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from edgeattn.atomic import atomic_path
from edgeattn.errors import EdgeAttnError

FORMAT = "edgeattn-checkpoint"
VERSION = 1


@contextlib.contextmanager
def _full_state_dict() -> Iterator[None]:
    # brevitas drops a runtime-stats scale that never saw data from state_dict(); keep every key so that a
    # checkpoint always loads strictly into a freshly quantized model.
    import brevitas.config as bcfg

    old = bcfg._FULL_STATE_DICT
    bcfg._FULL_STATE_DICT = True
    try:
        yield
    finally:
        bcfg._FULL_STATE_DICT = old


def model_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """``model.state_dict()`` with every brevitas scale kept (see :func:`_full_state_dict`)."""
    with _full_state_dict():
        return {k: v.detach().clone() for k, v in model.state_dict().items()}


def nonfinite_weights(model: nn.Module) -> str | None:
    """``None`` when every floating-point tensor of ``model``'s state (weights and buffers, quantizer scales
    included) is finite; else what is not, e.g. ``"5 NaN and 2 inf in 2 tensors, first: head.weight"`` (a
    diverged run's checkpoint, which would otherwise fail deep inside an exporter or generator)."""
    nan = inf = tensors = 0
    first = None
    for name, t in model_state_dict(model).items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            nan, inf, tensors = nan + int(torch.isnan(t).sum()), inf + int(torch.isinf(t).sum()), tensors + 1
            first = first or name
    if not tensors:
        return None
    counts = " and ".join(f"{n} {kind}" for n, kind in ((nan, "NaN"), (inf, "inf")) if n)
    return f"{counts} in {tensors} tensor{'s' if tensors > 1 else ''}, first: {first}"


def atomic_torch_save(obj: Any, path: str | Path) -> Path:
    """``torch.save`` to a temp file in the same folder, then rename over ``path``
    (:func:`edgeattn.atomic.atomic_path`: the file gets the same umask modes as the run's JSON files)."""
    with atomic_path(path, suffix=".tmp") as tmp:
        try:
            torch.save(obj, tmp)
        except RuntimeError as exc:  # torch's writer reports a full disk as "enforce fail ... unexpected pos"
            free = shutil.disk_usage(Path(tmp).parent).free
            raise EdgeAttnError(
                f"cannot write '{path}': {str(exc).strip().splitlines()[0]} ({free} bytes free on its disk)"
            ) from None
    return Path(path)


def _approximations(model: nn.Module) -> dict[str, list[str]]:
    """:func:`edgeattn.approx.approximations_in` as sorted lists (a checkpoint's meta holds no sets)."""
    from edgeattn.approx import approximations_in

    return {op: sorted(methods) for op, methods in approximations_in(model).items()}


def save_checkpoint(path: str | Path, model: nn.Module, meta: dict[str, Any]) -> Path:
    """Write ``model``'s weights and ``meta`` (see module docstring) atomically to ``path``; ``meta``'s
    ``"approximations"`` is recorded from ``model``."""
    model = _unwrapped(model)
    if not isinstance(meta, dict):
        raise ValueError(f"save_checkpoint: meta must be a dict with 'model' and 'model_kwargs', got {meta!r:.60}")
    for key in ("model", "model_kwargs"):
        if key not in meta:
            raise ValueError(f"save_checkpoint: meta needs '{key}'")
    meta = dict(meta)
    # a quantized model without meta['quant'] could not be rebuilt (its quantizers' keys would be 'unexpected')
    meta.setdefault("quant", getattr(model, "quant_config", None))
    meta.setdefault("reparameterized", False)
    meta["approximations"] = _approximations(model)  # what the weights were fitted to, whatever model_kwargs say
    if hasattr(meta["quant"], "model_dump"):
        meta["quant"] = meta["quant"].model_dump(mode="json")
    if (meta["quant"] or {}).get("token_adaptive"):
        from edgeattn.quant.adaptive import TOKEN_SCORES

        meta["token_scores"] = TOKEN_SCORES  # what the low-bit quantizers were trained under (see load_checkpoint)
    if meta["quant"]:
        from edgeattn.quant.quantize import uncalibrated_stats

        # their placeholder values are saved too (the state dict must be complete), but loading would mark them
        # measured: load_checkpoint resets these to uncalibrated
        meta["uncalibrated"] = uncalibrated_stats(model)
    payload = {"format": FORMAT, "version": VERSION, "meta": meta, "state_dict": model_state_dict(model)}
    return atomic_torch_save(payload, path)


def _unwrapped(model: nn.Module) -> nn.Module:
    """The module inside ``torch.compile``'s and DDP/DataParallel's wrappers (their state-dict keys carry a
    ``_orig_mod.``/``module.`` prefix that the rebuilt model does not have)."""
    wrappers = (nn.DataParallel, nn.parallel.DistributedDataParallel)
    while True:
        if isinstance(getattr(model, "_orig_mod", None), nn.Module):
            model = model._orig_mod
        elif isinstance(model, wrappers):
            model = model.module
        else:
            return model


def read_checkpoint_file(path: str | Path) -> dict[str, Any]:
    """Load and check the raw payload; a missing or corrupt file raises :class:`EdgeAttnError`."""
    path = Path(path)
    if path.is_dir():
        raise EdgeAttnError(f"checkpoint '{path}' is a folder, not a checkpoint file")
    if not path.is_file():
        raise EdgeAttnError(f"checkpoint '{path}' not found")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, OSError, ValueError) as err:
        raise EdgeAttnError(
            f"checkpoint '{path}' is corrupt or not a torch checkpoint ({type(err).__name__})"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise EdgeAttnError(f"checkpoint '{path}' is not an edgeattn checkpoint (written by 'edgeattn qat')")
    if payload.get("version") != VERSION:
        raise EdgeAttnError(f"checkpoint '{path}' has format version {payload.get('version')}, expected {VERSION}")
    return payload


def build_model(
    meta: dict[str, Any],
    model: nn.Module | None = None,
    source: str = "checkpoint",
    dtype: torch.dtype | None = None,
) -> nn.Module:
    """Rebuild the (possibly reparameterized and quantized) module that ``meta`` describes, untrained.

    ``model``: your own float model (an instance of the saved architecture) to rebuild from instead of the
    registry; it is deep-copied, not changed, and must compute the softmax and GELU methods ``meta`` records.
    ``source`` names the checkpoint in errors. ``dtype``: the floating dtype to build in (the float model is cast
    before it is reparameterized and quantized, so the quantizers are built in it too); ``None`` keeps the
    model's own.
    """
    from edgeattn.models import create_model

    saved = meta.get("approximations")
    if model is not None:
        if saved is not None:
            _check_approximations(model, saved, source)
        model = copy.deepcopy(_unwrapped(model))
        if any(t.is_meta for t in itertools.chain(model.parameters(), model.buffers())):
            model = model.to_empty(device="cpu")  # built on meta to save memory: the weights are loaded next
        return _deploy_and_quantize(_cast(model, dtype), meta)
    try:
        model = create_model(meta["model"], **dict(meta.get("model_kwargs") or {}))
    except (KeyError, TypeError, ValueError) as err:
        hint = "; for your own model pass it: load_checkpoint(path, model=MyModel())"
        raise EdgeAttnError(f"checkpoint meta cannot rebuild model '{meta.get('model')}': {err}{hint}") from None
    if saved is not None:
        _restore_approximations(model, saved, source)
    return _deploy_and_quantize(_cast(model, dtype), meta)


def _cast(model: nn.Module, dtype: torch.dtype | None) -> nn.Module:
    """``model`` in floating ``dtype`` (unchanged for ``None`` or when it is in it already)."""
    from edgeattn.blocks.rep import param_dtype

    return model if dtype is None or param_dtype(model) in (None, dtype) else model.to(dtype)


def _methods(names: list[str]) -> str:
    return ", ".join(f"'{n}'" for n in names) or "none"


def _restore_approximations(model: nn.Module, saved: dict[str, list[str]], source: str) -> None:
    """Give the freshly built registry ``model`` the methods ``saved`` records (one per op: what
    :func:`edgeattn.approx.set_approximations` set); ops that already match are left alone."""
    from edgeattn.approx import set_approximations

    have = _approximations(model)
    for op in ("softmax", "gelu"):
        want = list(saved.get(op) or [])
        if want == have[op]:
            continue
        if len(want) != 1 or not have[op]:
            raise EdgeAttnError(
                f"{source} records {op} {_methods(want)}, the rebuilt model computes {_methods(have[op])}; "
                "pass the saved model: load_checkpoint(path, model=MyModel())"
            )
        set_approximations(model, **{op: want[0]})


def _check_approximations(model: nn.Module, saved: dict[str, list[str]], source: str) -> None:
    """Refuse ``model`` when its softmax/GELU methods differ from the ``saved`` ones: the weights were fitted to
    those, and a silent swap would change every output."""
    have = _approximations(model)
    for op in ("softmax", "gelu"):
        want = list(saved.get(op) or [])
        if have[op] != want:
            raise EdgeAttnError(
                f"{source} was saved with {op} {_methods(want)}, the model given computes {_methods(have[op])}; "
                "give it the saved methods (edgeattn.approx.set_approximations) before loading"
            )


def _deploy_and_quantize(model: nn.Module, meta: dict[str, Any]) -> nn.Module:
    """``model`` (owned here) in the form ``meta`` records: deploy form and quantized as saved."""
    if meta.get("reparameterized"):
        from edgeattn.reparameterize import reparameterize

        model = reparameterize(model, inplace=True)
    if meta.get("quant"):
        from edgeattn.quant.config import QuantConfig
        from edgeattn.quant.quantize import quantize_model

        with warnings.catch_warnings():  # an override's cap or a pattern left float was said at training time
            warnings.filterwarnings("ignore", message="quantize_model: overrides pattern")
            model = quantize_model(model, QuantConfig.parse(meta["quant"], "checkpoint meta 'quant'"), inplace=True)
    return model


def _short(key: str, width: int = 80) -> str:
    return key if len(key) <= width else f"{key[: width // 2 - 2]}...{key[-(width // 2 - 1) :]}"


def _state_mismatch(model: nn.Module, state: dict[str, Any]) -> str | None:
    """The first missing, unexpected or wrongly shaped key of ``state`` for ``model``, e.g.
    ``"missing key 'head.bias' (and 3 more)"``; ``None`` when the keys and shapes all agree."""
    own = model_state_dict(model)
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shape = {k: tuple(getattr(v, "shape", ())) for k, v in state.items()}
    sized = [k for k in own if k in state and tuple(own[k].shape) != shape[k]]
    for what, keys in (("missing key", missing), ("unexpected key", unexpected), ("size mismatch for", sized)):
        if keys:
            more = f" (and {len(keys) - 1} more)" if len(keys) > 1 else ""
            shapes = f": checkpoint {shape[keys[0]]}, model {tuple(own[keys[0]].shape)}" if keys is sized else ""
            return f"{what} '{_short(keys[0])}'{shapes}{more}"
    return None


def _saved_float_dtype(state: dict[str, Any]) -> torch.dtype | None:
    """The one floating dtype of ``state``'s tensors, or ``None`` when there are none or several."""
    dtypes = {v.dtype for v in state.values() if isinstance(v, torch.Tensor) and v.is_floating_point()}
    return dtypes.pop() if len(dtypes) == 1 else None


def load_checkpoint(
    path: str | Path,
    *,
    strip_token_adaptive: bool = False,
    model: nn.Module | None = None,
    dtype: torch.dtype | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """``(model, meta)`` from a checkpoint written by :func:`save_checkpoint`; the model is in eval mode.

    The model comes back in the floating dtype its weights were saved in (a float64 model's checkpoint loads as
    float64, not rounded into a float32 model), or in ``dtype`` when given (export and hls ask for float32).

    A registry model is rebuilt from ``meta``; a model of your own needs ``model``, a float instance of its
    architecture, which is copied, reparameterized and quantized as ``meta`` says before the weights are loaded
    strictly. The softmax/GELU methods ``meta`` records (``"approximations"``) are re-applied to a rebuilt registry
    model; a ``model`` computing other ones is refused (:class:`EdgeAttnError`).

    With ``strip_token_adaptive`` (export, hls), token-adaptive quant points are replaced by their high-bit
    quantizers (:func:`edgeattn.quant.adaptive.strip_token_adaptive`). Without it, a token-adaptive model with
    pooled-key attention saved before those maps scored tokens is refused (its low-bit quantizers there were never
    trained: :func:`edgeattn.quant.adaptive.check_token_scores`).
    """
    if model is not None and not isinstance(model, nn.Module):
        what = f"the class {model.__name__}; pass an instance" if isinstance(model, type) else type(model).__name__
        raise EdgeAttnError(f"load_checkpoint: model must be an nn.Module instance, got {what}")
    if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise EdgeAttnError(
            f"load_checkpoint: dtype must be a floating torch.dtype such as torch.float32, got {dtype!r}"
        )
    payload = read_checkpoint_file(path)
    meta = payload["meta"]
    # the model the weights were loaded into: the caller's (named by its class), else the registry's
    target = f"your {type(model).__name__}" if model is not None else f"model '{meta.get('model')}'"
    # built in the saved dtype: loading float64 weights into a float32 model would round them
    model = build_model(meta, model, f"checkpoint '{path}'", dtype or _saved_float_dtype(payload["state_dict"]))
    try:
        model.load_state_dict(payload["state_dict"], strict=True)
    except RuntimeError as err:
        detail = _state_mismatch(model, payload["state_dict"]) or str(err).strip().splitlines()[-1].strip()
        raise EdgeAttnError(
            f"checkpoint '{path}' (a '{meta.get('model')}' model) does not match {target}: {detail}; check meta's "
            f"reparameterized ({meta.get('reparameterized')}), quant and model_kwargs against the model"
        ) from None
    if meta.get("uncalibrated"):
        from edgeattn.quant.quantize import reset_activation_stats

        reset_activation_stats(model, set(meta["uncalibrated"]))
    if (meta.get("quant") or {}).get("token_adaptive"):
        from edgeattn.quant import adaptive

        if strip_token_adaptive:
            adaptive.strip_token_adaptive(model)
        else:
            adaptive.check_token_scores(model, meta.get("token_scores"), f"checkpoint '{path}'")
    return model.eval(), meta
