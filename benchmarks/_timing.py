"""Side-by-side timing shared by the benchmarks: every variant runs once per repetition in rotating order, and a
ratio is taken pairwise within each repetition, so slow drifts of a shared machine's load cancel."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def time_interleaved(
    runs: dict[str, Callable[[], object]], budget_s: float, min_reps: int = 10, max_reps: int = 60
) -> dict[str, dict]:
    """Median ms per key; all keys run once per repetition, in rotating order, after 3 warm-up calls each.

    Also keeps the raw per-repetition samples (``"samples"``) for :func:`paired_ratio`.
    """
    for fn in runs.values():  # warm-up (first-run compilation, caches)
        for _ in range(3):
            fn()
    t0 = time.perf_counter()
    for fn in runs.values():
        fn()
    per_rep = time.perf_counter() - t0
    reps = int(min(max_reps, max(min_reps, budget_s / max(per_rep, 1e-6))))
    keys = list(runs)
    samples: dict[str, list[float]] = {k: [] for k in keys}
    for r in range(reps):
        for k in keys[r % len(keys) :] + keys[: r % len(keys)]:
            t = time.perf_counter()
            runs[k]()
            samples[k].append((time.perf_counter() - t) * 1e3)
    return {k: {"median_ms": statistics.median(v), "reps": len(v), "samples": v} for k, v in samples.items()}


def paired_ratio(timing: dict[str, dict], num: str, den: str) -> float:
    """Median over repetitions of ``t_num / t_den`` measured in the same repetition."""
    return statistics.median(a / b for a, b in zip(timing[num]["samples"], timing[den]["samples"], strict=True))
