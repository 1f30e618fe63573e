"""Device profiles: the single place that says what a deployment target needs.

A profile is a YAML file validated by :class:`DeviceProfile`. Shipped profiles live in the
``edgeattn.profiles`` package (``profiles/`` in the repository); any other YAML file is found by path.

Every field is documented on the model below (``edgeattn profiles show NAME`` prints them); unknown
fields are rejected so that a typo never silently falls back to a default.
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic.fields import FieldInfo

from edgeattn.errors import ProfileError, did_you_mean
from edgeattn.yaml_files import describe_yaml_error, load_yaml, read_utf8

Target = Literal["onnx", "tensorrt", "openvino", "coreml", "hls"]
Runtime = Literal["onnxruntime", "tensorrt", "openvino", "coreml", "vitis_hls"]
Precision = Literal["fp32", "fp16", "int8"]
# A profile's own precision may also be "fixed": the ap_fixed datapath of an HLS-only profile (its widths are in
# the `hls` section), which exports no runtime artifact.
ProfilePrecision = Literal["fp32", "fp16", "int8", "fixed"]
SoftmaxMethod = Literal["exact", "online", "ibert", "shift", "base2"]
GeluMethod = Literal["exact", "tanh", "edgemoe", "edgemoe_mm", "ibert", "sigmoid", "respoly"]


class _Strict(BaseModel):
    # strict: a YAML value of the wrong type is refused, not coerced ("8" or 8.0 for an int, true for 1, 1 for
    # true); a whole number is still accepted where a float is wanted (clock_mhz: 300)
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class RuntimeSpec(_Strict):
    """Which runtime runs the artifact, on which device, and which version line it must work with."""

    name: Runtime = Field(description="runtime that executes the exported artifact")
    version: str = Field(min_length=1, description="supported version line, e.g. '10.x', '11.x', '>=2024.4'")
    device: str = Field("CPU", min_length=1, description="device inside the runtime: CPU, GPU, NPU, ANE, FPGA ...")


class QuantSpec(_Strict):
    """How the model is quantized for this target (brevitas presets are chosen from these)."""

    weight_bits: int = Field(8, ge=2, le=16, description="weight bit width (7 on x86 CPUs without VNNI)")
    act_bits: int = Field(8, ge=2, le=16, description="activation bit width")
    low_act_bits: int = Field(
        4, ge=2, le=16, description="activation bits for low-importance tokens (EdgeQAT token-adaptive bits)"
    )
    weight_per_channel: bool = Field(True, description="per-output-channel weight scales (axis 0)")
    act_signed: bool = Field(True, description="signed activations (zero point 0)")
    softmax_signed: bool = Field(
        True, description="signed int8 for the softmax output (TensorRT rejects unsigned inside a graph)"
    )
    bias: Literal["float", "int32"] = Field("float", description="bias representation in the exported graph")
    preset: Literal["tensorrt", "openvino", "coreml", "fpga", "generic"] = Field(
        "generic", description="brevitas quantizer preset family"
    )
    quantize_attention: bool = Field(
        True,
        description="quantize Q, K, V and the softmax output (false: the attention core stays float, where "
        "the runtime fuses it into one kernel)",
    )
    quantize_linear: bool = Field(
        True,
        description="quantize Linear layers (token GEMMs) and the quant points that feed only them "
        "(false: int8 convolutions only, for runtimes whose int8 GEMM is slower than their float one)",
    )
    kv_max_bits: int | None = Field(
        None,
        ge=2,
        le=16,
        description="at most this many bits for K and V, the second operands of the attention matmuls (7 on x86 "
        "CPUs without VNNI, whose int8 kernels add u8 x s8 products in pairs in 16 bits: an 8-bit second "
        "operand saturates there like an 8-bit weight)",
    )


class Tolerance(_Strict):
    """Parity-gate thresholds for one precision (artifact in its runtime vs the PyTorch reference)."""

    max_abs: float = Field(
        gt=0, allow_inf_nan=False, description="max abs error allowed, relative to the reference output range"
    )
    min_cosine: float = Field(ge=-1, le=1, description="minimum cosine similarity of flattened outputs")
    min_top1_agreement: float = Field(0.0, ge=0, le=1, description="minimum fraction of inputs with the same argmax")


def _default_tolerances() -> dict[str, Tolerance]:
    return {
        "fp32": Tolerance(max_abs=1e-4, min_cosine=0.99999, min_top1_agreement=1.0),
        "fp16": Tolerance(max_abs=2e-2, min_cosine=0.999, min_top1_agreement=0.95),
        "int8": Tolerance(max_abs=5e-2, min_cosine=0.995, min_top1_agreement=0.9),
    }


class ExportSpec(_Strict):
    """Graph-level export settings."""

    opset: int = Field(17, ge=13, le=23, description="ONNX opset (17+ keeps LayerNorm a single op)")
    input_shape: tuple[int, ...] = Field(
        (1, 3, 224, 224),
        strict=False,  # a YAML list is a tuple here; its entries stay strict ints
        description="default model input shape: NCHW, or (batch, tokens) for language models"
    )
    dynamic_batch: bool = Field(False, description="export the batch dimension as dynamic")

    @field_validator("input_shape")
    @classmethod
    def _shape_is_real(cls, shape: tuple[int, ...]) -> tuple[int, ...]:
        # (batch, tokens) for language models or NCHW for vision ones; no empty dims. A 3-dim shape was once
        # taken for (C, H, W) by nothing and for a batch of 3 by the export
        if len(shape) not in (2, 4):
            raise ValueError("needs 2 dims (batch, tokens) or 4 (N, C, H, W)")
        if any(d < 1 for d in shape):
            raise ValueError("every dim must be >= 1")
        return shape


class ApproxSpec(_Strict):
    """Which hardware-friendly nonlinearities the deployed model uses (see edgeattn.approx)."""

    softmax: SoftmaxMethod = Field("exact", description="softmax method")
    gelu: GeluMethod = Field("exact", description="GELU method")


class TensorRTSpec(_Strict):
    """TensorRT build settings."""

    major: Literal[10, 11] = Field(description="TensorRT major version line")
    strongly_typed: bool = Field(
        True, description="precision from the typed graph and its Q/DQ (10.x: --stronglyTyped; 11.x: always)"
    )
    fp16_fallback: bool = Field(
        True, description="10.x only: let non-quantized layers run in FP16 (--fp16); ignored by 11.x"
    )
    workspace_mib: int = Field(1024, ge=16, description="builder workspace limit")
    sm: str | None = Field(None, description="GPU compute capability the profile was written for, e.g. '8.7'")


class OpenVINOSpec(_Strict):
    """OpenVINO conversion and runtime settings."""

    compress_to_fp16: bool = Field(False, description="store FP32 weights as FP16 in the IR")
    hint: Literal["latency", "throughput", "none"] = Field("latency", description="performance hint")
    inference_precision: Literal["f32", "f16", "bf16", "auto"] = Field(
        "f32", description="CPU plugin inference precision for non-quantized ops"
    )


class CoreMLSpec(_Strict):
    """Core ML conversion settings."""

    deployment_target: Literal["iOS16", "iOS17", "iOS18", "macOS13", "macOS14", "macOS15"] = Field(
        "iOS17", description="minimum deployment target of the mlprogram"
    )
    compute_precision: Literal["fp16", "fp32"] = Field("fp16", description="compute precision")
    compute_units: Literal["ALL", "CPU_ONLY", "CPU_AND_GPU", "CPU_AND_NE"] = Field(
        "ALL", description="compute units requested at load time"
    )


class FixedPoint(_Strict):
    """An ap_fixed<width, integer> type: `integer` bits before the binary point, sign included."""

    width: int = Field(ge=2, le=64, description="total bits, sign included")
    integer: int = Field(ge=1, le=64, description="bits before the binary point, sign included")

    @model_validator(mode="after")
    def _fits(self) -> FixedPoint:
        if self.integer > self.width:
            raise ValueError(f"integer bits ({self.integer}) exceed the width ({self.width})")
        return self

    @property
    def frac(self) -> int:
        return self.width - self.integer


class HLSTolerance(_Strict):
    """The accuracy gate of ``edgeattn hls``: the fixed-point design's outputs against the reference model
    (``edgeattn.fpga_hls.gate``; a bound left out keeps its default, max_abs 0.1 and min_cosine 0.99)."""

    max_abs: float | None = Field(
        None, gt=0, allow_inf_nan=False, description="max abs error allowed, as a fraction of the output range"
    )
    min_cosine: float | None = Field(None, ge=-1, le=1, description="smallest per-vector cosine similarity")


MAX_WEIGHT_WORD_BITS = 1024  # ap_uint's default maximum width; also the widest m_axi data port in Vitis HLS


class HLSSpec(_Strict):
    """FPGA (Vitis HLS) settings for the Edge-MoE-style accelerator."""

    part: str = Field(min_length=1, description="FPGA part, e.g. xczu9eg-ffvb1156-2-e (ZCU102)")
    board: str = Field("", description="board name, informational")
    clock_mhz: float = Field(gt=0, allow_inf_nan=False, description="target clock")
    act: FixedPoint = Field(description="activation type")
    weight: FixedPoint = Field(description="linear-layer weight type")
    softmax_in: FixedPoint = Field(FixedPoint(width=16, integer=6), description="attention score type")
    softmax_out_frac: int = Field(8, ge=4, le=24, description="fraction bits of softmax probabilities")
    gelu_table_frac: int = Field(16, ge=8, le=24, description="fraction bits of the GELU residual table")
    attn_parallel: int = Field(4, ge=1, le=64, description="query rows in flight in the attention unit")
    mac_rows: int = Field(16, ge=1, description="rows of the shared multiply-accumulate array")
    mac_cols: int = Field(16, ge=1, description="columns of the shared multiply-accumulate array")
    dsp_budget: int = Field(ge=1, description="DSP slices available")
    bram_budget: int = Field(ge=1, description="BRAM18K blocks available")
    tolerance: HLSTolerance = Field(HLSTolerance(), description="accuracy gate of the generated design")

    @model_validator(mode="after")
    def _weight_word_fits(self) -> HLSSpec:
        # one DDR word holds a weight per MAC row (wword_t = ap_uint<MAC_R * W>, one m_axi beat): ap_uint's
        # default limit and the widest m_axi port are both 1024 bits
        bits = self.mac_rows * self.weight.width
        if bits > MAX_WEIGHT_WORD_BITS:
            raise ValueError(
                f"mac_rows x weight.width is {self.mac_rows} x {self.weight.width} = {bits} bits, over the "
                f"{MAX_WEIGHT_WORD_BITS}-bit weight word (one m_axi beat); at most "
                f"{MAX_WEIGHT_WORD_BITS // self.weight.width} rows at {self.weight.width}-bit weights"
            )
        return self


class DeviceProfile(_Strict):
    """A deployment target: runtime, precision, bit widths, export settings and target sections."""

    name: str = Field(min_length=1, description="profile name (file stem for shipped profiles)")
    description: str = Field("", description="one line for humans")
    targets: tuple[Target, ...] = Field(
        min_length=1, strict=False, description="export targets this profile is written for (a YAML list)"
    )
    runtime: RuntimeSpec
    precision: ProfilePrecision = Field(
        description="default precision of exported artifacts ('fixed': an HLS-only profile's ap_fixed datapath)"
    )
    quant: QuantSpec = QuantSpec()
    export: ExportSpec = ExportSpec()
    approx: ApproxSpec = ApproxSpec()
    tolerance: dict[Precision, Tolerance] = Field(default_factory=_default_tolerances)
    tensorrt: TensorRTSpec | None = None
    openvino: OpenVINOSpec | None = None
    coreml: CoreMLSpec | None = None
    hls: HLSSpec | None = None

    @field_validator("targets")
    @classmethod
    def _targets_once(cls, targets: tuple[str, ...]) -> tuple[str, ...]:
        repeated = sorted({t for t in targets if targets.count(t) > 1})
        if repeated:
            raise ValueError(f"lists {', '.join(repeated)} more than once")
        return targets

    @model_validator(mode="after")
    def _sections_match_targets(self) -> DeviceProfile:
        for target in ("tensorrt", "openvino", "coreml", "hls"):
            if target in self.targets and getattr(self, target) is None:
                raise ValueError(f"targets lists '{target}' but the '{target}' section is missing")
        if self.precision == "fixed" and set(self.targets) != {"hls"}:
            # export reads `precision` for onnx/tensorrt/openvino/coreml, which have no fixed point
            raise ValueError(f"precision 'fixed' is for hls-only profiles, but targets are {list(self.targets)}")
        hls_approx = {"softmax": "online", "gelu": "edgemoe"}  # what the HLS C++ computes (docs/fixed_point.md)
        if "hls" in self.targets and self.approx.model_dump() != hls_approx:
            raise ValueError(
                f"targets lists 'hls', whose C++ datapath computes softmax 'online' and GELU 'edgemoe'; "
                f"approx says softmax '{self.approx.softmax}', gelu '{self.approx.gelu}' "
                "(set approx: {softmax: online, gelu: edgemoe})"
            )
        return self

    def tolerance_for(self, precision: str) -> Tolerance:
        """Parity thresholds for ``precision`` (fp32, fp16 or int8), falling back to the shipped defaults."""
        defaults = _default_tolerances()
        if precision not in defaults:
            raise ProfileError(
                f"no parity tolerance for precision '{precision}': it must be one of {', '.join(defaults)} "
                f"(profile '{self.name}')"
            )
        return self.tolerance.get(precision) or defaults[precision]  # type: ignore[call-overload]

    def require_target(self, target: str) -> None:
        """Raise a ProfileError if this profile is not written for ``target``."""
        if target not in self.targets:
            raise ProfileError(
                f"profile '{self.name}' is for {', '.join(self.targets)}, not '{target}'; "
                f"pick a profile whose targets include '{target}' (edgeattn profiles list)"
            )


HOST_PROFILE = "host-cpu"


def shipped_profile_names() -> list[str]:
    """Names of the profiles shipped inside the package."""
    files = resources.files("edgeattn.profiles")
    return sorted(p.name[: -len(".yaml")] for p in files.iterdir() if p.name.endswith(".yaml"))


def _format_validation_error(source: str, err: ValidationError) -> str:
    first = err.errors()[0]
    parts = [str(part) for part in first["loc"]]
    key = parts[-1:] == ["[key]"]  # pydantic's marker for a bad key of a mapping (tolerance: {int4: ...})
    loc = ".".join(parts[:-2] if key else parts)
    got = first.get("input")
    if first["type"] == "extra_forbidden":
        return f"{source}: unknown field '{loc}'"
    if first["type"] == "missing":
        return f"{source}: field '{loc}' is required but missing"
    got_text = "" if isinstance(got, dict) else f", got {got!r}"
    msg = first["msg"].removeprefix("Value error, ")  # our validators' own sentences
    msg = f"{msg[:1].lower()}{msg[1:]}"  # pydantic's start upper case; only that letter is lowered
    if key:
        return f"{source}: field '{loc}' has the key {got!r}: {msg}"
    return f"{source}: field '{loc}': {msg}{got_text}" if loc else f"{source}: {msg}{got_text}"


def profile_from_mapping(data: Any, source: str) -> DeviceProfile:
    """Validate a parsed YAML mapping; errors name ``source``, the field and what was expected."""
    if data is None:  # yaml.safe_load of an empty or comment-only file
        raise ProfileError(f"{source}: the file is empty; a profile is a mapping of fields (edgeattn profiles fields)")
    if not isinstance(data, dict):
        raise ProfileError(f"{source}: expected a mapping of profile fields, got {type(data).__name__}")
    try:
        return DeviceProfile.model_validate(data)
    except ValidationError as err:
        raise ProfileError(_format_validation_error(source, err)) from None


def _read_yaml(text: str | None, source: str) -> Any:
    if text is None:
        raise ProfileError(f"{source}: not UTF-8 text (is it a YAML profile?)")
    try:
        return load_yaml(text)
    except yaml.YAMLError as err:
        raise ProfileError(f"{source}: {describe_yaml_error(err)}") from None


def load_profile(name_or_path: str | Path) -> DeviceProfile:
    """Load a profile by shipped name (``jetson-orin-trt10``) or by path to a YAML file.

    ``host-cpu`` is resolved against the machine it runs on: its weight bit width and K/V cap are capped at what
    the CPU runs exactly (7 bits on x86 without VNNI, see :mod:`edgeattn.hostinfo`); fewer bits are kept.
    """
    if not isinstance(name_or_path, str | os.PathLike):
        raise ProfileError(
            f"a profile is a shipped name or a path to a YAML file, got {type(name_or_path).__name__}; for a mapping "
            "of profile fields use profile_from_mapping(data, source)"
        )
    text_name = str(name_or_path)
    if not text_name.strip():
        raise ProfileError("empty profile name; give a shipped profile name or a path to a YAML file")
    if names_a_file(name_or_path):
        path = Path(text_name)
        if path.is_dir():
            raise ProfileError(f"{path}: is a folder, not a profile file")
        if not path.is_file():
            raise ProfileError(f"{path}: profile file not found")
        source = str(path)
        data = _read_yaml(read_utf8(path), source)
    else:
        names = shipped_profile_names()
        if text_name not in names:
            hint = did_you_mean(text_name, names)
            raise ProfileError(f"unknown profile '{text_name}'{hint}; shipped profiles: {', '.join(names)}")
        resource = resources.files("edgeattn.profiles").joinpath(f"{text_name}.yaml")
        source = f"profiles/{text_name}.yaml"
        data = _read_yaml(resource.read_text(encoding="utf-8"), source)
    profile = profile_from_mapping(data, source)
    if profile.name == HOST_PROFILE:
        profile = _resolve_host(profile)
    return profile


def names_a_file(name_or_path: str | Path) -> bool:
    """Whether ``name_or_path`` is a path rather than a shipped profile name.

    A ``.yaml``/``.yml`` name or one with a folder in it is a path. A bare shipped name is the shipped
    profile even where the working directory holds a file or folder of that name (``-o zcu102-hls``); write
    ``./NAME`` for that file, or pass a ``Path`` (which drops the ``./``): a ``Path`` is always a path. Any other
    bare name is a path if it exists.
    """
    if isinstance(name_or_path, os.PathLike):
        return True
    text = str(name_or_path)
    if Path(text).suffix in (".yaml", ".yml") or "/" in text or os.sep in text:
        return True
    if text in shipped_profile_names():
        return False
    try:
        return Path(text).exists()
    except OSError:  # a name too long to be a file name is no file
        return False


def _resolve_host(profile: DeviceProfile) -> DeviceProfile:
    from edgeattn.hostinfo import detect_host

    host = detect_host()
    # caps, not values: the CPU's limit lowers the profile's bits and never raises them (a copy of host-cpu.yaml
    # that asks for 4-bit weights keeps them); the shipped file's 8-bit weights and no K/V cap become the CPU's
    quant = profile.quant
    update = {
        "weight_bits": min(quant.weight_bits, host.recommended_weight_bits),
        "kv_max_bits": min(
            (b for b in (quant.kv_max_bits, host.recommended_kv_max_bits) if b is not None), default=None
        ),
    }
    if all(getattr(quant, k) == v for k, v in update.items()):
        return profile
    return profile.model_copy(update={"quant": profile.quant.model_copy(update=update)})


def describe_fields(model: type[BaseModel] = DeviceProfile, prefix: str = "") -> list[tuple[str, str, str]]:
    """(dotted field, type, description) for every field of the schema, for documentation.

    The type says what a YAML author may write: the allowed values of a choice, the range of a number, and
    ``required`` or the default. Entries of the ``tolerance`` map are named ``tolerance.<fp32|fp16|int8>.FIELD``.
    """
    rows: list[tuple[str, str, str]] = []
    for name, field in model.model_fields.items():
        annotation = field.annotation
        sub = _nested_model(annotation)
        description = field.description or (sub.__doc__ or "").strip().split("\n")[0]
        rows.append((prefix + name, _field_type_text(field), description))
        if sub is not None:
            key = get_args(annotation)[0] if get_origin(annotation) is dict else None
            inner = f"<{'|'.join(map(str, get_args(key)))}>." if key is not None else ""
            rows.extend(describe_fields(sub, f"{prefix}{name}.{inner}"))
    return rows


def _field_type_text(field: FieldInfo) -> str:
    """``'int 2..16, default 8'``, ``'fp32 | fp16 | int8, required'``: type, range and default of one field."""
    kind = _annotation_text(field.annotation)
    nullable = kind.endswith(" or null")
    parts = [kind.removesuffix(" or null")]
    attrs = {"Ge": "ge", "Gt": "gt", "Le": "le", "MinLen": "min_length"}  # annotated_types constraints
    named = ((type(m).__name__, m) for m in field.metadata)
    bounds = {cls: getattr(m, attrs[cls]) for cls, m in named if cls in attrs}
    lo, hi = bounds.get("Ge"), bounds.get("Le")
    if lo is not None and hi is not None:
        parts[0] += f" {lo}..{hi}"
    else:
        parts[0] += "".join(f" {op} {bounds[k]}" for k, op in (("Ge", ">="), ("Gt", ">"), ("Le", "<=")) if k in bounds)
    if nullable:
        parts[0] += " or null"
    if bounds.get("MinLen"):
        parts.append("non-empty")
    if field.is_required():
        parts.append("required")
    else:
        default = field.get_default(call_default_factory=True)
        if default is None or isinstance(default, (BaseModel, dict)):
            parts.append("optional")
        else:
            parts.append(f"default {_yaml_text(default)}")
    return ", ".join(parts)


def _yaml_text(value: Any) -> str:
    """A default as it is written in YAML: ``true``, ``''``, ``[1, 3, 224, 224]``."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str):
        return value or "''"
    return str(list(value)) if isinstance(value, tuple) else str(value)


def _annotation_text(annotation: Any) -> str:
    """A type as a YAML author reads it: ``a | b`` for choices, ``list of int``, ``section``, ``X or null``."""
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Literal:
        return " | ".join(str(a) for a in args)
    if origin is tuple:
        return f"list of {_annotation_text(args[0])}"
    if origin is dict:
        return f"map {_annotation_text(args[0])} -> section"
    if args and type(None) in args:  # X | None
        inner = [a for a in args if a is not type(None)]
        return " | ".join(_annotation_text(a) for a in inner) + " or null"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "section"
    return getattr(annotation, "__name__", str(annotation))


def _nested_model(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            return arg
    return None
