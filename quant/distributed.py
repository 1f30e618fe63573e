"""torchrun / DDP for the QAT trainer: ``RANK`` and ``WORLD_SIZE`` checked before any work (:func:`dist_env`), the
global batch split evenly over the processes (:func:`check_shards`) and :class:`_Dist`, the process group that a
run's phases all-reduce over (a single process when not launched by torchrun).

Part of the QAT trainer; :mod:`edgeattn.quant.train` re-exports its public names.
"""

from __future__ import annotations

import os

import torch
from torch import nn

from edgeattn.errors import EdgeAttnError

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

    def broadcast_from_main(self, model: nn.Module) -> None:
        """Give every process rank 0's parameters and buffers of ``model``. DDP averages gradients, but each rank
        updates its BatchNorm running statistics from its own shard; after FP training rank 0 saves ``fp.pt`` and
        the other ranks would otherwise distil from a teacher of their own (a resumed run, which loads ``fp.pt``
        everywhere, then left the uninterrupted run's curve)."""
        if self.world == 1:
            return
        import torch.distributed as dist

        with torch.no_grad():
            for tensor in [*model.parameters(), *model.buffers()]:
                dist.broadcast(tensor.data, src=0)

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
