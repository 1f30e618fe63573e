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

Modules: this one holds the data and model setup, stop handling, the training phases, :func:`run` and :func:`main`;
the settings, presets and flags are in :mod:`edgeattn.quant.train_config`, torchrun / DDP in
:mod:`edgeattn.quant.distributed`, and the run folder (:data:`RUN_FILES`, the ``--resume`` and ``fp_checkpoint``
checks, ``--force``, the folder's lock) in :mod:`edgeattn.quant.run_files`. Their public names are re-exported here:
``from edgeattn.quant.train import X`` works for them as before.
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
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from edgeattn.quant.checkpoint import (
    atomic_torch_save,
    load_checkpoint,
    model_state_dict,
    read_checkpoint_file,
    save_checkpoint,
)
from edgeattn.quant.config import QuantConfig
from edgeattn.quant.distributed import (  # noqa: F401 (re-exports, see the module docstring)
    LAUNCH_HINT,
    _Dist,
    _launched_rank,
    check_shards,
    dist_env,
    has_unused_parameters,
    process_rank,
)
from edgeattn.quant.losses import Probe, attention_kl, distribution_loss, entropy_loss, kd_loss
from edgeattn.quant.ptq import calibrate
from edgeattn.quant.quantize import quantize_model
from edgeattn.quant.run_files import (  # noqa: F401 (re-exports, see the module docstring)
    RESUME_FREE_KEYS,
    RUN_FILES,
    STATE_KEYS,
    _check_fp_meta,
    _check_resume_config,
    _check_same_content,
    _clear_run,
    _load_state,
    _output_lock,
    _state_fingerprint,
    check_teacher,
    resumable,
    teacher_fingerprint,
)
from edgeattn.quant.train_config import (  # noqa: F401 (re-exports, see the module docstring)
    BUILTIN_DATA,
    FLAG_NAMES,
    LANGUAGE_MODELS,
    LOW_BIT_QAT,
    OWNED_QUANT_KEYS,
    PRESETS,
    LossConfig,
    TrainConfig,
    build_config,
    default_bits_note,
    preset_config,
    quant_config_for,
    read_config_file,
)
from torch import nn
from torch.utils.data import TensorDataset

from edgeattn.atomic import check_writable_folder, refuse_protected
from edgeattn.errors import EdgeAttnError
from edgeattn.hostinfo import MAX_SEED, MAX_THREADS  # noqa: F401 (TrainConfig's bounds, re-exported)


# ---------------------------------------------------------------------------------------------- data / model
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
    refuse_protected(out_dir, "output directory")  # not in the package or the environment's libraries
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
    fp_payload: dict[str, Any] = {}  # its file, read once for the checks
    if cfg.fp_checkpoint:
        fp_source = Path(cfg.fp_checkpoint)
        fp_payload = read_checkpoint_file(fp_source)
        fp_saved = fp_payload["meta"]
        _check_fp_meta(fp_saved, str(fp_source), cfg, kwargs, split, dist.is_main, info)
        _check_same_content(fp_saved.get("data_fingerprint"), info, f"fp_checkpoint '{fp_source}'")
    elif resume and fp_path.is_file():
        fp_source = fp_path
        fp_payload = read_checkpoint_file(fp_path)
        fp_saved = fp_payload["meta"]
        if state is None and "config" in fp_saved:  # stopped before QAT's first epoch: fp.pt has the settings
            _check_resume_config(fp_saved["config"], cfg, fp_path, fp_saved.get("data_path"))
        _check_fp_meta(fp_saved, str(fp_path), cfg, kwargs, split, dist.is_main, info)
        _check_same_content(fp_saved.get("data_fingerprint"), info, f"--resume: the run in '{out_dir}'")
    if state is not None:  # the QAT epochs: state.pt's record (fp.pt's may come from another run's fp_checkpoint)
        _check_same_content(_state_fingerprint(state, out_dir), info, f"--resume: the run in '{out_dir}'")
        if fp_source is not None:  # the teacher the epochs were distilled from, by content (before any write)
            check_teacher(state, fp_payload, fp_source, out_dir)
        done = _finished_run(out_dir, state, cfg)
        if done is not None:  # redoing PTQ would rewrite ptq.pt, model.pt and result.json for nothing
            if dist.is_main:  # a note, not progress: --no-progress keeps it
                print(
                    f"note: the run in '{out_dir}' is complete ({cfg.epochs} of {cfg.epochs} QAT epochs): nothing to "
                    "resume; its files are unchanged",
                    file=sys.stderr,
                )
            return done
    del fp_payload  # its weights: load_checkpoint reads them into the model below, where the run needs them
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
        "model_kwargs_given": sorted(cfg.model_kwargs),  # the rest: the data's and the profile's approx methods
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
                fp_model, fp_meta = load_checkpoint(fp_source, dtype=torch.float32)
                fp_meta = dict(fp_meta)
            else:
                fp_model = create_model(cfg.model, **kwargs)
                t_fp = time.perf_counter()
                _train_fp(cfg, fp_model, train, dist, prog, stop)
                dist.broadcast_from_main(fp_model)  # one teacher on every rank: the fp.pt rank 0 saves
                result["fp_train_seconds"] = time.perf_counter() - t_fp
                stop.check(dist)
            stage = "FP validation"
            fp_fingerprint = teacher_fingerprint(model_state_dict(fp_model))  # as fp.pt holds it
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
                "model_kwargs_given": sorted(cfg.model_kwargs),
                "quant": qcfg,
                "reparameterized": True,
                "data": cfg.data,
                "split": split,
                **recorded_data,
                # the FP model distilled from (as fp.pt holds it): --resume refuses another (check_teacher)
                "teacher_fingerprint": fp_fingerprint,
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
        with stop.holding():  # a second signal now waits for result.json, then stops (exit 130, not 143)
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


def _finished_run(out_dir: Path, state: dict[str, Any], cfg: TrainConfig) -> dict[str, Any] | None:
    """The ``result.json`` of a run that ``state`` shows complete (every QAT epoch, ``model.pt`` written, status
    done); ``None`` when something is left to do or the record cannot be read."""
    if int(state.get("epoch", 0)) < cfg.epochs or not (out_dir / "model.pt").is_file():
        return None
    try:
        result = json.loads((out_dir / "result.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return result if isinstance(result, dict) and result.get("status") == "done" else None


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
                "teacher_fingerprint": q_meta.get("teacher_fingerprint"),  # --resume checks it (check_teacher)
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


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m edgeattn.quant.train`` (and ``torchrun ... -m edgeattn.quant.train``): the
    ``edgeattn qat`` command itself (one option table, one error handling), so every documented flag works here."""
    import typer

    from edgeattn.cli import run_app
    from edgeattn.cli._usage import OneLineUsageCommand
    from edgeattn.cli.qat import qat

    single = typer.Typer(
        add_completion=False, pretty_exceptions_enable=False, context_settings={"help_option_names": ["-h", "--help"]}
    )
    # a one-command app: usage reads "python -m edgeattn.quant.train [OPTIONS]"
    single.command(cls=OneLineUsageCommand)(qat)
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
