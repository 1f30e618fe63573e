"""The settings of one ``edgeattn qat`` run: :class:`TrainConfig` (with its :class:`LossConfig`), read from a YAML
file (:func:`read_config_file`), a named preset (:data:`PRESETS`, :func:`preset_config`) and command-line flags
(:func:`build_config`), and the run's :class:`~edgeattn.quant.config.QuantConfig` from the profile
(:func:`quant_config_for`, which refuses a ``quant:`` section that lifts the profile's caps).

Part of the QAT trainer; :mod:`edgeattn.quant.train` re-exports its public names.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal, get_args

import yaml
from edgeattn.quant.config import QuantConfig, bits_problem, format_validation_error
from edgeattn.quant.losses import DISTRIBUTION_ROW_FLOOR
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from edgeattn.data import DEFAULT_RESIZE, Resize
from edgeattn.errors import EdgeAttnError
from edgeattn.hostinfo import MAX_SEED, MAX_THREADS  # bounds shared with export, profile and hls
from edgeattn.yaml_files import describe_yaml_error, load_yaml, read_utf8

LANGUAGE_MODELS = ("tiny_llama",)
BUILTIN_DATA = ("digits", "stdlib")  # the data sets that ship with edgeattn; any other ``data`` is a path
# QuantConfig fields that TrainConfig sets itself: in ``quant`` they would silently fight the top-level setting
OWNED_QUANT_KEYS = {
    "weight_bits": "bits (e.g. bits: w4a8; per layer: quant.overrides)",
    "act_bits": "bits (e.g. bits: w4a8; per layer: quant.overrides)",
    "token_adaptive": "token_adaptive",
    "token_ratio": "token_ratio",
    "calibration": "calibration",
}


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The settings mapping of a YAML config file (an empty file is no settings); one clear error for a missing,
    non-UTF-8, invalid or non-mapping file, or a key given twice."""
    path = Path(path)
    if path.is_dir():
        raise EdgeAttnError(f"config file '{path}' is a folder, not a file")
    if not path.is_file():
        raise EdgeAttnError(f"config file '{path}' not found")
    text = read_utf8(path)
    if text is None:
        raise EdgeAttnError(f"config file '{path}': not UTF-8 text (is it a YAML config?)")
    try:
        data = load_yaml(text)
    except yaml.YAMLError as err:
        raise EdgeAttnError(f"config file '{path}': {describe_yaml_error(err)}") from None
    if data is None:  # empty, or only comments
        return {}
    if not isinstance(data, dict):
        raise EdgeAttnError(f"config file '{path}': expected a mapping of settings, got {type(data).__name__}")
    return data


class LossConfig(BaseModel):
    """Which EdgeQAT losses are on, and their weights. All off = plain QAT (cross-entropy only)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)  # an inf / nan weight only poisons the loss

    kd: bool = Field(True, description="logit distillation from the FP model")
    kd_alpha: float = Field(0.5, ge=0.0, le=1.0, description="weight of the KD term vs cross-entropy")
    kd_temperature: float = Field(2.0, gt=0.0, description="distillation temperature")
    # Off by default: over 10 seeds (fmvit_t on digits, FP 20 epochs) it raised the attention KL to the FP model
    # 110x at W8A8 and 4.2x at W4A8 (it maximises the Q/K variance) and did not help top-1
    # (-0.06, -0.17 points). Chosen on seeds 0-4, confirmed on 5-9; docs/qat.md, "Ablations over ten seeds".
    entropy: bool = Field(False, description="entropy loss on quantized Q and K (the paper's; off by default)")
    entropy_weight: float = Field(0.1, ge=0.0)
    distribution: bool = Field(True, description="attention-logit distribution loss vs the FP teacher")
    distribution_weight: float = Field(1.0, ge=0.0)
    distribution_row_floor: float = Field(
        DISTRIBUTION_ROW_FLOOR,
        ge=0.0,
        description="floor of a student logit row's norm, relative to the teacher row's, in the cosine (0: none)",
    )


# settings that only concern images, refused when given with text data (each message starts with its key: parse
# names the flag that set it)
IMAGE_ONLY = {
    "resize": "brings images to img_size; it does not apply to a language model's text",
    "img_size": "is the images' size; a language model's text is cut into seq_len windows",
    "in_chans": "is the images' channel count; it does not apply to a language model's text",
}


class TrainConfig(BaseModel):
    """Everything one ``edgeattn qat`` run needs (YAML keys = these field names; unknown keys are errors)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)  # lr, fp_lr, ...: finite numbers only

    model: str = Field("fmvit_t", description="registry name (edgeattn models list)")
    model_kwargs: dict[str, Any] = Field(default_factory=dict, description="extra model factory arguments")
    data: str = Field("digits", description="'digits', 'stdlib', an image folder (root/<class>/*) or a text file")
    img_size: int = Field(32, ge=8, description="vision input size (digits are upsampled to it)")
    resize: Resize = Field(
        DEFAULT_RESIZE,
        description="image folders: how an image becomes img_size x img_size; crop: shorter side scaled to img_size, "
        "centre cropped (aspect kept, timm/torchvision's eval transform); stretch: both sides scaled",
    )
    in_chans: int = Field(3, ge=1)
    seq_len: int = Field(64, ge=2, description="language-model context length")
    corpus_bytes: int = Field(400_000, ge=1000, description="bytes of stdlib source used for 'stdlib'")
    max_train_samples: int | None = Field(None, ge=1, description="cap on training samples (fast runs)")
    max_val_samples: int | None = Field(None, ge=1, description="cap on validation samples")
    profile: str = Field("host-cpu", description="device profile name or YAML path")
    bits: str = Field("w8a8", description="'profile' or wNaM (w8a8, w4a8, w4a4)")
    quant: dict[str, Any] = Field(default_factory=dict, description="QuantConfig field updates (overrides ...)")
    token_adaptive: bool = Field(False, description="EdgeQAT token-importance-aware bits")
    token_ratio: float = Field(0.5, ge=0.0, lt=1.0)  # QuantConfig's range
    losses: LossConfig = Field(default_factory=LossConfig)
    fp_checkpoint: str | None = Field(None, description="start from this FP checkpoint instead of training one")
    fp_epochs: int = Field(6, ge=0, description="epochs of FP training when no fp_checkpoint is given")
    fp_lr: float = Field(2e-3, gt=0.0)
    epochs: int = Field(2, ge=0, description="QAT epochs")
    lr: float = Field(1e-4, gt=0.0, description="QAT peak learning rate (AdamW)")
    lr_schedule: Literal["cosine", "constant", "step"] = Field("cosine")
    grad_clip: float | None = Field(None, gt=0.0, description="clip the QAT gradient's global L2 norm to this")
    weight_decay: float = Field(0.0, ge=0.0, description="QAT weight decay")
    augment_shift: int = Field(
        0,
        ge=0,
        description="vision: shift every training image by a random 0..N pixels per axis each step, FP training "
        "and QAT (edgeattn.data.random_shift); 0 = off",
    )
    batch_size: int = Field(64, ge=1, description="global batch size (split over DDP processes)")
    calib_samples: int = Field(256, ge=1, description="PTQ calibration samples")
    calibration: Literal["percentile", "minmax"] = Field("percentile", description="PTQ statistic")
    seed: int = Field(0, ge=0, le=MAX_SEED, description="seeds the data split, initialisation and data order")
    output_dir: str = Field("runs/qat")
    num_threads: int | None = Field(
        None, ge=1, le=MAX_THREADS, description="torch intra-op threads (default: leave as is)"
    )
    skip_qat: bool = Field(False, description="stop after the PTQ baseline")

    @field_validator("bits")
    @classmethod
    def _bits(cls, v: str) -> str:
        problem = bits_problem(v)
        if problem is not None:  # the key or flag is named in front of this (format_validation_error)
            raise ValueError(f"{problem}, got {v!r}")
        return v.lower()

    @field_validator("output_dir", "fp_checkpoint", "data")
    @classmethod
    def _home(cls, v: str | None) -> str | None:
        # a YAML config's "~/runs" is no shell word: expand it as the shell would, not make a folder named "~"
        return os.path.expanduser(v) if isinstance(v, str) and v.startswith("~") else v

    @field_validator("*", mode="before")
    @classmethod
    def _not_a_bool(cls, v: Any, info: ValidationInfo) -> Any:
        # YAML's true/false are not numbers here (pydantic would read true as 1 in an int or float setting)
        if isinstance(v, bool):
            annotation = cls.model_fields[info.field_name].annotation  # int, float | None, str, ...
            if (set(get_args(annotation)) - {type(None)} or {annotation}) <= {int, float}:
                raise ValueError(f"expected a number, got {v!r}")
        return v

    @field_validator("quant")
    @classmethod
    def _quant_keys(cls, v: dict[str, Any]) -> dict[str, Any]:
        for key in v:
            if key in OWNED_QUANT_KEYS:
                raise ValueError(f"'{key}' is set by the top-level {OWNED_QUANT_KEYS[key]}, not under quant")
            if key not in QuantConfig.model_fields:
                raise ValueError(f"unknown key '{key}' (QuantConfig fields: {', '.join(QuantConfig.model_fields)})")
        return v

    @model_validator(mode="after")
    def _augment_fits(self) -> TrainConfig:
        if self.augment_shift and self.is_language:
            raise ValueError("augment_shift moves images; it does not apply to a language model's text")
        for key, why in IMAGE_ONLY.items():
            if key in self.model_fields_set and self.is_language:  # only when given: the defaults must work
                raise ValueError(f"{key} {why}")
        if self.augment_shift >= self.img_size:
            raise ValueError(f"augment_shift {self.augment_shift} must be smaller than img_size {self.img_size}")
        return self

    @model_validator(mode="after")
    def _data_fits_model(self) -> TrainConfig:
        from edgeattn.models import is_language_model, list_models

        if self.model not in list_models():  # refused with the list of models when the model is built
            return self
        text = self.data == "stdlib" or Path(self.data).is_file()
        images = self.data == "digits" or Path(self.data).is_dir()
        if is_language_model(self.model) and images:
            raise ValueError(
                f"model '{self.model}' is a language model and data '{self.data}' is images: give data 'stdlib' "
                "or a text file"
            )
        if not is_language_model(self.model) and text:
            raise ValueError(
                f"model '{self.model}' is a vision model and data '{self.data}' is text: give data 'digits' or an "
                "image folder (root/<class>/*)"
            )
        return self

    @classmethod
    def parse(cls, data: Any, source: str = "config", flags: dict[str, str] | None = None) -> TrainConfig:
        """Validate a mapping; one clear error line naming the key and where it came from: ``source``, or for a
        key in ``flags`` (setting -> flag) that flag, e.g. ``--threads``."""
        if not isinstance(data, dict):
            raise EdgeAttnError(f"{source}: expected a mapping of settings, got {type(data).__name__}")
        try:
            return cls.model_validate(data)
        except ValidationError as err:
            loc = err.errors()[0]["loc"]
            # a check across settings has no location: its message starts with the setting it refuses
            key = str(loc[0]) if loc else err.errors()[0]["msg"].removeprefix("Value error, ").split(" ", 1)[0]
            if flags and key in flags:
                source = flags[key]
            raise EdgeAttnError(format_validation_error(source, err)) from None

    @classmethod
    def from_yaml(cls, path: str | Path, **updates: Any) -> TrainConfig:
        """Read a YAML config file and apply ``updates`` (flag values) on top."""
        data = read_config_file(path)
        data.update(updates)
        return cls.parse(data, f"config file '{path}'")

    @property
    def is_language(self) -> bool:
        return self.model in LANGUAGE_MODELS or self.data == "stdlib" or Path(self.data).is_file()


# Presets: "demo" is the fast path for `edgeattn demo` (FP 4 epochs + QAT 1 epoch: about 2 minutes on 2 cores).
# "w4a8"/"w4a4": 4-bit weights need a longer, hotter QAT than W8A8 (measured on fmvit_t / digits from one FP
# checkpoint, W4A8 EdgeQAT: 2 epochs at lr 1e-4 -> 91.1 top-1, 6 at 1e-4 -> 93.0, 6 at 5e-4 -> 96.4 = FP32;
# see benchmarks/qat.json). W8A8 keeps lr 1e-4: 5e-4 was no better there. At W4A4, unclipped EdgeQAT stalled 8-26
# points low in 5 of 10 seeds (gradient spikes early in epoch 1); clipping the gradient norm at 1.0 ended every
# stall (96.8 +- 1.2 over 10 seeds, plain QAT with the same clip 96.2; docs/qat.md, "W4A4: gradient clipping").
# The spikes were later traced to single attention-logit rows quantized to ~0 in the distribution loss, now bounded
# by its row floor (LossConfig.distribution_row_floor); the preset keeps the clip as well.
LOW_BIT_QAT: dict[str, Any] = {"epochs": 6, "lr": 5e-4}
PRESETS: dict[str, dict[str, Any]] = {
    "default": {},
    "demo": {"fp_epochs": 4, "epochs": 1, "calib_samples": 128},
    "w4a8": {"bits": "w4a8", **LOW_BIT_QAT},
    "w4a4": {"bits": "w4a4", **LOW_BIT_QAT, "grad_clip": 1.0},
    "llama": {
        "model": "tiny_llama",
        "data": "stdlib",
        "seq_len": 64,
        # 10 FP epochs on every window: validation perplexity 2.24, against 2.86 after 4 epochs; 20 overfit (2.41
        # against 2.26 on the benchmark's validation windows). docs/qat.md, "Language rows from a trained FP model"
        "fp_epochs": 10,
        "epochs": 2,
        "fp_lr": 2e-3,
        # from the same 10 FP models, 2 QAT epochs: perplexity 2.2263 at lr 1e-3 against 2.2425 at 1e-4, lower in 10
        # of 10 seeds (PTQ 2.2461). docs/qat.md, "The llama preset's QAT lr"
        "lr": 1e-3,
        "batch_size": 32,
        "corpus_bytes": 300_000,
    },
}


def preset_config(name: str, **updates: Any) -> TrainConfig:
    """A :class:`TrainConfig` from a named preset (``default``, ``demo``, ``w4a8``, ``w4a4``, ``llama``) plus
    updates."""
    if name not in PRESETS:
        raise EdgeAttnError(f"unknown preset '{name}'; presets: {', '.join(PRESETS)}")
    return TrainConfig.parse({**PRESETS[name], **updates}, f"preset '{name}'")


FLAG_NAMES = {"num_threads": "threads", "output_dir": "output"}  # settings whose flag has another name


def build_config(config_file: str | None = None, preset: str | None = None, **flags: Any) -> TrainConfig:
    """Config from an optional preset, then an optional YAML file, then flags (``None`` flags are ignored)."""
    if preset and preset not in PRESETS:
        raise EdgeAttnError(f"unknown preset '{preset}'; presets: {', '.join(PRESETS)}")
    data: dict[str, Any] = dict(PRESETS[preset]) if preset else {}
    source = f"preset '{preset}'" if preset else "settings"
    if config_file:
        data.update(read_config_file(config_file))
        source = f"config file '{config_file}'"
    losses = data.get("losses")
    if losses is not None and not isinstance(losses, dict):
        raise EdgeAttnError(
            f"{source}: 'losses': expected a mapping (kd, kd_alpha, entropy, distribution, ...), "
            f"got {type(losses).__name__}"
        )
    losses = dict(losses or {})
    given: dict[str, str] = {}  # setting -> the flag that set it, to name it in an error
    for key in list(flags):
        if key.startswith("loss_"):
            value = flags.pop(key)
            if value is not None:
                losses[key[len("loss_") :]] = value
    if losses:
        data["losses"] = losses
    for key, value in flags.items():
        if value is not None:
            data[key] = value
            given[key] = "--" + FLAG_NAMES.get(key, key.replace("_", "-"))
    return TrainConfig.parse(data, source, given)


def default_bits_note(cfg: TrainConfig) -> str | None:
    """One line when ``bits`` was left at its default and the profile's own weight/act bits differ from it, e.g.
    ``bits w8a8 (the default); profile 'zcu102-hls' is W16A16: --bits profile trains at its widths``."""
    if "bits" in cfg.model_fields_set:
        return None
    profile = QuantConfig.from_profile(cfg.profile)
    used = profile.with_bits(cfg.bits)  # a 7-bit-weight profile keeps its cap here: w8a8 means W7A8 on it
    if (used.weight_bits, used.act_bits) == (profile.weight_bits, profile.act_bits):
        return None
    return (
        f"bits {cfg.bits} (the default); profile '{cfg.profile}' is W{profile.weight_bits}A{profile.act_bits}: "
        "--bits profile trains at its widths"
    )


def quant_config_for(cfg: TrainConfig, info: dict[str, Any]) -> QuantConfig:
    """The run's QuantConfig: profile, bit setting, then ``cfg.quant`` updates and the token-adaptive flag."""
    base = QuantConfig.from_profile(cfg.profile).with_bits(cfg.bits)
    data = base.model_dump()
    data.update(calibration=cfg.calibration, token_adaptive=cfg.token_adaptive, token_ratio=cfg.token_ratio)
    if info["task"] == "language":
        # EdgeQAT leaves the o_proj input, embeddings and lm_head in float
        data["float_layers"] = ("*lm_head*", "*.proj_in_quant")
    _refuse_lifted_caps(base, cfg)
    data.update(cfg.quant)
    return QuantConfig.parse(data, "quant settings")


def _refuse_lifted_caps(base: QuantConfig, cfg: TrainConfig) -> None:
    """A ``quant:`` section may lower the profile's hardware caps (``weight_max_bits``, ``kv_max_bits``), not lift
    them: on x86 without VNNI a wider weight or K/V saturates the int8 kernels' 16-bit pair sums, so a null (no cap)
    or a larger value would train a model that the target then computes wrongly."""
    for key in ("weight_max_bits", "kv_max_bits"):
        cap = getattr(base, key)
        if cap is None or key not in cfg.quant:
            continue
        asked = cfg.quant[key]
        if asked is None or (isinstance(asked, int) and asked > cap):
            raise EdgeAttnError(
                f"quant.{key}: {'null' if asked is None else asked} would lift the {cap}-bit cap of profile "
                f"'{cfg.profile}' (x86 without VNNI: wider values saturate its int8 kernels' 16-bit sums); leave {key} "
                f"out or set it to at most {cap}"
            )
