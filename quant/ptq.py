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


def _inputs(batch: Any) -> torch.Tensor:
    return batch[0] if isinstance(batch, (tuple, list)) else batch


@torch.no_grad()
def calibrate(model: nn.Module, batches: Iterable[Any], max_samples: int = 256) -> int:
    """Run up to ``max_samples`` inputs of ``batches`` ((x, y) tuples or tensors) through ``model`` in
    calibration mode; returns the number of samples used. The model is left in eval mode."""
    seen = 0
    was_training = model.training
    model.eval()
    with calibration_mode(model):
        for batch in batches:
            x = _inputs(batch)
            take = min(len(x), max_samples - seen)
            if take <= 0:
                break
            model(x[:take])
            seen += take
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
