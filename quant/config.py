"""`QuantConfig`: what gets quantized, with how many bits, by which brevitas preset.

A config is built from a device profile (:meth:`QuantConfig.from_profile`), from a bit-setting name
(``"w8a8"``, ``"w4a8"``, ``"w4a4"``, via :meth:`QuantConfig.with_bits`) or field by field. Unknown keys
and bit widths brevitas' integer quantizers cannot do are rejected with an :class:`EdgeAttnError`.

``float_layers`` and ``overrides`` take fnmatch patterns of module names; a pattern that matches a module also
covers every module under it (``"blocks.0"`` leaves the whole first block in float), see :func:`matches_module`.
"""

from __future__ import annotations

import re
from contextvars import ContextVar
from fnmatch import fnmatchcase
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from edgeattn.errors import EdgeAttnError

# Integer quantizers in brevitas need at least 2 levels on each side of zero for a symmetric signed
# grid; above 16 bits the fake-quant grid is finer than float32 rounding of typical activations.
MIN_BITS = 2
MAX_BITS = 16

Preset = Literal["tensorrt", "openvino", "coreml", "fpga", "generic"]
Calibration = Literal["percentile", "minmax"]
WeightScaleInit = Literal["absmax", "mse"]
Importance = Literal["auto", "first", "mean"]

# What an invalid QuantConfig's one-line error names: parse()'s source while it runs, else the class.
_SOURCE: ContextVar[str] = ContextVar("quant_config_source", default="QuantConfig")

_BITS_RE = re.compile(r"w(\d+)a(\d+)")  # used with fullmatch: '$' would accept a trailing newline

# The quant points of K and V: the second operands of the attention matmuls (Q @ K^T, P @ V). An int8 kernel
# without VNNI adds u8 x s8 products in pairs in 16 bits; the first operand spans 0..255 after its +128 shift,
# so the second must stay within +-64 (7 bits) for 2 * 255 * 64 = 32640 to fit, exactly like a weight.
KV_POINTS = ("k_quant", "v_quant")
# The weight bits of such a CPU (x86 without VNNI): 2 * 255 * 64 = 32640 fits 16 bits, 2 * 255 * 128 does not.
NO_VNNI_BITS = 7


def _refuse_bool(value: Any, what: str) -> Any:
    """A bool is an int to pydantic's lax mode (True would become 1 bit): name it instead."""
    if isinstance(value, bool):
        raise ValueError(f"{what} must be a number of bits, got {value}")
    return value


def _check_bits(value: int | None, what: str) -> int | None:
    if value is None:
        return value
    if not MIN_BITS <= value <= MAX_BITS:
        raise ValueError(f"{what} must be between {MIN_BITS} and {MAX_BITS} bits, got {value}")
    return value


class LayerOverride(BaseModel):
    """Per-layer bit widths for mixed precision (any field left out keeps the global value)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    weight_bits: int | None = Field(None, description="weight bits of matching Linear/Conv layers")
    act_bits: int | None = Field(None, description="activation bits of matching quant points")
    float: bool = Field(False, description="leave matching modules in float")

    @field_validator("weight_bits", "act_bits", mode="before")
    @classmethod
    def _not_a_bool(cls, v: Any, info: Any) -> Any:
        return _refuse_bool(v, info.field_name)

    @field_validator("weight_bits")
    @classmethod
    def _wb(cls, v: int | None) -> int | None:
        return _check_bits(v, "weight_bits")

    @field_validator("act_bits")
    @classmethod
    def _ab(cls, v: int | None) -> int | None:
        return _check_bits(v, "act_bits")


class QuantConfig(BaseModel):
    """How a model is quantized. Defaults are the TensorRT-friendly W8A8 setting."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    weight_bits: int = Field(8, description="weight bit width (LSQ-style learned scale, symmetric)")
    act_bits: int = Field(8, description="activation bit width of the quant points")
    softmax_bits: int | None = Field(None, description="softmax-output bit width (default: act_bits)")
    low_act_bits: int = Field(4, description="bits of low-importance tokens (token-adaptive bits)")
    weight_per_channel: bool = Field(True, description="per-output-channel weight scales (axis 0)")
    weight_scale_init: WeightScaleInit = Field(
        "absmax", description="initial weight scale: abs-max, or the MSE-optimal clip (brevitas' MSE grid search)"
    )
    act_signed: bool = Field(True, description="signed activations with zero point 0 (else asymmetric LSQ+)")
    softmax_signed: bool = Field(True, description="signed softmax-output quantizer (TensorRT needs it)")
    bias: Literal["float"] = Field("float", description="bias stays float in the graph (TensorRT-friendly)")
    preset: Preset = Field("generic", description="quantizer preset family (fpga: power-of-two scales)")
    calibration: Calibration = Field(
        "percentile", description="activation range statistic used at calibration: percentile or minmax"
    )
    percentile: float = Field(99.99, gt=50.0, le=100.0, description="percentile for 'percentile' calibration")
    quantize_attention: bool = Field(True, description="quantize Q, K, V and the softmax output")
    quantize_linear: bool = Field(
        True, description="quantize Linear layers and the quant points that feed only Linear layers"
    )
    kv_max_bits: int | None = Field(
        None,
        description="at most this many bits for K and V (k_quant, v_quant), the attention matmuls' second operands "
        "(7 on x86 without VNNI, where an 8-bit second operand saturates the int8 kernels' 16-bit pair sums)",
    )
    weight_max_bits: int | None = Field(
        None,
        description="at most this many weight bits in any layer, overrides included (7 on x86 without VNNI, where "
        "8-bit weights saturate the int8 kernels' 16-bit pair sums); None: no cap",
    )
    token_adaptive: bool = Field(False, description="EdgeQAT token-importance-aware activation bits")
    # below 1: the high-bit quantizer needs tokens to calibrate on (every activation at 4 bits: bits w4a4)
    token_ratio: float = Field(0.5, ge=0.0, lt=1.0, description="fraction of tokens that get low_act_bits")
    importance: Importance = Field(
        "auto", description="token score: attention from the first token, or mean attention received"
    )
    float_layers: tuple[str, ...] = Field(
        (),
        description="module-name patterns (fnmatch) left in float with everything under them, e.g. 'head', 'blocks.0'",
    )
    overrides: dict[str, LayerOverride] = Field(
        default_factory=dict,
        description="module-name pattern (fnmatch; covers everything under a match) -> per-layer bit widths",
    )

    def __init__(self, **data: Any) -> None:
        # An invalid config says what is wrong in one line (naming parse()'s source, else "QuantConfig") instead of
        # pydantic's multi-line report, whether it is built from Python or parsed from YAML.
        try:
            super().__init__(**data)
        except ValidationError as err:
            raise EdgeAttnError(format_validation_error(_SOURCE.get(), err)) from None

    @field_validator(
        "weight_bits", "act_bits", "low_act_bits", "softmax_bits", "kv_max_bits", "weight_max_bits", mode="before"
    )
    @classmethod
    def _not_a_bool(cls, v: Any, info: Any) -> Any:
        return _refuse_bool(v, info.field_name)

    @field_validator("weight_bits", "act_bits", "low_act_bits", "softmax_bits", "kv_max_bits", "weight_max_bits")
    @classmethod
    def _bits(cls, v: int | None, info: Any) -> int | None:
        return _check_bits(v, info.field_name)

    @model_validator(mode="after")
    def _low_bits(self) -> QuantConfig:
        if self.token_adaptive and self.low_act_bits > self.act_bits:
            raise ValueError(f"low_act_bits ({self.low_act_bits}) must not exceed act_bits ({self.act_bits})")
        if self.preset == "fpga" and not self.act_signed:
            # the HLS datapath carries activations as signed ap_fixed: an unsigned activation grid has no twin there
            raise ValueError("the fpga preset quantizes activations as signed fixed point; act_signed must be true")
        return self

    # ------------------------------------------------------------------ constructors
    @classmethod
    def parse(cls, data: Any, source: str = "quant config") -> QuantConfig:
        """Validate a mapping (e.g. parsed YAML); errors name ``source`` and the offending field."""
        if isinstance(data, QuantConfig):
            return data
        if not isinstance(data, dict):
            raise EdgeAttnError(f"{source}: expected a mapping of quant fields, got {type(data).__name__}")
        bad_keys = [key for key in data if not isinstance(key, str)]
        if bad_keys:
            raise EdgeAttnError(f"{source}: unknown key '{bad_keys[0]}'")
        # cls(**data), not model_validate: pydantic would wrap __init__'s one-line error in a ValidationError
        token = _SOURCE.set(source)
        try:
            return cls(**data)
        finally:
            _SOURCE.reset(token)

    @classmethod
    def from_profile(cls, profile: Any, **updates: Any) -> QuantConfig:
        """Config from a device profile (name, path or :class:`DeviceProfile`), plus field updates."""
        from edgeattn.device_profile import load_profile

        if not hasattr(profile, "quant"):
            profile = load_profile(profile)
        q = profile.quant
        if q.bias != "float":
            raise EdgeAttnError(
                f"profile '{profile.name}': quant.bias '{q.bias}' is not supported; use 'float' "
                "(brevitas' dynamo export rejects quantized bias and TensorRT rejects int32 DequantizeLinear)"
            )
        data: dict[str, Any] = {
            "weight_bits": q.weight_bits,
            "act_bits": q.act_bits,
            "low_act_bits": min(q.low_act_bits, q.act_bits),
            "weight_per_channel": q.weight_per_channel,
            "act_signed": q.act_signed,
            "softmax_signed": q.softmax_signed,
            "bias": "float",
            "preset": q.preset,
            "quantize_attention": q.quantize_attention,
            "quantize_linear": q.quantize_linear,
            "kv_max_bits": q.kv_max_bits,
            "weight_max_bits": _no_vnni_weight_cap(q),
        }
        data.update(updates)
        return cls.parse(data, f"profile '{profile.name}'")

    def with_bits(self, setting: str) -> QuantConfig:
        """A copy at a bit setting: ``"w8a8"``, ``"w4a8"``, ``"w4a4"`` (any ``wNaM``) or ``"profile"``.

        For ``"profile"`` the config is returned unchanged. A config with ``weight_max_bits`` (x86 without VNNI:
        7) keeps its cap: ``w8a8`` on it means 7-bit weights, since 8-bit weights would saturate there
        (``kv_max_bits`` is kept too).
        """
        if setting == "profile":
            return self
        problem = bits_problem(setting)
        if problem is not None:
            raise EdgeAttnError(f"bits {setting!r}: {problem}")
        m = _BITS_RE.fullmatch(setting.lower())
        assert m is not None  # bits_problem checked it
        wb, ab = int(m.group(1)), int(m.group(2))
        # a config from before weight_max_bits (e.g. a checkpoint's) is capped by the rule from_profile uses
        cap = self.weight_max_bits if self.weight_max_bits is not None else _no_vnni_weight_cap(self)
        if cap is not None:
            wb = min(wb, cap)
        data = self.model_dump()
        data.update(weight_bits=wb, act_bits=ab, low_act_bits=min(self.low_act_bits, ab))
        return QuantConfig.parse(data, f"bits '{setting}'")

    # ------------------------------------------------------------------ per-module lookup
    def is_float(self, name: str) -> bool:
        """True if the module called ``name`` is left in float (a pattern matching it or one of its parents)."""
        if any(matches_module(name, pat) for pat in self.float_layers):
            return True
        return any(o.float for pat, o in self.overrides.items() if matches_module(name, pat))

    def weight_bits_for(self, name: str) -> int:
        """Weight bits for the module called ``name`` (last matching override wins; then capped at
        ``weight_max_bits``)."""
        bits = self.weight_bits
        for pat, o in self.overrides.items():
            if o.weight_bits is not None and matches_module(name, pat):
                bits = o.weight_bits
        if self.weight_max_bits is not None:
            bits = min(bits, self.weight_max_bits)
        return bits

    def act_bits_for(self, name: str) -> int:
        """Activation bits for the quant point called ``name`` (last matching override wins; K and V are then
        capped at ``kv_max_bits``)."""
        bits = self.act_bits
        for pat, o in self.overrides.items():
            if o.act_bits is not None and matches_module(name, pat):
                bits = o.act_bits
        if self.kv_max_bits is not None and name.rsplit(".", 1)[-1] in KV_POINTS:
            bits = min(bits, self.kv_max_bits)
        return bits


def _no_vnni_weight_cap(quant: Any) -> int | None:
    """7 for a profile's quant spec (or a QuantConfig) that targets x86 without VNNI, else ``None``.

    Such a profile (intel-avx2-openvino, host-cpu resolved on that CPU) says so by its 7-bit weights or its 7-bit
    K/V cap, both that CPU's limit; an OpenVINO/generic preset runs there. A copy asking for fewer bits keeps the cap.
    """
    if quant.preset not in ("openvino", "generic"):
        return None
    return NO_VNNI_BITS if NO_VNNI_BITS in (quant.weight_bits, quant.kv_max_bits) else None


def matches_module(name: str, pattern: str) -> bool:
    """True if the fnmatch ``pattern`` matches module ``name`` or one of its parents.

    Parents are whole dotted prefixes, so ``"blocks.0"`` covers ``"blocks.0.attn.qkv"`` but not ``"blocks.01"``,
    and a pattern names a subtree the way a module path does. Glob patterns work on every prefix too
    (``"blocks.*.attn"`` covers each block's attention and everything in it).
    """
    parts = name.split(".")
    return any(fnmatchcase(".".join(parts[:i]), pattern) for i in range(1, len(parts) + 1))


def is_bit_setting(text: Any) -> bool:
    """Whether ``text`` is written like a bit setting (``wNaM``, any bit counts)."""
    return isinstance(text, str) and _BITS_RE.fullmatch(text.lower()) is not None


def bits_problem(setting: Any) -> str | None:
    """What is wrong with a bit setting (``"profile"`` or ``wNaM``), without naming it; ``None`` when it is valid.
    Callers put their own prefix in front (``with_bits``: ``bits 'w0a8': ...``; a config: the key or flag)."""
    if not isinstance(setting, str):
        return f"expected a string, 'profile' or wNaM (e.g. 'w8a8'), got {type(setting).__name__}"
    if setting == "profile":
        return None
    m = _BITS_RE.fullmatch(setting.lower())
    if not m:
        return "expected 'profile' or wNaM, e.g. w8a8, w4a8, w4a4"
    for what, b in (("weight", int(m.group(1))), ("activation", int(m.group(2)))):
        if not MIN_BITS <= b <= MAX_BITS:
            return (
                f"{b}-bit {what}s are not supported (brevitas integer quantizers here: {MIN_BITS} to {MAX_BITS} bits)"
            )
    return None


def format_validation_error(source: str, err: ValidationError) -> str:
    """One line naming ``source``, the field and what is allowed."""
    first = err.errors()[0]
    loc = ".".join(str(part) for part in first["loc"]) or "(top level)"
    if first["type"] == "extra_forbidden":
        return f"{source}: unknown key '{loc}'"
    if first["type"] == "missing":
        return f"{source}: key '{loc}' is required but missing"
    msg = first["msg"]
    if msg.startswith("Value error, "):  # our own validators already say what they got
        if not first["loc"]:  # a check across settings names them itself
            return f"{source}: {msg[len('Value error, ') :]}"
        return f"{source}: '{loc}': {msg[len('Value error, ') :]}"
    got = first.get("input")
    got_text = "" if isinstance(got, (dict, list)) else f", got {got!r}"
    return f"{source}: '{loc}': {msg.lower()}{got_text}"
