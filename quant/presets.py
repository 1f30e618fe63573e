"""brevitas quantizer presets per deployment target.

Every quantizer here is one of brevitas' own injector classes specialised with ``.let(...)``:

* weights: ``Int8WeightPerChannelFloat`` (per-tensor: ``Int8WeightPerTensorFloat``) switched to
  ``scaling_impl_type="parameter_from_stats"``: symmetric, narrow range, a learned scale initialised from the
  weights' abs-max (LSQ-style), per output channel on axis 0; with ``weight_scale_init="mse"`` the ``...MSE``
  variants, whose learned scale starts at the clip that minimises the weights' quantization MSE;
* activations: ``Int8ActPerTensorFloat`` (signed, zero point 0, learned scale initialised from runtime statistics);
  unsigned activations use ``ShiftedUint8ActPerTensorFloat`` (learned scale *and* zero point, LSQ+);
* softmax output: initialised from the max rather than a percentile, so the largest probabilities are not
  clipped; signed (``Int8ActPerTensorFloat``: TensorRT rejects unsigned inside a graph) or, with
  ``softmax_signed: false``, unsigned (``Uint8ActPerTensorFloat``): probabilities are >= 0, so the sign bit buys
  nothing;
* ``fpga`` preset: the fixed-point family (``Int8WeightPerTensorFixedPoint``/``Int8ActPerTensorFixedPoint``,
  softmax ``Int8ActPerTensorFixedPoint`` or, unsigned, ``Uint8ActPerTensorFixedPoint``), power-of-two scales, as
  an ``ap_fixed``/``ap_ufixed`` datapath needs;
* bias: none, i.e. float bias in the exported graph (brevitas' Int32 bias makes a DequantizeLinear on int32
  that TensorRT's parser rejects, and its dynamo exporter refuses quantized bias).

Per-target differences come from the profile's bit widths (7-bit weights on x86 without VNNI, 16-bit on the
FPGA) and from ``preset``.
"""

from __future__ import annotations

from typing import Any

from brevitas.core.scaling import ScalingImplType
from brevitas.core.stats import StatsOp
from brevitas.quant import (
    Int8ActPerTensorFixedPoint,
    Int8ActPerTensorFloat,
    Int8WeightPerChannelFloat,
    Int8WeightPerChannelFloatMSE,
    Int8WeightPerTensorFixedPoint,
    Int8WeightPerTensorFixedPointMSE,
    Int8WeightPerTensorFloat,
    Int8WeightPerTensorFloatMSE,
    ShiftedUint8ActPerTensorFloat,
    Uint8ActPerTensorFixedPoint,
    Uint8ActPerTensorFloat,
)
from edgeattn.quant.config import QuantConfig

# Steps of runtime-statistics collection in training mode before the scale becomes a learned parameter
# (brevitas' default is 300; our runs calibrate first, so this only matters for uncalibrated training).
COLLECT_STATS_STEPS = 30


def weight_quant(config: QuantConfig, bits: int) -> Any:
    """Weight quantizer (a brevitas injector) for ``bits``-bit weights under ``config``'s preset."""
    mse = config.weight_scale_init == "mse"
    if config.preset == "fpga":
        base = Int8WeightPerTensorFixedPointMSE if mse else Int8WeightPerTensorFixedPoint
    elif config.weight_per_channel:
        base = Int8WeightPerChannelFloatMSE if mse else Int8WeightPerChannelFloat
    else:
        base = Int8WeightPerTensorFloatMSE if mse else Int8WeightPerTensorFloat
    return base.let(bit_width=bits, scaling_impl_type=ScalingImplType.PARAMETER_FROM_STATS)


def act_quant(config: QuantConfig, bits: int) -> Any:
    """Activation quantizer for a quant point (layer input, Q, K, V, MLP input/hidden)."""
    if config.preset == "fpga":
        base = Int8ActPerTensorFixedPoint
    elif config.act_signed:
        base = Int8ActPerTensorFloat
    else:
        base = ShiftedUint8ActPerTensorFloat
    kwargs: dict[str, Any] = {"bit_width": bits, "collect_stats_steps": COLLECT_STATS_STEPS}
    if config.calibration == "minmax":
        # abs-max for symmetric quantizers, (min, max) interval for the asymmetric one
        kwargs["scaling_stats_op"] = StatsOp.MAX if config.act_signed or config.preset == "fpga" else (StatsOp.MIN_MAX)
        if not config.act_signed and config.preset != "fpga":
            kwargs["zero_point_stats_impl"] = _min_or_zero()
    else:
        kwargs["high_percentile_q"] = config.percentile
        if not config.act_signed and config.preset != "fpga":
            kwargs["low_percentile_q"] = 100.0 - config.percentile
    return base.let(**kwargs)


def softmax_quant(config: QuantConfig, bits: int) -> Any:
    """Quantizer for the softmax output (probabilities in [0, 1]): signed or unsigned as ``softmax_signed`` says,
    power-of-two scaled under the ``fpga`` preset."""
    if config.preset == "fpga":
        base = Int8ActPerTensorFixedPoint if config.softmax_signed else Uint8ActPerTensorFixedPoint
    elif config.softmax_signed:
        base = Int8ActPerTensorFloat
    else:
        base = Uint8ActPerTensorFloat
    return base.let(bit_width=bits, scaling_stats_op=StatsOp.MAX, collect_stats_steps=COLLECT_STATS_STEPS)


def _min_or_zero() -> Any:
    from brevitas.core.stats import NegativeMinOrZero

    return NegativeMinOrZero


def describe(config: QuantConfig) -> dict[str, str]:
    """Names of the brevitas base quantizers ``config`` uses (for reports and docs)."""
    w = weight_quant(config, config.weight_bits)
    a = act_quant(config, config.act_bits)
    s = softmax_quant(config, config.softmax_bits or config.act_bits)
    return {"weight": _base_name(w), "act": _base_name(a), "softmax": _base_name(s), "bias": "float"}


def _base_name(injector: Any) -> str:
    for cls in injector.__mro__:
        if cls.__module__.startswith("brevitas.quant"):
            return cls.__name__
    return injector.__name__
