"""EdgeQAT losses and the attention-map fidelity metric.

* :func:`entropy_loss` maximises the information in the quantized Q and K:
  ``L_ent = -0.5 * log( sum( log(1 + Var(q)) + log(1 + Var(k)) ) )``, variance over the head dimension, the sum
  over layers, batch, heads and tokens.
* :func:`distribution_loss` aligns the student's attention logits (before softmax and masking, read at
  ``logits_probe``) with the full-precision teacher's by cosine similarity, with the sign that *increases*
  similarity: ``-log(mean cos)``. (``-log sum cos`` differs from it by the constant ``log(count)``, so the gradients
  are the same; the mean keeps the value readable. The authors' public code has the sign reversed.) Below a mean
  cosine of 0.05 the loss continues linearly (log is undefined at <= 0), so it always pushes similarity up. A
  student row's norm counts as at least ``row_floor`` (1e-3) of the teacher row's, which bounds the gradient of a
  row that quantization zeroed.
* :func:`kd_loss`: logit distillation from the FP model, ``(1 - alpha) * CE + alpha * T^2 * KL`` with alpha
  0.5, T 2.
* :func:`attention_kl`: mean KL(FP attention || quantized-model attention) over all attention rows.

Tensors are collected with :class:`Probe`, forward hooks on modules whose name ends with a given suffix.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

_EPS = 1e-6
_COS_FLOOR = 0.05
_NORM_EPS = 1e-8  # torch.cosine_similarity's default eps
# student logit rows below this fraction of the teacher row's norm count as that small in the cosine (see
# distribution_loss); typical W4A4 rows are above 0.01 of it
DISTRIBUTION_ROW_FLOOR = 1e-3


class Probe:
    """Record the outputs of modules whose name ends with one of ``suffixes`` (in forward order).

    Use as a context manager (hooks removed on exit); ``probe[suffix]`` is the list of tensors recorded for a suffix
    since the last :meth:`clear`.
    """

    def __init__(self, model: nn.Module, suffixes: Iterable[str]) -> None:
        if isinstance(suffixes, str):  # would be read as one suffix per character
            raise ValueError(f"Probe: suffixes must be a list of module names, got the string {suffixes!r}")
        self.model = model
        self.suffixes = tuple(suffixes)
        self.records: dict[str, list[torch.Tensor]] = {s: [] for s in self.suffixes}
        self._handles: list[Any] = []

    def __enter__(self) -> Probe:
        for name, module in self.model.named_modules():
            leaf = name.rsplit(".", 1)[-1]
            if leaf in self.suffixes:
                self._handles.append(module.register_forward_hook(self._hook(leaf)))
        return self

    def _hook(self, leaf: str) -> Any:
        def hook(_m: nn.Module, _a: Any, out: torch.Tensor) -> None:
            self.records[leaf].append(out)

        return hook

    def __exit__(self, *exc: object) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def __getitem__(self, suffix: str) -> list[torch.Tensor]:
        return self.records[suffix]

    def clear(self) -> None:
        for v in self.records.values():
            v.clear()


def _same_shape(where: str, student: torch.Tensor, teacher: torch.Tensor) -> None:
    """Student and teacher tensors are compared element by element: broadcasting one would give a number for the
    wrong pairs."""
    if student.shape != teacher.shape:
        raise ValueError(f"{where}: student {list(student.shape)} and teacher {list(teacher.shape)} differ in shape")


def entropy_loss(qs: Sequence[torch.Tensor], ks: Sequence[torch.Tensor]) -> torch.Tensor:
    """EdgeQAT entropy loss from per-layer quantized Q and K tensors (each (B, H, N, head_dim))."""
    if not qs or len(qs) != len(ks):
        raise ValueError(f"entropy_loss: need matching non-empty Q/K lists, got {len(qs)} and {len(ks)}")
    total = qs[0].new_zeros(())
    for q, k in zip(qs, ks, strict=True):
        total = total + torch.log1p(q.var(dim=-1, unbiased=False)).sum()
        total = total + torch.log1p(k.var(dim=-1, unbiased=False)).sum()
    return -0.5 * torch.log(total.clamp_min(_EPS))


def distribution_loss(
    student: Sequence[torch.Tensor], teacher: Sequence[torch.Tensor], row_floor: float = DISTRIBUTION_ROW_FLOOR
) -> torch.Tensor:
    """``-log(mean cosine)`` of student vs teacher attention logits, row by row (each (B, H, Nq, Nk)).

    The student row's norm in the cosine's denominator is floored at ``row_floor`` times the teacher row's: a row's
    cosine has a gradient of size ``1 / ||student row||``, and 4-bit Q and K can quantize a logit row to (almost)
    zero. Such a row gave gradient norms near 1e6 that stalled W4A4 QAT (``benchmarks/grad_spikes.py``); with the
    floor its gradient stays bounded and still points toward the teacher row. Rows above the floor are unchanged.
    ``row_floor=0`` is the plain cosine.
    """
    if not student or len(student) != len(teacher):
        raise ValueError(
            f"distribution_loss: need matching non-empty logit lists, got {len(student)} and {len(teacher)}"
        )
    cos_sum = student[0].new_zeros(())
    count = 0
    for s, t in zip(student, teacher, strict=True):
        _same_shape("distribution_loss", s, t)
        t = t.detach()
        t_norm = t.norm(dim=-1).clamp_min(_NORM_EPS)
        s_norm = torch.maximum(s.norm(dim=-1), row_floor * t_norm).clamp_min(_NORM_EPS)
        cos = (s * t).sum(dim=-1) / (s_norm * t_norm)
        cos_sum = cos_sum + cos.sum()
        count += cos.numel()
    mean_cos = cos_sum / count
    # -log is undefined for mean cos <= 0 (a student far from its teacher); below _COS_FLOOR continue linearly
    # with the slope -log has there, so the loss stays continuous and still pushes the similarity up.
    floor = torch.as_tensor(_COS_FLOOR, dtype=mean_cos.dtype)
    if mean_cos > _COS_FLOOR:
        return -torch.log(mean_cos)
    return -torch.log(floor) + (floor - mean_cos) / floor


def kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    target: torch.Tensor | None,
    alpha: float = 0.5,
    temperature: float = 2.0,
) -> torch.Tensor:
    """Hinton distillation: ``(1 - alpha) * CE(student, target) + alpha * T^2 * KL(teacher_T || student_T)``.

    Logits may be (B, C) or (B, T, V) (the class dim is last). ``target``: class indices (B,) or (B, T), or class
    probabilities of the logits' shape (soft labels, e.g. mixup); ``None`` uses the KD term alone.
    """
    _same_shape("kd_loss", student_logits, teacher_logits)
    if not (0.0 <= alpha <= 1.0):
        raise ValueError(f"kd_loss: alpha must be in [0, 1], got {alpha}")
    if not (math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"kd_loss: temperature must be a finite number > 0, got {temperature}")
    s = student_logits.reshape(-1, student_logits.shape[-1])
    t = teacher_logits.detach().reshape(-1, teacher_logits.shape[-1])
    kl = F.kl_div(
        F.log_softmax(s / temperature, dim=-1),
        F.log_softmax(t / temperature, dim=-1),
        reduction="batchmean",
        log_target=True,
    )
    kd = kl * temperature**2
    if target is None:
        return kd
    if target.is_floating_point():  # probabilities per class (cross_entropy takes them as (N, C))
        _same_shape("kd_loss target", student_logits, target)
        ce = F.cross_entropy(s, target.reshape(-1, target.shape[-1]))
    else:
        ce = F.cross_entropy(s, target.reshape(-1))
    return (1.0 - alpha) * ce + alpha * kd


def attention_kl(student: Sequence[torch.Tensor], teacher: Sequence[torch.Tensor]) -> torch.Tensor:
    """Mean over all attention rows of KL(teacher || student); inputs are softmax outputs (B, H, Nq, Nk)."""
    total = student[0].new_zeros((), dtype=torch.float64)
    count = 0
    for s, t in zip(student, teacher, strict=True):
        _same_shape("attention_kl", s, t)
        s64, t64 = s.double().clamp_min(1e-12), t.double().clamp_min(1e-12)
        total = total + (t64 * (t64.log() - s64.log())).sum()
        count += t.numel() // t.shape[-1]
    return total / max(count, 1)
