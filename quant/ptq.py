"""Post-training quantization: calibrate activation scales on a few hundred samples.

The statistic (``minmax``: abs-max / min-max, ``percentile``: e.g. the 99.99th percentile of |x|) is part of the
quantizers built by :mod:`edgeattn.quant.presets` from ``QuantConfig.calibration``; this module feeds data through
brevitas' own ``calibration_mode`` (quantization off, statistics averaged over the batches), after which every
activation scale is fixed and the model fake-quantizes. Weight scales need no data (initialised from the weights).

A calibration batch runs as one forward pass unless its activations would not fit in
:data:`CALIBRATION_BYTES`: :func:`ptq` measures one sample's largest layer output on the float model and splits
larger batches (``edge_moe_vit`` at 224 px has 3,137 tokens: a 64-image batch needed over 24 GB). brevitas
averages its statistics over forward passes, so a split batch calibrates slightly differently; batches that fit
(every registered model at its own size, and at 224 px but for ``edge_moe_vit``) are not split.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from typing import Any

import torch
from brevitas.graph.calibrate import calibration_mode
from edgeattn.quant.config import QuantConfig
from edgeattn.quant.quantize import float_home, quantize_model, reset_activation_stats
from torch import nn

from edgeattn.models import eval_mode

__all__ = ["CALIBRATION_BYTES", "calibrate", "ptq", "samples_per_forward"]

# the activation memory one calibration forward may take
CALIBRATION_BYTES = 2 * 1024**3
# a calibration forward's peak per sample, in multiples of its largest layer output: the float output, its
# fake-quantized copy, the statistic's working copies (a percentile sorts one) and the next layer's input
_PEAK_PER_LARGEST_OUTPUT = 6


def _inputs(batch: Any) -> torch.Tensor | dict[str, torch.Tensor]:
    """The model input of one calibration batch: a tensor, the first item of an ``(x, y)`` tuple/list, or a dict
    of keyword inputs (models with several inputs)."""
    x = batch[0] if isinstance(batch, (tuple, list)) and batch else batch
    if isinstance(x, torch.Tensor) and x.dim() > 0:
        return x
    if isinstance(x, dict) and x and all(isinstance(v, torch.Tensor) and v.dim() > 0 for v in x.values()):
        lengths = {len(v) for v in x.values()}
        if len(lengths) != 1:
            raise ValueError(f"calibrate: the tensors of a dict batch differ in batch size: {sorted(lengths)}")
        return x
    raise TypeError(
        "calibrate: each batch must be a tensor, an (x, y) tuple or a dict of keyword-input tensors with a batch "
        f"dimension, got {type(x).__name__}"
    )


def _forward(model: nn.Module, x: torch.Tensor | dict[str, torch.Tensor], start: int, n: int) -> None:
    """``model`` on samples ``start .. start + n`` of ``x`` (a tensor, or a dict of keyword inputs)."""
    if isinstance(x, dict):
        model(**{k: v[start : start + n] for k, v in x.items()})
    else:
        model(x[start : start + n])


def _check_dtype(x: torch.Tensor | dict[str, torch.Tensor], home: dict[str, Any] | None) -> None:
    """One line for float inputs in another dtype than the model's (brevitas failed inside a layer)."""
    if home is None:
        return
    for value in x.values() if isinstance(x, dict) else [x]:
        if value.is_floating_point() and value.dtype != home["dtype"]:
            raise ValueError(
                f"calibrate: a batch is {value.dtype} but the model computes in {home['dtype']}; convert the batches "
                f"with .to({home['dtype']}) or the model with .to({value.dtype})"
            )


@torch.no_grad()
def samples_per_forward(model: nn.Module, batch: Any, budget: int | None = None) -> int:
    """How many samples of ``batch``'s kind one calibration forward may take within ``budget`` bytes (default
    :data:`CALIBRATION_BYTES`): measured from the largest layer output of a one-sample forward of the float
    ``model`` (eval mode; every module's training flag is restored), times a peak factor for calibration."""
    budget = CALIBRATION_BYTES if budget is None else budget
    largest = [0]

    def note(module: nn.Module, args: Any, out: Any) -> None:
        if isinstance(out, torch.Tensor):
            largest[0] = max(largest[0], out.numel() * out.element_size())

    leaves = [m for m in model.modules() if not any(True for _ in m.children())]
    hooks = [m.register_forward_hook(note) for m in leaves]
    try:
        with eval_mode(model):
            _forward(model, _inputs(batch), 0, 1)
    finally:
        for h in hooks:
            h.remove()
    return max(1, budget // max(1, largest[0] * _PEAK_PER_LARGEST_OUTPUT))


@torch.no_grad()
def calibrate(
    model: nn.Module, batches: Iterable[Any], max_samples: int = 256, max_batch: int | None = None
) -> int:
    """Run up to ``max_samples`` inputs of ``batches`` (tensors, (x, y) tuples, or dicts of keyword inputs for a
    model with several inputs) through ``model`` in calibration mode, at most ``max_batch`` samples per forward
    pass (default: each batch whole); returns the number of samples used. The model's training flag is kept.

    The activation scales are measured afresh from these batches: a model calibrated before, or loaded from a
    checkpoint, is recalibrated (brevitas alone ignored a second calibration or mixed it with the old scale)."""
    if isinstance(max_samples, bool) or not isinstance(max_samples, int) or max_samples < 1:
        raise ValueError(f"calibrate: max_samples must be an integer >= 1, got {max_samples!r}")
    if max_batch is not None and (isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch < 1):
        raise ValueError(f"calibrate: max_batch must be an integer >= 1 or None, got {max_batch!r}")
    seen = 0
    home = float_home(model)
    # a batch that raises must not leave the caller's model in eval mode; each module keeps its own flag
    with eval_mode(model), calibration_mode(model):
        for batch in batches:
            x = _inputs(batch)
            size = len(next(iter(x.values()))) if isinstance(x, dict) else len(x)
            if seen >= max_samples:
                break
            take = min(size, max_samples - seen)
            if take == 0:  # an empty batch: the next one may hold samples
                continue
            _check_dtype(x, home)
            if seen == 0:  # the first usable batch is in hand: only now forget the old scales
                reset_activation_stats(model)
            # parts of near-equal size: brevitas weighs every forward pass alike
            parts = 1 if max_batch is None else -(-take // max_batch)
            for k in range(parts):
                start, stop = k * take // parts, (k + 1) * take // parts
                _forward(model, x, start, stop - start)
            seen += take
    if seen == 0:
        raise ValueError("calibrate: no calibration samples were given")
    return seen


def ptq(
    model: nn.Module,
    config_or_profile: Any,
    batches: Iterable[Any],
    max_samples: int = 256,
    method: str | None = None,
) -> nn.Module:
    """Quantize a float (deploy-form) ``model`` and calibrate it: the PTQ baseline.

    ``method`` (``"minmax"`` or ``"percentile"``) overrides the config's calibration statistic.
    """
    from edgeattn.quant.quantize import resolve_config

    config = resolve_config(config_or_profile) if config_or_profile is not None else QuantConfig()
    if method is not None:
        config = QuantConfig.parse({**config.model_dump(), "calibration": method}, "ptq method")
    qmodel = quantize_model(model, config)  # a copy: ``model`` stays float
    batches = iter(batches)
    first = next(batches, None)
    # measured on the float model: its forward changes nothing, while a forward of qmodel would calibrate
    per_forward = samples_per_forward(model, first) if first is not None else None
    calibrate(qmodel, [] if first is None else itertools.chain([first], batches), max_samples, per_forward)
    return qmodel.eval()
