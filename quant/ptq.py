"""Post-training quantization: calibrate activation scales on a few hundred samples.

The statistic (``minmax``: abs-max / min-max, ``percentile``: e.g. the 99.99th percentile of |x|) is part of the
quantizers built by :mod:`edgeattn.quant.presets` from ``QuantConfig.calibration``; this module feeds data through
brevitas' own ``calibration_mode`` (quantization off, statistics averaged over the batches), after which every
activation scale is fixed and the model fake-quantizes. Weight scales need no data (initialised from the weights).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from brevitas.graph.calibrate import calibration_mode
from edgeattn.quant.config import QuantConfig
from edgeattn.quant.quantize import quantize_model
from torch import nn


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


@torch.no_grad()
def calibrate(model: nn.Module, batches: Iterable[Any], max_samples: int = 256) -> int:
    """Run up to ``max_samples`` inputs of ``batches`` (tensors, (x, y) tuples, or dicts of keyword inputs for a
    model with several inputs) through ``model`` in calibration mode; returns the number of samples used. The
    model's training flag is kept."""
    if isinstance(max_samples, bool) or not isinstance(max_samples, int) or max_samples < 1:
        raise ValueError(f"calibrate: max_samples must be an integer >= 1, got {max_samples!r}")
    seen = 0
    was_training = model.training
    model.eval()
    try:
        with calibration_mode(model):
            for batch in batches:
                x = _inputs(batch)
                size = len(next(iter(x.values()))) if isinstance(x, dict) else len(x)
                take = min(size, max_samples - seen)
                if take <= 0:
                    break
                if isinstance(x, dict):
                    model(**{k: v[:take] for k, v in x.items()})
                else:
                    model(x[:take])
                seen += take
    finally:  # a batch that raises must not leave the caller's model in eval mode
        model.train(was_training)
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
    qmodel = quantize_model(model, config)
    calibrate(qmodel, batches, max_samples=max_samples)
    return qmodel.eval()
