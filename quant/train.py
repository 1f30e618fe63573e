"""The QAT trainer: FP model -> deploy form -> PTQ baseline -> (Edge)QAT fine-tuning -> evaluation.

Python API::

    from edgeattn.quant.train import TrainConfig, run
    result = run(TrainConfig(model="fmvit_t", data="digits", bits="w8a8", profile="host-cpu"))
    result["fp32"], result["ptq"], result["qat"]       # top-1 % (vision) or perplexity (language)

Command line (``edgeattn qat`` itself, the same flags), also under torch's distributed launcher::

    python -m edgeattn.quant.train --config run.yaml --epochs 3
    torchrun --nproc_per_node 2 -m edgeattn.quant.train --config run.yaml     # DDP on gloo (CPU)

Flow: build the FP model (load ``fp_checkpoint`` or train it for ``fp_epochs``), reparameterize it
(``edgeattn.reparameterize``), quantize (``quantize_model``) and calibrate on ``calib_samples`` training samples
(the PTQ baseline, evaluated), then fine-tune the PTQ model with the enabled losses (the teacher is the FP deploy
model) and evaluate. Every epoch writes ``metrics.json``, ``state.pt`` (everything ``--resume`` needs: model,
optimizer, scheduler, RNG states; the data order is a function of seed and epoch) and ``qat_last.pt`` (a checkpoint
for ``load_checkpoint``), all atomically. Ctrl-C / SIGTERM stop at the next step boundary and keep the last complete
epoch's files; so does a non-finite loss, weight or validation figure (:class:`TrainingDiverged`, on every rank at
the same step: the per-step stop flag and divergence flag share one all-reduce).

Guards (each a one-line :class:`EdgeAttnError` before any work): ``--resume`` needs the same settings as the run it
continues (except ``num_threads`` and ``output_dir``; ``epochs`` too, since the lr schedule spans them all);
``--force`` first removes the previous run's files (:data:`RUN_FILES`, nothing else); an ``fp_checkpoint`` must hold
this run's model, model_kwargs and data and have been trained on the same train/val split (its meta's ``split``,
:func:`split_settings`; a checkpoint from before that field only gets a warning).
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import random
import signal
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from edgeattn.quant.checkpoint import (
    atomic_torch_save,
    load_checkpoint,
    model_state_dict,
    read_checkpoint_file,
    save_checkpoint,
)
from edgeattn.quant.config import QuantConfig, bits_problem, format_validation_error
from edgeattn.quant.losses import (
    DISTRIBUTION_ROW_FLOOR,
    Probe,
    attention_kl,
    distribution_loss,
    entropy_loss,
    kd_loss,
)
from edgeattn.quant.ptq import calibrate
from edgeattn.quant.quantize import quantize_model
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from torch import nn
from torch.utils.data import TensorDataset

from edgeattn.atomic import check_writable_folder
from edgeattn.data import DEFAULT_RESIZE, LEGACY_RESIZE, Resize
from edgeattn.errors import EdgeAttnError
from edgeattn.hostinfo import MAX_SEED, MAX_THREADS  # bounds shared with export, profile and hls
from edgeattn.yaml_files import describe_yaml_error, load_yaml, read_utf8

LANGUAGE_MODELS = ("tiny_llama",)
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
    token_ratio: float = Field(0.5, ge=0.0, le=1.0)
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
        if "resize" in self.model_fields_set and self.is_language:  # only when given: the default must work
            raise ValueError("resize brings images to img_size; it does not apply to a language model's text")
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
            key = str(loc[0]) if loc else ""
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


# ---------------------------------------------------------------------------------------------- data / model
BUILTIN_DATA = ("digits", "stdlib")  # the data sets that ship with edgeattn; any other ``data`` is a path


def load_data(cfg: TrainConfig) -> tuple[TensorDataset, TensorDataset, dict[str, Any]]:
    """(train, val, info) for ``cfg.data``; info has ``task`` ('vision'|'language'), classes or vocab and, for a
    user's folder or file, ``data_fingerprint`` (``edgeattn.data.data_fingerprint``)."""
    from edgeattn import data as D

    if cfg.is_language:
        if cfg.data == "stdlib":
            train = D.stdlib_corpus(cfg.seq_len, "train", max_bytes=cfg.corpus_bytes)
            val = D.stdlib_corpus(cfg.seq_len, "val", max_bytes=cfg.corpus_bytes)
        else:
            train = D.text_file(cfg.data, cfg.seq_len, "train")
            val = D.text_file(cfg.data, cfg.seq_len, "val")
        info: dict[str, Any] = {"task": "language", "vocab_size": 256}
        if cfg.data != "stdlib":
            info["data_fingerprint"] = D.data_fingerprint(cfg.data)
    elif cfg.data == "digits":
        train = D.digits_dataset(cfg.img_size, cfg.in_chans, "train", cfg.seed)
        val = D.digits_dataset(cfg.img_size, cfg.in_chans, "val", cfg.seed)
        info = {"task": "vision", "num_classes": 10, "classes": [str(c) for c in range(10)]}
    else:
        path = Path(cfg.data)
        if not path.exists():
            raise EdgeAttnError(f"data path '{path}' does not exist (use 'digits', 'stdlib', a folder or a file)")
        train, val, classes = D.image_folder_splits(path, cfg.img_size, cfg.in_chans, cfg.seed, cfg.resize)
        info = {"task": "vision", "num_classes": len(classes), "classes": classes}
        info["data_fingerprint"] = D.data_fingerprint(path)
    for name, ds in (("training", train), ("validation", val)):
        if len(ds) == 0:  # refused here, before the run writes anything (an untrained fp.pt, say)
            raise EdgeAttnError(f"data '{cfg.data}': the {name} split is empty; give more samples")
    train = _cap(train, cfg.max_train_samples)
    val = _cap(val, cfg.max_val_samples)
    return train, val, info


def data_meta(cfg: TrainConfig, info: dict[str, Any]) -> dict[str, Any]:
    """What the checkpoints and result.json record about the data besides ``data`` and ``split``: ``classes`` (the
    class names in label order, vision), ``data_path`` (a user's folder or file as an absolute path, so that
    export, profile and hls can find it from any working directory; see ``edgeattn.data.checkpoint_samples``) and,
    for an image folder, ``resize`` (how its images were brought to ``img_size``, so that whatever reads them again
    from the checkpoint prepares the same tensors), and ``data_fingerprint`` (its content then, so that a folder
    or file changed since is not taken for it: ``edgeattn.data.checkpoint_data_problem``)."""
    out: dict[str, Any] = {}
    if "classes" in info:
        out["classes"] = list(info["classes"])
    if cfg.data not in BUILTIN_DATA:
        out["data_path"] = str(Path(cfg.data).resolve())
        if info.get("data_fingerprint"):
            out["data_fingerprint"] = info["data_fingerprint"]
        if info.get("task") == "vision":
            out["resize"] = cfg.resize
    return out


def _cap(ds: TensorDataset, n: int | None) -> TensorDataset:
    """The first ``n`` samples. Digits and text keep their natural order (the benchmarks' caps); an image folder's
    splits come shuffled by seed (``edgeattn.data.image_folder``), so a cap keeps every class."""
    if n is None or n >= len(ds):
        return ds
    return TensorDataset(*(t[:n] for t in ds.tensors))


def split_settings(cfg: TrainConfig) -> dict[str, Any]:
    """The settings that decide which samples are training and which validation samples, recorded in the FP
    checkpoint's meta as ``split``: a teacher evaluated on another split would be scored on samples it trained on.

    Digits and image folders: a stratified split by ``seed`` (plus the input format, ``img_size`` and
    ``in_chans``). Text: positional, the tail is validation, so the seed does not matter but ``seq_len`` and, for
    ``stdlib``, ``corpus_bytes`` do. The sample caps are not part of it: a cap takes from the front of a split."""
    if cfg.data == "stdlib":
        return {"seq_len": cfg.seq_len, "corpus_bytes": cfg.corpus_bytes}
    if cfg.is_language:
        return {"seq_len": cfg.seq_len}
    return {"seed": cfg.seed, "img_size": cfg.img_size, "in_chans": cfg.in_chans}


def model_kwargs_for(cfg: TrainConfig, info: dict[str, Any]) -> dict[str, Any]:
    """Factory arguments from the data (classes, channels, size / vocab, context), the profile's softmax and GELU
    approximations (the model is trained with what it deploys), then ``cfg.model_kwargs``."""
    from edgeattn.device_profile import load_profile
    from edgeattn.models import approximation_kwargs

    if info["task"] == "language":
        base: dict[str, Any] = {"vocab_size": info["vocab_size"], "seq_len": cfg.seq_len}
    else:
        base = {"num_classes": info["num_classes"], "in_chans": cfg.in_chans, "img_size": cfg.img_size}
    for key, value in cfg.model_kwargs.items():  # the data decides these: another value cannot train
        if key in base and value != base[key]:
            where = "the data" if key in ("num_classes", "vocab_size") else f"the top-level {key}"
            raise EdgeAttnError(
                f"model_kwargs: {key}={value!r} contradicts {where} ({key}={base[key]!r}); leave it out of "
                "model_kwargs" + ("" if where == "the data" else f" and set {key} at the top level")
            )
    approx = load_profile(cfg.profile).approx
    return {**base, **approximation_kwargs(cfg.model, approx.softmax, approx.gelu), **cfg.model_kwargs}


def check_model_approximations(cfg: TrainConfig) -> None:
    """Refuse ``model_kwargs`` softmax/gelu that differ from the profile's approx: the trained model would compute
    another function than the one the profile deploys, and ``edgeattn export`` with that profile refuses it."""
    from edgeattn.device_profile import load_profile

    profile = load_profile(cfg.profile)
    for op in ("softmax", "gelu"):
        wanted = getattr(profile.approx, op)
        value = cfg.model_kwargs.get(op, wanted)
        if value != wanted:
            raise EdgeAttnError(
                f"model_kwargs: {op}={value!r} differs from profile '{profile.name}' approx.{op} {wanted!r}, so export "
                f"with that profile would refuse the trained model; drop {op} from model_kwargs (the profile sets "
                f"it), or use a profile whose approx.{op} is {value!r} (e.g. a copy with approx: {{{op}: {value}}})"
            )


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


# ---------------------------------------------------------------------------------------------- distributed
LAUNCH_HINT = "launch with torchrun, which sets both, or unset RANK and WORLD_SIZE for one process"


def dist_env() -> tuple[int, int]:
    """``(rank, world_size)`` from torchrun's ``RANK`` and ``WORLD_SIZE``; ``(0, 1)`` when neither is set.

    One :class:`EdgeAttnError` for a partial or inconsistent pair: a ``RANK=1`` without ``WORLD_SIZE`` would
    otherwise train alone as a non-main process and write nothing, a ``WORLD_SIZE=0`` fail in the first training
    step.
    """
    raw = {name: os.environ.get(name) for name in ("RANK", "WORLD_SIZE")}
    given = {name: value for name, value in raw.items() if value is not None}
    if not given:
        return 0, 1
    if len(given) == 1:
        (name, value), missing = next(iter(given.items())), ({"RANK", "WORLD_SIZE"} - set(given)).pop()
        raise EdgeAttnError(f"environment: {name}={value} is set but {missing} is not; {LAUNCH_HINT}")
    values: dict[str, int] = {}
    for name, value in given.items():
        try:
            values[name] = int(value)
        except ValueError:
            raise EdgeAttnError(f"environment: {name}={value!r} is not a whole number; {LAUNCH_HINT}") from None
    rank, world = values["RANK"], values["WORLD_SIZE"]
    if world < 1 or not 0 <= rank < world:
        raise EdgeAttnError(
            f"environment: RANK={rank} with WORLD_SIZE={world}: need WORLD_SIZE >= 1 and 0 <= RANK < WORLD_SIZE; "
            f"{LAUNCH_HINT}"
        )
    return rank, world


def process_rank() -> int:
    """This process's rank under ``torchrun`` (``RANK``), 0 when not launched by it (see :func:`dist_env`)."""
    return dist_env()[0]


def _launched_rank() -> int:
    """``RANK`` as torchrun sets it when ``WORLD_SIZE`` > 1, else 0; never raises (for deciding who prints)."""
    try:
        return int(os.environ["RANK"]) if int(os.environ.get("WORLD_SIZE", "1")) > 1 else 0
    except (KeyError, ValueError):
        return 0


def check_shards(batch_size: int, n_train: int, world: int) -> None:
    """Refuse a run that ``world`` processes cannot share exactly: ``batch_size`` is global and each process takes
    ``batch_size / world`` samples of every batch (a remainder would silently shrink or grow the batch), and each
    process needs at least one training sample per epoch (else nothing is trained)."""
    if world == 1:
        return
    if batch_size % world:
        lower = batch_size - batch_size % world
        sizes = f"{lower} or {lower + world}" if lower else str(world)
        raise EdgeAttnError(
            f"batch_size {batch_size} is not a multiple of the {world} processes (WORLD_SIZE): it is the global "
            f"batch, split evenly over them; use a batch_size of {sizes}"
        )
    if n_train < world:
        raise EdgeAttnError(
            f"{n_train} training sample(s) for {world} processes (WORLD_SIZE): each needs at least one; use fewer "
            "processes or more samples (max_train_samples)"
        )


class _Dist:
    """Process-group facts; single process when not launched by torchrun."""

    def __init__(self) -> None:
        self.rank, self.world = dist_env()
        self.active = False
        if self.world > 1:
            import torch.distributed as dist

            if not dist.is_initialized():
                dist.init_process_group("gloo")
                self.active = True

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()

    def close(self) -> None:
        if self.active:
            import torch.distributed as dist

            dist.destroy_process_group()

    def any_rank(self, flag: bool) -> bool:
        """True if ``flag`` is set on any process: all ranks stop at the same step (no hanging all-reduce)."""
        return self.any_rank_flags(flag)[0]

    def any_rank_flags(self, *flags: bool) -> tuple[bool, ...]:
        """Each flag OR-ed over the processes, in one all-reduce (the stop and divergence checks of a step)."""
        if self.world == 1:
            return flags
        import torch.distributed as dist

        t = torch.tensor([1.0 if f else 0.0 for f in flags])
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return tuple(bool(v > 0) for v in t.tolist())

    def mean_over_ranks(self, values: dict[str, float]) -> dict[str, float]:
        """Average each value over the processes (identity for one process)."""
        if self.world == 1 or not values:
            return values
        import torch.distributed as dist

        keys = sorted(values)
        t = torch.tensor([values[k] for k in keys], dtype=torch.float64)
        dist.all_reduce(t)
        return {k: float(v) / self.world for k, v in zip(keys, t.tolist(), strict=True)}

    def sum_over_ranks(self, values: list[float]) -> list[float]:
        """Add each value up over the processes, in float64 (identity for one process)."""
        if self.world == 1:
            return values
        import torch.distributed as dist

        t = torch.tensor(values, dtype=torch.float64)
        dist.all_reduce(t)
        return t.tolist()

    def wrap(self, model: nn.Module, example: torch.Tensor) -> nn.Module:
        """``model`` in DDP under torchrun (as is for one process). DDP looks for parameters without a gradient
        after every step only when ``example`` shows some (token-adaptive bits leave the first block's low-bit
        scales unused): the search costs a graph traversal per step, and torch warns on every rank when it finds
        nothing."""
        if self.world == 1:
            return model
        from torch.nn.parallel import DistributedDataParallel as DDP

        return DDP(model, find_unused_parameters=has_unused_parameters(model, example))


def has_unused_parameters(model: nn.Module, example: torch.Tensor) -> bool:
    """True if a forward and backward pass of ``example`` (in eval mode) leaves a trainable parameter of ``model``
    without a gradient. The RNG, the training flag and the gradients are left as they were."""
    grads = {p: p.grad for p in model.parameters()}
    was = model.training
    model.eval()
    try:
        for p in grads:
            p.grad = None
        with torch.random.fork_rng(devices=[]):  # keeps the RNG stream where it was: --resume stays exact
            out = model(example)
            (out[0] if isinstance(out, (tuple, list)) else out).float().sum().backward()
        return any(p.requires_grad and p.grad is None for p in grads)
    finally:
        for p, g in grads.items():
            p.grad = g
        model.train(was)


# ---------------------------------------------------------------------------------------------- stop handling
STOP_NOTICE = "stopping after the current step or stage (Ctrl-C again to stop now)"


class _StopFlag:
    """Turns SIGINT/SIGTERM into a flag checked after every step and at every stage boundary (main thread only).

    The first signal sets ``stop`` and prints :data:`STOP_NOTICE`; a second one raises ``KeyboardInterrupt`` at once,
    or, inside :meth:`holding` (an epoch's files being written), as soon as that block ends."""

    def __init__(self) -> None:
        self.stop = False
        self._old: dict[int, Any] = {}
        self._holding = False
        self._pending = False

    def __enter__(self) -> _StopFlag:
        import threading

        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, _frame: Any) -> None:
        if not self.stop:
            self.stop = True
            print(STOP_NOTICE, file=sys.stderr, flush=True)  # rank > 0's stderr is not shown (see main)
        elif self._holding:
            self._pending = True
        else:
            raise KeyboardInterrupt

    @contextlib.contextmanager
    def holding(self) -> Iterator[None]:
        """Defers a second signal's immediate stop to the end of the block (files that belong together)."""
        self._holding = True
        try:
            yield
        finally:
            self._holding = False
        if self._pending:
            raise KeyboardInterrupt

    def check(self, dist: _Dist) -> None:
        """A stage boundary: raises ``KeyboardInterrupt`` on every process at once if any of them got a signal."""
        if dist.any_rank(self.stop):
            raise KeyboardInterrupt

    def __exit__(self, *exc: object) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


# ---------------------------------------------------------------------------------------------- helpers
def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """The torch, numpy and Python RNG states as tensors, lists and numbers only, so that ``state.pt`` loads with
    ``torch.load(weights_only=True)`` (numpy's state holds an ndarray, which that refuses)."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "numpy": [name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)],
        "python": list(random.getstate()),
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))


def epoch_order(n: int, seed: int, epoch: int, rank: int = 0, world: int = 1) -> torch.Tensor:
    """The sample order of one epoch: a pure function of (seed, epoch), sharded by rank."""
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    perm = torch.randperm(n, generator=g)
    usable = (n // world) * world
    return perm[:usable][rank::world]


def steps_per_epoch(n: int, batch_size: int, world: int = 1) -> int:
    """Optimizer steps per epoch: ``n`` samples sharded like :func:`epoch_order`, ``batch_size`` per rank."""
    return math.ceil((n // world) / batch_size)


def _batches(ds: TensorDataset, order: torch.Tensor, batch_size: int) -> Iterator[tuple[torch.Tensor, ...]]:
    for i in range(0, len(order), batch_size):
        idx = order[i : i + batch_size]
        yield tuple(t[idx] for t in ds.tensors)


def _augmented(
    batches: Iterator[tuple[torch.Tensor, ...]], max_shift: int, stream: int, epoch: int, rank: int
) -> Iterator[tuple[torch.Tensor, ...]]:
    """Training ``(x, y)`` batches with ``x`` randomly shifted (:func:`edgeattn.data.random_shift`). Each batch's
    draws come from a generator seeded by (stream, epoch, step, rank) alone, not from the global RNG: an epoch
    resumed with --resume sees exactly the shifts an uninterrupted run saw, and DDP ranks draw different ones."""
    if not max_shift:
        yield from batches
        return
    from edgeattn.data import random_shift

    for step, (x, *rest) in enumerate(batches):
        g = torch.Generator().manual_seed(((stream * 1_009 + epoch) * 100_003 + step) * 1_031 + rank)
        yield (random_shift(x, max_shift, g), *rest)


def _in_order(ds: TensorDataset, batch_size: int) -> Iterator[tuple[torch.Tensor, ...]]:
    return _batches(ds, torch.arange(len(ds)), batch_size)


def task_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1))


@torch.no_grad()
def validation_metrics(
    model: nn.Module, ds: TensorDataset, task: str, batch_size: int = 128, dist: _Dist | None = None
) -> tuple[float, float]:
    """``(metric, nll)`` of ``model`` on ``ds`` in one pass: top-1 accuracy in % (vision) or perplexity (language),
    and the mean cross-entropy in nats per target (per image, or per predicted token).

    The cross-entropy separates models whose top-1 ties: on a small validation set one image is a coarse step.
    Under torchrun (``dist`` with several processes) each rank scores every ``world``-th sample and the counts are
    added up over the ranks: the same figures as one process, in a ``world``-th of the time. Every rank must call it.
    """
    was = model.training
    model.eval()
    order = torch.arange(len(ds))
    if dist is not None and dist.world > 1:
        order = order[dist.rank :: dist.world]
    correct, total, nll = 0, 0, 0.0
    for x, y in _batches(ds, order, batch_size):
        out = model(x)
        nll += float(F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1), reduction="sum"))
        total += y.numel()
        if task == "vision":
            correct += int((out.argmax(-1) == y).sum())
    model.train(was)
    if dist is not None:
        correct, total, nll = dist.sum_over_ranks([float(correct), float(total), nll])
    mean_nll = nll / max(total, 1)
    if task == "vision":
        return 100.0 * correct / max(total, 1), mean_nll
    return math.exp(mean_nll), mean_nll


def evaluate(model: nn.Module, ds: TensorDataset, task: str, batch_size: int = 128) -> float:
    """Top-1 accuracy in % (vision) or perplexity (language) of ``model`` on ``ds``."""
    return validation_metrics(model, ds, task, batch_size)[0]


@torch.no_grad()
def attention_fidelity(student: nn.Module, teacher: nn.Module, ds: TensorDataset, n: int = 64) -> float | None:
    """Mean KL(FP attention || quantized-model attention) over every attention row of the first ``n`` samples.

    The quantized model's map is its softmax output (computed from its quantized Q and K) before the output
    quantizer; ``None`` if the model has no probed attention."""
    x = ds.tensors[0][:n]
    with Probe(student, ["softmax"]) as ps, Probe(teacher, ["softmax"]) as pt:
        was = student.training
        student.eval()
        student(x)
        teacher(x)
        student.train(was)
        s = [a for a in ps["softmax"] if a.dim() == 4]
        t = [a for a in pt["softmax"] if a.dim() == 4]
    if not s or len(s) != len(t):
        return None
    return float(attention_kl(s, t))


def _make_scheduler(opt: torch.optim.Optimizer, kind: str, total_steps: int) -> torch.optim.lr_scheduler.LRScheduler:
    total_steps = max(total_steps, 1)
    if kind == "cosine":
        return torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total_steps) / total_steps))
        )
    if kind == "step":
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.1 ** (3 * s // total_steps))
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)


def _write_json(path: Path, payload: Any) -> None:
    from edgeattn.cli._common import write_json

    write_json(path, payload)


@contextlib.contextmanager
def _threads(n: int | None) -> Iterator[None]:
    old = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


class _Progress:
    """A rich progress bar on the main process, nothing elsewhere."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._p: Any = None

    def __enter__(self) -> _Progress:
        if self.enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            from edgeattn.cli._common import console

            self._p = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TextColumn("{task.fields[info]}"),
                console=console,
                transient=False,
            )
            self._p.__enter__()
        return self

    def task(self, description: str, total: int) -> Any:
        return self._p.add_task(description, total=total, info="") if self._p else None

    def advance(self, task: Any, info: str = "") -> None:
        if self._p and task is not None:
            self._p.update(task, advance=1, info=info)

    def log(self, text: str) -> None:
        if self._p:
            self._p.console.print(text, highlight=False)

    def __exit__(self, *exc: object) -> None:
        if self._p:
            self._p.__exit__(*exc)


# ---------------------------------------------------------------------------------------------- divergence
class TrainingDiverged(EdgeAttnError):
    """A training loss, validation figure or weight became inf or nan: the run stopped (exit code 1; a result, not
    a bad input). ``result`` is what ``result.json`` records (``status: diverged`` and where)."""

    exit_code = 1

    def __init__(self, message: str, result: dict[str, Any]) -> None:
        super().__init__(message)
        self.result = result


class _Diverged(Exception):
    """Raised inside a training phase, on every rank at once; :func:`_run` turns it into :class:`TrainingDiverged`.
    ``step`` of ``steps`` is 1-based within ``epoch`` (``steps`` 0: found at the end of the epoch, not at a step);
    ``kept``: the QAT epochs already written, whose files stay."""

    def __init__(
        self, stage: str, epoch: int, step: int, steps: int, what: str, kept: list[dict[str, Any]] | None = None
    ) -> None:
        super().__init__(f"{stage} epoch {epoch} step {step}: {what}")
        self.stage, self.epoch, self.step, self.steps, self.what = stage, epoch, step, steps, what
        self.kept = list(kept or [])  # the QAT epochs whose files are on disk (metrics.json's history)


def _nonfinite_loss(value: float) -> str:
    """The reason for a step whose loss is not finite here or on another process."""
    if math.isfinite(value):
        return "the training loss is inf or nan on another process"
    return f"the training loss is {value}"


def _finite_weights(model: nn.Module) -> bool:
    """Whether every floating-point parameter and buffer of ``model`` is finite (once per epoch, not per step)."""
    tensors = [*model.parameters(), *model.buffers()]
    return all(bool(torch.isfinite(t).all()) for t in tensors if t.is_floating_point())


# ---------------------------------------------------------------------------------------------- phases
def _train_fp(
    cfg: TrainConfig,
    model: nn.Module,
    train: TensorDataset,
    dist: _Dist,
    progress: _Progress,
    stop: _StopFlag,
) -> None:
    net = dist.wrap(model, train.tensors[0][:2])
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.fp_lr, weight_decay=0.05)
    epoch_steps = steps_per_epoch(len(train), _local_bs(cfg, dist), dist.world)
    sched = _make_scheduler(opt, "cosine", cfg.fp_epochs * epoch_steps)
    task = progress.task("FP32 training", cfg.fp_epochs * epoch_steps)
    model.train()
    for epoch in range(cfg.fp_epochs):
        order = epoch_order(len(train), cfg.seed + 7, epoch, dist.rank, dist.world)
        batches = _batches(train, order, _local_bs(cfg, dist))
        for step, (x, y) in enumerate(_augmented(batches, cfg.augment_shift, cfg.seed + 7, epoch, dist.rank), 1):
            loss = task_loss(net(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            value = loss.item()  # the progress line reads it anyway: the finiteness check costs no extra sync
            progress.advance(task, f"epoch {epoch + 1} loss {value:.3f}")
            stopped, diverged = dist.any_rank_flags(stop.stop, not math.isfinite(value))
            if diverged:
                raise _Diverged("FP training", epoch + 1, step, epoch_steps, _nonfinite_loss(value))
            if stopped:
                raise KeyboardInterrupt
    model.eval()
    if dist.any_rank(not _finite_weights(model)):  # the last step can overflow the weights with a finite loss
        raise _Diverged("FP training", cfg.fp_epochs, 0, 0, "its weights hold inf or nan")


def _local_bs(cfg: TrainConfig, dist: _Dist) -> int:
    return max(1, cfg.batch_size // dist.world)


@dataclass
class QATLossTerms:
    """The loss terms of one QAT step on one batch, from one forward pass of the student (and one of the teacher).

    ``task`` is the KD loss (``losses.kd``) or the cross-entropy; ``entropy`` and ``distribution`` are the
    unweighted entropy and distribution losses, None where they are off or the model has no attention to read them
    at. ``student_logits`` / ``teacher_logits`` are the attention logits recorded at ``logits_probe`` in forward
    order (the student's with their graph; the teacher's, detached, only where the KD or distribution loss needs
    the teacher, else empty). :meth:`total` is the loss QAT minimises, with the weights of the config.
    """

    task: torch.Tensor
    entropy: torch.Tensor | None
    distribution: torch.Tensor | None
    student_logits: list[torch.Tensor]
    teacher_logits: list[torch.Tensor]
    entropy_weight: float
    distribution_weight: float

    def total(self) -> torch.Tensor:
        """``task + entropy_weight * entropy + distribution_weight * distribution`` (the terms that are on), summed
        in that order."""
        loss = self.task
        if self.entropy is not None:
            loss = loss + self.entropy_weight * self.entropy
        if self.distribution is not None:
            loss = loss + self.distribution_weight * self.distribution
        return loss


def qat_loss_terms(
    cfg: TrainConfig, net: nn.Module, student: nn.Module, teacher: nn.Module, x: torch.Tensor, y: torch.Tensor
) -> QATLossTerms:
    """The QAT loss terms of ``cfg.losses`` on the batch ``(x, y)``: the student runs forward as ``net`` (itself or
    its DDP wrapper) with its Q, K and attention logits recorded, the frozen ``teacher`` without gradients."""
    losses = cfg.losses
    with Probe(student, ["q_quant", "k_quant", "logits_probe"]) as ps:
        out = net(x)
    t_logits: list[torch.Tensor] = []
    if losses.kd:
        with torch.no_grad(), Probe(teacher, ["logits_probe"]) as pt:
            t_out = teacher(x)
            t_logits = list(pt["logits_probe"])
        task = kd_loss(out, t_out, y, alpha=losses.kd_alpha, temperature=losses.kd_temperature)
    else:
        task = task_loss(out, y)
        if losses.distribution:
            with torch.no_grad(), Probe(teacher, ["logits_probe"]) as pt:
                teacher(x)
                t_logits = list(pt["logits_probe"])
    ent = None
    if losses.entropy and ps["q_quant"]:
        ent = entropy_loss(ps["q_quant"], ps["k_quant"])
    s_logits = list(ps["logits_probe"])
    dl = None
    if losses.distribution and s_logits:
        dl = distribution_loss(s_logits, t_logits, losses.distribution_row_floor)
    return QATLossTerms(task, ent, dl, s_logits, t_logits, losses.entropy_weight, losses.distribution_weight)


def _qat_step_loss(
    cfg: TrainConfig, net: nn.Module, student: nn.Module, teacher: nn.Module, x: torch.Tensor, y: torch.Tensor
) -> tuple[torch.Tensor, dict[str, float]]:
    """One QAT step's loss (:func:`qat_loss_terms`' total) and its terms as floats for the epoch's metrics."""
    terms = qat_loss_terms(cfg, net, student, teacher, x, y)
    loss = terms.total()
    parts = {"task": float(terms.task.detach())}
    if terms.entropy is not None:
        parts["entropy"] = float(terms.entropy.detach())
    if terms.distribution is not None:
        parts["distribution"] = float(terms.distribution.detach())
    parts["total"] = float(loss.detach())
    return loss, parts


def run(
    config: TrainConfig | dict[str, Any], *, resume: bool = False, progress: bool = True, force: bool = False
) -> dict[str, Any]:
    """Run FP -> PTQ -> QAT as configured; returns the result dict (also written to ``result.json``).

    Keys: ``fp32``, ``ptq``, ``qat`` (top-1 % or perplexity), ``metric`` ('top1' or 'perplexity'),
    ``fp32_nll``/``ptq_nll``/``qat_nll`` (validation cross-entropy, nats per target),
    ``attn_kl_ptq``/``attn_kl_qat`` (mean KL of attention maps vs FP), ``history`` (per-epoch metrics),
    ``status`` ('done' or 'interrupted'), ``seconds``, ``output_dir`` and the checkpoint paths.
    A training loss, validation figure or weight that becomes inf or nan raises :class:`TrainingDiverged` (exit
    code 1, its ``result`` with status 'diverged' also in ``result.json``); the files of the last complete QAT epoch
    stay as they were and no ``model.pt`` (nor, in FP training, ``fp.pt``) is written.
    An output directory that already holds a run is refused unless ``resume`` (same settings, see the module
    docstring) or ``force`` (removes that run's files first).
    """
    cfg = config if isinstance(config, TrainConfig) else TrainConfig.parse(config)
    with _threads(cfg.num_threads):
        dist = _Dist()
        try:
            with _output_lock(Path(cfg.output_dir), dist.is_main):
                return _run(cfg, resume, progress and dist.is_main, dist, force)
        finally:
            dist.close()


@contextlib.contextmanager
def _output_lock(out_dir: Path, main: bool) -> Iterator[None]:
    """One ``edgeattn qat`` run per output folder at a time: the main process holds an exclusive ``flock`` on the
    folder while the run lasts, so a second run there (with --force, or started at the same moment) is refused in
    one line instead of mixing its files with the first's. A folder created here and left empty is removed."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no advisory locks
        fcntl = None
    if not main or fcntl is None:
        yield
        return
    created = False
    try:
        if not out_dir.exists():
            out_dir.mkdir(parents=True)
            created = True
        fd = os.open(out_dir, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:  # a file, or a folder that cannot be made: _run says so in one line
        yield
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise EdgeAttnError(
                f"output directory '{out_dir}' is in use by another edgeattn qat run; wait for it to finish or "
                "use another --output"
            ) from None
        yield
    finally:
        os.close(fd)
        if created:
            with contextlib.suppress(OSError):  # only while still empty
                out_dir.rmdir()


def frozen_teacher(fp_model: nn.Module, meta: dict[str, Any]) -> nn.Module:
    """The FP model in deploy form (reparameterized unless its checkpoint already is), in eval mode with every
    parameter frozen: the teacher of the QAT losses and the model that PTQ quantizes."""
    from edgeattn.reparameterize import reparameterize

    teacher = fp_model if meta.get("reparameterized") else reparameterize(fp_model, inplace=False)
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


def calibrated_ptq_model(
    cfg: TrainConfig, teacher: nn.Module, qcfg: QuantConfig, train: TensorDataset
) -> nn.Module:
    """The PTQ baseline and QAT's starting point: ``teacher`` quantized with ``qcfg``, its activation ranges
    calibrated on the first ``cfg.calib_samples`` training samples in order."""
    model = quantize_model(teacher, qcfg)
    calibrate(model, _in_order(train, cfg.batch_size), max_samples=cfg.calib_samples)
    return model


def qat_optimizer(
    cfg: TrainConfig, student: nn.Module, steps_per_epoch: int
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """Makes every parameter of the quantized student trainable (the teacher is a separate, frozen model) and
    returns QAT's AdamW and its lr schedule over ``cfg.epochs``."""
    for p in student.parameters():
        p.requires_grad_(True)
    opt = torch.optim.AdamW(list(student.parameters()), lr=cfg.lr, weight_decay=cfg.weight_decay)
    return opt, _make_scheduler(opt, cfg.lr_schedule, cfg.epochs * steps_per_epoch)


# ---------------------------------------------------------------------------------------------- run files
# Every file a run writes into its output directory: what --force removes and what marks a directory as holding a
# run. Nothing else in the directory is touched.
RUN_FILES = ("fp.pt", "ptq.pt", "qat_last.pt", "model.pt", "state.pt", "metrics.json", "result.json")
# Settings that --resume may change: they do not change a single number of the run (where it is written, how many
# threads compute it). Everything else, ``epochs`` included, must match: the lr schedule spans all the epochs, so a
# run extended by --epochs is not the run it would have been uninterrupted.
RESUME_FREE_KEYS = frozenset({"num_threads", "output_dir"})
STATE_KEYS = ("model", "optimizer", "scheduler", "rng", "history", "epoch", "config")


def resumable(out_dir: str | Path) -> bool:
    """Whether ``--resume`` can continue the run in ``out_dir``: it needs ``state.pt`` (a complete QAT epoch) or
    ``fp.pt`` (a finished FP training). A run stopped during FP training has neither and starts over with --force."""
    out_dir = Path(out_dir)
    return (out_dir / "state.pt").is_file() or (out_dir / "fp.pt").is_file()


def _dotted(d: dict[str, Any], key: str = "") -> dict[str, Any]:
    """Nested dicts as one level with dotted keys: {"a": {"b": 1}} -> {"a.b": 1}."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(_dotted(v, f"{key}{k}."))
        else:
            out[f"{key}{k}"] = v
    return out


def _difference(
    saved: dict[str, Any], current: dict[str, Any], ignore: frozenset[str] = frozenset()
) -> tuple[str, Any, Any] | None:
    """The first setting (a dotted key for nested ones) that differs between two settings mappings, as
    ``(key, saved value, current value)`` (``'<unset>'`` where one lacks it); ``None`` when they agree."""
    a = {k: v for k, v in _dotted(saved).items() if k.split(".")[0] not in ignore}
    b = {k: v for k, v in _dotted(current).items() if k.split(".")[0] not in ignore}
    for k in list(b) + [k for k in a if k not in b]:
        if a.get(k, "<unset>") != b.get(k, "<unset>"):
            return k, a.get(k, "<unset>"), b.get(k, "<unset>")
    return None


def _check_resume_config(saved: Any, cfg: TrainConfig, source: Path, data_path: str | None = None) -> None:
    """Refuse to resume a run whose recorded settings differ from ``cfg`` (naming the first differing key).

    ``data_path``: the absolute path of the run's own data as recorded then (``data_meta``). With it, a folder or
    file is the same data when ``cfg.data`` resolves to that path, from whatever working directory and however
    spelled; a relative ``data`` that names another folder from here is refused. Without it (a file from an older
    edgeattn) the two ``data`` settings are compared as paths from the current working directory."""
    if not isinstance(saved, dict):
        raise EdgeAttnError(f"--resume: '{source}' records no run settings; rerun with --force to start over")
    # a setting added to TrainConfig after the run was written: the run had its default (e.g. augment_shift 0),
    # except resize, whose default is not what came before it: those runs stretched their images
    defaults = {**TrainConfig.model_construct().model_dump(mode="json"), "resize": LEGACY_RESIZE}
    saved = {**{k: v for k, v in defaults.items() if k not in saved}, **saved}
    ignore = RESUME_FREE_KEYS if _is_image_folder(cfg) else RESUME_FREE_KEYS | {"resize"}  # it changes no number
    if data_path is not None and cfg.data not in BUILTIN_DATA and saved.get("data") not in BUILTIN_DATA:
        now = str(Path(cfg.data).resolve())
        if now != data_path:
            raise EdgeAttnError(
                f"--resume: the run in '{source.parent}' was made with data={data_path!r}, not {now!r}; resume it "
                "with the same settings, or start a new run (--force or another --output)"
            )
        saved["data"] = cfg.data
    elif _same_data(saved.get("data"), cfg.data):  # the same folder or file, however spelled
        saved["data"] = cfg.data
    diff = _difference(saved, cfg.model_dump(mode="json"), ignore)
    if diff is not None:
        key, was, now = diff
        hint = " (more epochs are a new lr schedule: start a new run from its fp.pt)" if key == "epochs" else ""
        raise EdgeAttnError(
            f"--resume: the run in '{source.parent}' was made with {key}={was!r}, not {now!r}{hint}; resume it "
            "with the same settings, or start a new run (--force or another --output)"
        )


def _load_state(path: Path, cfg: TrainConfig) -> dict[str, Any]:
    """``state.pt`` for --resume, loaded with ``weights_only=True`` and checked against ``cfg``; a corrupt file, one
    from an older edgeattn (pickled numpy RNG state) or a run with other settings is one clear error."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for a bad file; every one means "cannot resume"
        raise EdgeAttnError(
            f"--resume: '{path}' cannot be read ({type(err).__name__}: corrupt, or written by an older edgeattn); "
            "rerun with --force to start over"
        ) from None
    if not isinstance(state, dict) or any(k not in state for k in STATE_KEYS):
        raise EdgeAttnError(f"--resume: '{path}' is not a QAT state file; rerun with --force to start over")
    # a state.pt from before it recorded data_path: the run's checkpoint of the same epoch has it
    data_path = state.get("data_path") or _checkpoint_data_path(path.parent / "qat_last.pt")
    _check_resume_config(state["config"], cfg, path, data_path)
    return state


def _checkpoint_data_path(path: Path) -> str | None:
    """The ``data_path`` a run's checkpoint records; ``None`` where it records none or cannot be read."""
    try:
        return read_checkpoint_file(path)["meta"].get("data_path")
    except EdgeAttnError:
        return None


def _state_fingerprint(state: dict[str, Any], out_dir: Path) -> str | None:
    """The data fingerprint a run's ``state.pt`` records, else its ``qat_last.pt`` of the same epoch (a state.pt
    from before it recorded one); ``None`` where neither does."""
    if state.get("data_fingerprint"):
        return state["data_fingerprint"]
    try:
        return read_checkpoint_file(out_dir / "qat_last.pt")["meta"].get("data_fingerprint")
    except EdgeAttnError:
        return None


def _check_same_content(recorded: str | None, info: dict[str, Any], what: str) -> None:
    """Refuse data whose content is not what a run or checkpoint was trained on: ``recorded`` (its
    ``data_fingerprint``) against this data's (``info``). Nothing to compare for built-in data or a record from
    before fingerprints (its classes are compared in :func:`_check_fp_meta`)."""
    now = info.get("data_fingerprint")
    if recorded is not None and now is not None and recorded != now:
        raise EdgeAttnError(
            f"{what} was trained on other content of this data: files were replaced, added, removed or renamed "
            "since (its data fingerprint differs); restore the data, or train a new model on it (a new run "
            "without that checkpoint)"
        )


def _is_image_folder(cfg: TrainConfig) -> bool:
    """Whether ``cfg.data`` is a user's image folder (the data that ``resize`` applies to)."""
    return cfg.data not in BUILTIN_DATA and Path(cfg.data).is_dir()


def _same_data(a: Any, b: str) -> bool:
    """Whether two ``data`` settings name the same data ('digits', 'stdlib', or the same path however spelled)."""
    if a == b:
        return True
    if not isinstance(a, str) or a in BUILTIN_DATA or b in BUILTIN_DATA:
        return False
    return Path(a).resolve() == Path(b).resolve()


def _check_fp_meta(
    meta: dict[str, Any],
    source: str,
    cfg: TrainConfig,
    kwargs: dict[str, Any],
    split: dict[str, Any],
    warn: bool,
    info: dict[str, Any] | None = None,
) -> None:
    """Refuse an FP checkpoint that is not the model this run describes, that was trained on another train/val
    split or whose class names (``meta["classes"]``, where recorded) are not the data's (``info["classes"]``): the
    same folder with a class renamed has the same count, so labels would silently mean other classes. Warn about
    one from an older edgeattn that does not record its split."""
    if meta.get("quant"):
        raise EdgeAttnError(f"fp_checkpoint '{source}' is quantized; give a float checkpoint")
    if meta.get("model") != cfg.model:
        raise EdgeAttnError(
            f"fp_checkpoint '{source}' holds a '{meta.get('model')}' model, this run is for '{cfg.model}'; "
            f"set model: {meta.get('model')} (and its model_kwargs) or use another checkpoint"
        )
    # compared in JSON form: a checkpoint keeps tuples where a YAML config gives lists. An approximation left out
    # is the factories' default, 'exact' (model_kwargs_for names only the others)
    saved_kwargs, run_kwargs = dict(meta.get("model_kwargs") or {}), dict(kwargs)
    for key in ("softmax", "gelu"):
        if (key in saved_kwargs) != (key in run_kwargs):
            saved_kwargs.setdefault(key, "exact")
            run_kwargs.setdefault(key, "exact")
    diff = _difference(_as_json({"model_kwargs": saved_kwargs}), _as_json({"model_kwargs": run_kwargs}))
    if diff is not None:
        key, was, now = diff
        raise EdgeAttnError(
            f"fp_checkpoint '{source}' was built with {key}={was!r}, this run has {now!r} (model_kwargs, "
            "the profile's approx, img_size, in_chans, seq_len and the data's classes must match)"
        )
    for op in ("softmax", "gelu"):  # methods set after construction, which save_checkpoint records
        saved_methods = (meta.get("approximations") or {}).get(op)
        if saved_methods and saved_methods != [run_kwargs.get(op, "exact")]:
            raise EdgeAttnError(
                f"fp_checkpoint '{source}' computes {op} {', '.join(saved_methods)}, this run builds "
                f"{run_kwargs.get(op, 'exact')!r} (the profile's approx and model_kwargs must match)"
            )
    # "data" as given (relative to the folder that run started in) or "data_path" (made absolute then): either
    # naming this run's data will do; the classes and split checks below still apply
    saved_data = [d for d in (meta.get("data"), meta.get("data_path")) if d is not None]
    if saved_data and not any(_same_data(d, cfg.data) for d in saved_data):  # none: an older edgeattn
        raise EdgeAttnError(
            f"fp_checkpoint '{source}' was trained on data '{saved_data[-1]}', this run uses '{cfg.data}'"
        )
    # a checkpoint that names its data was written by edgeattn qat, which stretched images before resize existed; one
    # that names none (saved from the Python API) says nothing about how its images were prepared
    was = meta.get("resize", LEGACY_RESIZE)
    if saved_data and _is_image_folder(cfg) and was != cfg.resize:
        raise EdgeAttnError(
            f"fp_checkpoint '{source}' was trained on images brought to img_size by resize={was!r}, this run has "
            f"resize={cfg.resize!r}; run with resize={was!r} or train a new FP model (no fp_checkpoint)"
        )
    saved_classes, run_classes = meta.get("classes"), (info or {}).get("classes")
    if saved_classes is not None and run_classes is not None and list(saved_classes) != list(run_classes):
        pairs = zip(list(saved_classes) + [None], list(run_classes) + [None], strict=False)
        label, (was, now) = next((i, ab) for i, ab in enumerate(pairs) if ab[0] != ab[1])
        raise EdgeAttnError(
            f"fp_checkpoint '{source}' was trained on other classes: label {label} is {was!r} there and "
            f"{now!r} in this data"
        )
    saved = meta.get("split")
    if saved is None:
        if warn:  # older checkpoints: still usable, but nothing says which samples the teacher saw
            print(
                f"warning: fp_checkpoint '{source}' does not record its train/val split (an older edgeattn wrote "
                f"it); its validation scores are only honest if it was trained with {split}",
                file=sys.stderr,
            )
        return
    diff = _difference(_as_json(saved), _as_json(split))
    if diff is not None:
        key, was, now = diff
        raise EdgeAttnError(
            f"fp_checkpoint '{source}' was trained with {key}={was!r}, this run has {key}={now!r}: another "
            f"train/val split, so the teacher would be evaluated on samples it was trained on; run with "
            f"{key}={was!r} or train a new FP model (no fp_checkpoint)"
        )


def _as_json(value: Any) -> Any:
    """``value`` as JSON would hold it (tuples become lists), for comparing settings saved in different forms."""
    return json.loads(json.dumps(value, default=str))


def _clear_run(out_dir: Path, keep: Path | None) -> None:
    """--force: remove the previous run's files (:data:`RUN_FILES` and their leftover temp files) from ``out_dir``,
    except ``keep`` (an --fp-checkpoint that lives there). Other files in the folder are left alone."""
    keep = keep.resolve() if keep is not None else None
    for name in RUN_FILES:
        # temp files of atomic writes: ".NAME.<random>.tmp" (checkpoints), ".NAME.<random><suffix>" (JSON)
        temps = [*out_dir.glob(f".{name}.*.tmp"), *out_dir.glob(f".{name}.*{Path(name).suffix}")]
        for path in [out_dir / name, *temps]:
            if path.is_file() and path.resolve() != keep:
                path.unlink()


def _check_quant_patterns(cfg: TrainConfig, model: nn.Module) -> None:
    """Refuse a ``quant.float_layers`` or ``quant.overrides`` pattern that names no module of ``model``: a typo there
    would silently quantize the layer it meant at the run's bits."""
    from edgeattn.quant.config import matches_module

    names = [name for name, _ in model.named_modules() if name]
    patterns = [("float_layers", pat) for pat in cfg.quant.get("float_layers") or ()]
    patterns += [("overrides", pat) for pat in cfg.quant.get("overrides") or {}]
    for where, pat in patterns:
        if not any(matches_module(name, pat) for name in names):
            example = next((n for n, m in model.named_modules() if isinstance(m, nn.Linear)), names[0])
            raise EdgeAttnError(
                f"quant.{where}: pattern '{pat}' matches no module of {cfg.model} (fnmatch over module names such "
                f"as '{example}')"
            )


def _check_model_takes_data(cfg: TrainConfig, model: nn.Module, train: TensorDataset, task: str) -> None:
    """One forward pass of two training samples (eval mode, no gradient, no random draws): a model that cannot
    take the data fails here, before ``--force`` removes anything, not in the first training step."""
    try:
        with torch.no_grad():
            out = model.eval()(train.tensors[0][:2])
    except (RuntimeError, ValueError, IndexError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise EdgeAttnError(f"model '{cfg.model}' cannot take data '{cfg.data}': {first}") from None
    classes = out.shape[-1]
    needed = int(train.tensors[1].max()) + 1  # labels, or next tokens
    if needed > classes:
        raise EdgeAttnError(
            f"model '{cfg.model}' has {classes} outputs but data '{cfg.data}' has {needed} "
            f"{'classes' if task == 'vision' else 'token values'}"
        )


def _run(cfg: TrainConfig, resume: bool, show: bool, dist: _Dist, force: bool) -> dict[str, Any]:
    t0 = time.perf_counter()
    out_dir = Path(cfg.output_dir)
    state_path = out_dir / "state.pt"
    fp_path = out_dir / "fp.pt"
    # ---- every refusal comes before any work or any file is written or removed
    if resume and force:
        raise EdgeAttnError("--resume continues the run in the output directory, --force replaces it: give one")
    if resume and not resumable(out_dir):
        raise EdgeAttnError(
            f"--resume: nothing to resume in '{out_dir}' (no state.pt or fp.pt); use --force to start over"
        )
    if out_dir.exists() and not out_dir.is_dir():
        raise EdgeAttnError(f"output directory '{out_dir}' exists and is not a folder")
    check_writable_folder(out_dir, f"output directory '{out_dir}'")
    existing = [n for n in RUN_FILES if (out_dir / n).is_file()]
    if not resume and not force and existing:
        raise EdgeAttnError(
            f"output directory '{out_dir}' already holds a run ({existing[0]}); "
            "use --resume, --force or another --output"
        )
    state = _load_state(state_path, cfg) if resume and state_path.is_file() else None
    if state is not None and int(state.get("world_size", dist.world)) != dist.world:
        # the epoch's sample order and step count depend on it (epoch_order, steps_per_epoch)
        raise EdgeAttnError(
            f"--resume: the run in '{out_dir}' was made with {state['world_size']} process(es), not {dist.world}; "
            "resume it with the same torchrun --nproc_per_node, or start a new run (--force or another --output)"
        )
    check_model_approximations(cfg)
    train, val, info = load_data(cfg)
    check_shards(cfg.batch_size, len(train), dist.world)
    task = info["task"]
    kwargs = model_kwargs_for(cfg, info)
    split = split_settings(cfg)
    qcfg = quant_config_for(cfg, info)
    fp_source: Path | None = None  # the FP checkpoint to start from, checked here and loaded below
    if cfg.fp_checkpoint:
        fp_source = Path(cfg.fp_checkpoint)
        fp_saved = read_checkpoint_file(fp_source)["meta"]
        _check_fp_meta(fp_saved, str(fp_source), cfg, kwargs, split, dist.is_main, info)
        _check_same_content(fp_saved.get("data_fingerprint"), info, f"fp_checkpoint '{fp_source}'")
    elif resume and fp_path.is_file():
        fp_source = fp_path
        fp_saved = read_checkpoint_file(fp_path)["meta"]
        if state is None and "config" in fp_saved:  # stopped before QAT's first epoch: fp.pt has the settings
            _check_resume_config(fp_saved["config"], cfg, fp_path, fp_saved.get("data_path"))
        _check_fp_meta(fp_saved, str(fp_path), cfg, kwargs, split, dist.is_main, info)
        _check_same_content(fp_saved.get("data_fingerprint"), info, f"--resume: the run in '{out_dir}'")
    if state is not None:  # the QAT epochs: state.pt's record (fp.pt's may come from another run's fp_checkpoint)
        _check_same_content(_state_fingerprint(state, out_dir), info, f"--resume: the run in '{out_dir}'")
    from edgeattn.models import create_model

    # a bad model name or argument, or token-adaptive settings the model cannot take, fail here: before --force
    # removes the previous run and before FP training (the seed below makes this probe leave no trace in the RNG)
    probe = create_model(cfg.model, **kwargs)
    _check_quant_patterns(cfg, probe)
    _check_model_takes_data(cfg, probe, train, task)
    if qcfg.token_adaptive:
        from edgeattn.quant.adaptive import check_token_scores, token_importance

        token_importance(probe, qcfg)
        if state is not None:  # a state.pt from before pooled-key maps scored tokens
            check_token_scores(probe, state.get("token_scores"), f"--resume: '{state_path}'")
    del probe
    if force and dist.is_main:
        _clear_run(out_dir, fp_source)
    dist.barrier()
    seed_everything(cfg.seed)

    recorded_data = data_meta(cfg, info)  # classes and data_path: in every checkpoint and in result.json
    fp_meta = {
        "model": cfg.model,
        "model_kwargs": kwargs,
        "quant": None,
        "reparameterized": False,
        "data": cfg.data,
        "split": split,
        **recorded_data,
        "config": cfg.model_dump(mode="json"),
    }
    result: dict[str, Any] = {
        "model": cfg.model,
        "data": cfg.data,
        "bits": cfg.bits,
        "profile": cfg.profile,
        "metric": "top1" if task == "vision" else "perplexity",
        "quant_config": qcfg.model_dump(mode="json"),
        "losses": cfg.losses.model_dump(),
        "token_adaptive": cfg.token_adaptive,
        "output_dir": os.path.abspath(out_dir),  # absolute: the run's working folder is not recorded
        "world_size": dist.world,
        "split": split,
        "train_samples": len(train),
        "val_samples": len(val),
        **recorded_data,
    }
    stage = "FP training"  # the stage running, recorded if a signal stops the run
    with _StopFlag() as stop, _Progress(show) as prog:
        try:
            # ---- FP model
            if fp_source is not None:
                # loaded here, after seed_everything, as always: building the model draws from the RNG
                fp_model, fp_meta = load_checkpoint(fp_source)
                fp_meta = dict(fp_meta)
            else:
                fp_model = create_model(cfg.model, **kwargs)
                t_fp = time.perf_counter()
                _train_fp(cfg, fp_model, train, dist, prog, stop)
                result["fp_train_seconds"] = time.perf_counter() - t_fp
                stop.check(dist)
            stage = "FP validation"
            result["fp_checkpoint"] = os.path.abspath(cfg.fp_checkpoint or fp_path)
            result["model"] = fp_meta["model"]  # the outputs are labelled with what the FP checkpoint holds
            teacher = frozen_teacher(fp_model, fp_meta)
            result["fp32"], result["fp32_nll"] = validation_metrics(teacher, val, task, dist=dist)
            if fp_source is None:  # saved once validated: a diverged FP model never becomes fp.pt
                if not math.isfinite(result["fp32_nll"]):
                    why = f"its validation cross-entropy is {result['fp32_nll']}"
                    raise _Diverged("FP training", cfg.fp_epochs, 0, 0, why)
                if dist.is_main:
                    save_checkpoint(fp_path, fp_model, fp_meta)
            prog.log(f"FP32 ({result['metric']}): {result['fp32']:.3f}")
            stop.check(dist)
            # ---- PTQ baseline
            stage = "PTQ"
            ptq_model = calibrated_ptq_model(cfg, teacher, qcfg, train)
            stop.check(dist)
            result["ptq"], result["ptq_nll"] = validation_metrics(ptq_model, val, task, dist=dist)
            result["attn_kl_ptq"] = attention_fidelity(ptq_model, teacher, val)
            prog.log(f"PTQ  ({result['metric']}): {result['ptq']:.3f}")
            q_meta = {
                "model": fp_meta["model"],
                "model_kwargs": fp_meta["model_kwargs"],
                "quant": qcfg,
                "reparameterized": True,
                "data": cfg.data,
                "split": split,
                **recorded_data,
            }
            if dist.is_main:
                save_checkpoint(out_dir / "ptq.pt", ptq_model, q_meta)
            stop.check(dist)
            if cfg.skip_qat:
                result.update(qat=None, qat_nll=None, attn_kl_qat=None, history=[], status="done")
                return _finish(result, out_dir, t0, dist)
            # ---- QAT
            stage = "QAT"
            history = _qat(cfg, ptq_model, teacher, train, val, task, q_meta, out_dir, state, dist, prog, stop)
            result["history"] = history
            if dist.any_rank(stop.stop):  # also a signal after the last epoch's files: model.pt on --resume
                # the model in memory stopped mid-epoch; what is kept (qat_last.pt) is the last complete epoch
                result.update(status="interrupted", stopped={"stage": stage})
                last = history[-1] if history else {}
                result["qat"], result["qat_nll"] = last.get("val"), last.get("val_nll")
                result["attn_kl_qat"] = None
                result["qat_epochs_complete"] = len(history)
                return _finish(result, out_dir, t0, dist)
            result["qat"], result["qat_nll"] = validation_metrics(ptq_model, val, task, dist=dist)
            if not math.isfinite(result["qat_nll"]):  # never promoted to model.pt (e.g. a resumed, finished run)
                why = f"its validation cross-entropy is {result['qat_nll']}"
                raise _Diverged("QAT", len(history), 0, 0, why, history)
            result["attn_kl_qat"] = attention_fidelity(ptq_model, teacher, val)
            result["status"] = "done"
            prog.log(f"QAT  ({result['metric']}): {result['qat']:.3f}")
            if dist.is_main:
                save_checkpoint(out_dir / "model.pt", ptq_model, q_meta)
                result["checkpoint"] = os.path.abspath(out_dir / "model.pt")
        except KeyboardInterrupt:
            result.update(status="interrupted", stopped={"stage": stage})
        except _Diverged as div:
            raise _diverged_error(div, cfg, result, out_dir, t0, dist) from None
    return _finish(result, out_dir, t0, dist)


def _diverged_error(
    div: _Diverged, cfg: TrainConfig, result: dict[str, Any], out_dir: Path, t0: float, dist: _Dist
) -> TrainingDiverged:
    """Records a diverged run in ``result.json`` (status ``diverged``, where, and the kept QAT epochs' figures) and
    returns the one-line error to raise. The files already written are the last good ones and stay as they are."""
    kept = div.kept
    last = kept[-1] if kept else {}
    result.update(
        status="diverged",
        diverged={"stage": div.stage, "epoch": div.epoch, "step": div.step, "steps": div.steps, "reason": div.what},
        history=kept,
    )
    if div.stage == "QAT":
        result.update(qat=last.get("val"), qat_nll=last.get("val_nll"), attn_kl_qat=None)
        result["qat_epochs_complete"] = len(kept)
    _finish(result, out_dir, t0, dist)
    where = f"epoch {div.epoch}, step {div.step} of {div.steps}" if div.steps else f"the end of epoch {div.epoch}"
    if div.stage == "QAT":
        hint = f"lower --lr (was {cfg.lr:g}) or set --grad-clip (e.g. 1.0) and start again with --force"
        if (out_dir / "fp.pt").is_file() or cfg.fp_checkpoint:
            hint += f" (--fp-checkpoint {cfg.fp_checkpoint or out_dir / 'fp.pt'} skips FP training)"
        kept_text = f"QAT epoch {len(kept)}'s files are kept" if kept else "the PTQ model (ptq.pt) is kept"
    else:
        hint = f"lower fp_lr (was {cfg.fp_lr:g}; a --config key) and start again with --force"
        kept_text = "no model was saved"
    return TrainingDiverged(
        f"{div.stage} diverged at {where}: {div.what}; {hint}; {kept_text} in '{out_dir}', no model.pt "
        "(result.json: status diverged)",
        result,
    )


def _finish(result: dict[str, Any], out_dir: Path, t0: float, dist: _Dist) -> dict[str, Any]:
    result["seconds"] = time.perf_counter() - t0
    if dist.is_main:
        _write_json(out_dir / "result.json", result)
    return result


def _qat(
    cfg: TrainConfig,
    student: nn.Module,
    teacher: nn.Module,
    train: TensorDataset,
    val: TensorDataset,
    task: str,
    q_meta: dict[str, Any],
    out_dir: Path,
    state: dict[str, Any] | None,
    dist: _Dist,
    prog: _Progress,
    stop: _StopFlag,
) -> list[dict[str, Any]]:
    """QAT epochs, from scratch or (``state``: a checked ``state.pt``, see :func:`_load_state`) where it stopped."""
    bs = _local_bs(cfg, dist)
    epoch_steps = steps_per_epoch(len(train), bs, dist.world)
    history: list[dict[str, Any]] = []
    start_epoch = 0
    state_path = out_dir / "state.pt"
    seed_everything(cfg.seed + 1)
    if state is not None:
        # load the weights BEFORE building the optimizer: brevitas rebuilds its scale modules on load, so an
        # optimizer made earlier would hold the replaced (orphaned) scale parameters
        try:
            student.load_state_dict(state["model"])
        except RuntimeError as err:
            first = str(err).strip().splitlines()[0]
            raise EdgeAttnError(f"--resume: '{state_path}' does not fit this run's model: {first}") from None
    opt, sched = qat_optimizer(cfg, student, epoch_steps)
    if state is not None:
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"])
        history = list(state["history"])
        start_epoch = int(state["epoch"])
    net = dist.wrap(student, train.tensors[0][:2])
    bar = prog.task("QAT", max(cfg.epochs - start_epoch, 0) * epoch_steps)
    for epoch in range(start_epoch, cfg.epochs):
        if dist.any_rank(stop.stop):  # before the first step, and after an epoch's files are written
            stop.stop = True  # on every rank: _run reads it
            return history
        student.train()
        t_ep = time.perf_counter()
        sums: dict[str, float] = {}
        n_steps = 0
        batches = _batches(train, epoch_order(len(train), cfg.seed, epoch, dist.rank, dist.world), bs)
        for x, y in _augmented(batches, cfg.augment_shift, cfg.seed, epoch, dist.rank):
            loss, parts = _qat_step_loss(cfg, net, student, teacher, x, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(student.parameters(), cfg.grad_clip)
            opt.step()
            sched.step()
            n_steps += 1
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + v
            prog.advance(bar, f"epoch {epoch + 1} loss {parts['total']:.4f}")
            stopped, diverged = dist.any_rank_flags(stop.stop, not math.isfinite(parts["total"]))
            if diverged:  # raised before this epoch's files: the last complete epoch's stay as they are
                raise _Diverged("QAT", epoch + 1, n_steps, epoch_steps, _nonfinite_loss(parts["total"]), history)
            if stopped:
                stop.stop = True
                return history  # the last complete epoch's files stay as they are
        sums = dist.mean_over_ranks(sums)  # metrics of the global batch, not of rank 0's shard
        row: dict[str, Any] = {"epoch": epoch + 1, "lr": opt.param_groups[0]["lr"]}
        row.update({f"loss_{k}": v / max(n_steps, 1) for k, v in sums.items()})
        row["val"], row["val_nll"] = validation_metrics(student, val, task, dist=dist)
        row["seconds"] = time.perf_counter() - t_ep
        if dist.any_rank(not _finite_weights(student)):
            raise _Diverged("QAT", epoch + 1, 0, 0, "its weights hold inf or nan", history)
        if not math.isfinite(row["val_nll"]):  # the same figure on every rank (added up over them)
            raise _Diverged("QAT", epoch + 1, 0, 0, f"its validation cross-entropy is {row['val_nll']}", history)
        history.append(row)
        prog.log(
            f"QAT epoch {epoch + 1}/{cfg.epochs}: loss {row.get('loss_total', float('nan')):.4f} val {row['val']:.3f}"
        )
        if dist.is_main:
            state = {
                "model": model_state_dict(student),
                "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict(),
                "rng": rng_state(),
                "history": history,
                "epoch": epoch + 1,
                "config": cfg.model_dump(mode="json"),
                "world_size": dist.world,  # --resume needs the same number of processes
            }
            if q_meta.get("data_path"):  # --resume compares the data by this absolute path and this content
                state["data_path"] = q_meta["data_path"]
                state["data_fingerprint"] = q_meta.get("data_fingerprint")
            if cfg.token_adaptive:
                from edgeattn.quant.adaptive import TOKEN_SCORES

                state["token_scores"] = TOKEN_SCORES  # checked on --resume (adaptive.check_token_scores)
            with stop.holding():  # a second Ctrl-C waits for the three files that belong together
                atomic_torch_save(state, state_path)
                save_checkpoint(out_dir / "qat_last.pt", student, q_meta)
                _write_json(out_dir / "metrics.json", {"history": history, "config": cfg.model_dump(mode="json")})
        dist.barrier()
    student.eval()
    return history


# ---------------------------------------------------------------------------------------------- command line
RANK_ERROR_GRACE_S = 3.0  # how long a failed rank > 0 waits for torchrun to stop it before printing its error
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


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m edgeattn.quant.train`` (and ``torchrun ... -m edgeattn.quant.train``): the
    ``edgeattn qat`` command itself (one option table, one error handling), so every documented flag works here."""
    import typer

    from edgeattn.cli import run_app
    from edgeattn.cli.qat import qat

    single = typer.Typer(
        add_completion=False, pretty_exceptions_enable=False, context_settings={"help_option_names": ["-h", "--help"]}
    )
    single.command()(qat)  # a one-command app: usage reads "python -m edgeattn.quant.train [OPTIONS]"
    args = sys.argv[1:] if argv is None else argv
    if _launched_rank() == 0:
        return run_app(single, args, prog_name="python -m edgeattn.quant.train")
    # Under torchrun every process parses the same flags and reads the same files, so rank 0 alone prints the help,
    # a usage error or the one error line (and the report: cli/qat.py). A crash's traceback still shows: it
    # propagates past this block, after the streams are restored.
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        code = run_app(single, args, prog_name="python -m edgeattn.quant.train")
    if code not in (0, 130):  # 130: stopped by a signal that every rank got; rank 0 reports it
        # If rank 0 failed too it has printed the error, and torchrun stops this process during the wait (it polls
        # every 0.1 s). Still alive after it: the failure was this rank's own, so show it.
        time.sleep(RANK_ERROR_GRACE_S)
        sys.stderr.write(err.getvalue())
    return code


if __name__ == "__main__":
    sys.exit(main())


__all__ = [
    "LossConfig",
    "TrainConfig",
    "QATLossTerms",
    "qat_loss_terms",
    "PRESETS",
    "preset_config",
    "build_config",
    "run",
    "TrainingDiverged",
    "evaluate",
    "validation_metrics",
    "attention_fidelity",
    "load_data",
    "quant_config_for",
    "check_model_approximations",
    "default_bits_note",
    "main",
]
