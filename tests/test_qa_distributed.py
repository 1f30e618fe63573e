"""The distributed path of ``edgeattn.quant.train``: torchrun's RANK / WORLD_SIZE checked before any work, a global
batch the processes cannot share refused, ``--resume`` with another process count refused, and one error line
(rank 0's) under torchrun instead of one per process."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from _tiny_runs import TINY, tiny_cfg
from edgeattn.quant import train as T

from edgeattn.errors import EdgeAttnError

pytestmark = pytest.mark.skipif(
    not torch.distributed.is_available(), reason="torch.distributed is not available in this torch build"
)

HINT = "launch with torchrun, which sets both, or unset RANK and WORLD_SIZE for one process"


@pytest.fixture
def no_dist_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


@pytest.mark.parametrize(
    "env,expected",
    [
        ({}, (0, 1)),
        ({"RANK": "0", "WORLD_SIZE": "1"}, (0, 1)),  # torchrun --nproc_per_node 1
        ({"RANK": "1", "WORLD_SIZE": "2"}, (1, 2)),
    ],
)
def test_dist_env_reads_torchrun_variables(no_dist_env, env, expected):
    for name, value in env.items():
        no_dist_env.setenv(name, value)
    assert T.dist_env() == expected


@pytest.mark.parametrize(
    "env,message",
    [
        ({"RANK": "1"}, f"environment: RANK=1 is set but WORLD_SIZE is not; {HINT}"),
        ({"WORLD_SIZE": "2"}, f"environment: WORLD_SIZE=2 is set but RANK is not; {HINT}"),
        ({"RANK": "x", "WORLD_SIZE": "2"}, f"environment: RANK='x' is not a whole number; {HINT}"),
        (
            {"RANK": "1", "WORLD_SIZE": "1"},
            f"environment: RANK=1 with WORLD_SIZE=1: need WORLD_SIZE >= 1 and 0 <= RANK < WORLD_SIZE; {HINT}",
        ),
        (
            {"RANK": "0", "WORLD_SIZE": "0"},
            f"environment: RANK=0 with WORLD_SIZE=0: need WORLD_SIZE >= 1 and 0 <= RANK < WORLD_SIZE; {HINT}",
        ),
    ],
)
def test_dist_env_refuses_partial_or_inconsistent_variables(no_dist_env, env, message):
    for name, value in env.items():
        no_dist_env.setenv(name, value)
    with pytest.raises(EdgeAttnError) as err:
        T.dist_env()
    assert str(err.value) == message


def test_rank_without_world_size_is_one_error_line_before_any_work(no_dist_env, tmp_path, capsys):
    """Before the fix, ``RANK=1 python -m edgeattn.quant.train ...`` trained the whole run as a non-main process,
    exited 0 and wrote nothing at all."""
    out = tmp_path / "run"
    cfg = tmp_path / "run.yaml"
    cfg.write_text(yaml.safe_dump(tiny_cfg(out)))
    no_dist_env.setenv("RANK", "1")
    assert T.main(["-c", str(cfg), "--no-progress"]) == 2
    captured = capsys.readouterr()
    assert captured.err.strip() == f"error: environment: RANK=1 is set but WORLD_SIZE is not; {HINT}"
    assert not out.exists()


@pytest.mark.parametrize(
    "batch_size,n,world,message",
    [
        (33, 64, 2, "batch_size 33 is not a multiple of the 2 processes (WORLD_SIZE): it is the global batch, "
                    "split evenly over them; use a batch_size of 32 or 34"),
        (1, 64, 2, "batch_size 1 is not a multiple of the 2 processes (WORLD_SIZE): it is the global batch, "
                   "split evenly over them; use a batch_size of 2"),
        (32, 2, 3, "batch_size 32 is not a multiple of the 3 processes (WORLD_SIZE): it is the global batch, "
                   "split evenly over them; use a batch_size of 30 or 33"),
        (32, 1, 2, "1 training sample(s) for 2 processes (WORLD_SIZE): each needs at least one; use fewer "
                   "processes or more samples (max_train_samples)"),
    ],
)
def test_check_shards_refuses_what_the_processes_cannot_share(batch_size, n, world, message):
    with pytest.raises(EdgeAttnError) as err:
        T.check_shards(batch_size, n, world)
    assert str(err.value) == message


@pytest.mark.parametrize("batch_size,n,world", [(33, 1, 1), (32, 2, 2), (4, 5, 4)])
def test_check_shards_accepts_an_exact_split(batch_size, n, world):
    T.check_shards(batch_size, n, world)  # no error
    # and every process then runs the same number of steps on batch_size / world samples each
    steps = {
        sum(1 for _ in T._batches(
            torch.utils.data.TensorDataset(torch.arange(n)), T.epoch_order(n, 0, 0, rank, world), batch_size // world
        ))
        for rank in range(world)
    }
    assert steps == {T.steps_per_epoch(n, batch_size // world, world)} and min(steps) >= 1


def test_resume_with_another_process_count_is_refused(no_dist_env, tmp_path):
    out = tmp_path / "run"
    T.run(tiny_cfg(out, max_train_samples=32, calib_samples=16, fp_epochs=0, epochs=2), progress=False)
    state = torch.load(out / "state.pt", weights_only=True)
    assert state["world_size"] == 1  # recorded by this run
    state["world_size"] = 2  # as a 2-process run would have written it
    torch.save(state, out / "state.pt")
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    with pytest.raises(EdgeAttnError) as err:
        T.run(tiny_cfg(out, max_train_samples=32, calib_samples=16, fp_epochs=0, epochs=2), resume=True,
              progress=False)
    assert str(err.value) == (
        f"--resume: the run in '{out}' was made with 2 process(es), not 1; resume it with the same torchrun "
        "--nproc_per_node, or start a new run (--force or another --output)"
    )
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before  # nothing written


def test_rank_above_zero_prints_only_its_own_failure(no_dist_env, tmp_path, capsys):
    """A rank > 0 keeps the help and the error line to itself (rank 0 prints them); one still running after the
    grace period (torchrun did not stop it: rank 0 did not fail) prints its error."""
    no_dist_env.setenv("RANK", "1")
    no_dist_env.setenv("WORLD_SIZE", "2")
    no_dist_env.setattr(T, "RANK_ERROR_GRACE_S", 0.0)
    assert T.main(["--help"]) == 0
    assert capsys.readouterr() == ("", "")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: vit_tiny\nbogus_key: 3\n")
    assert T.main(["-c", str(bad), "-o", str(tmp_path / "r")]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.strip() == f"error: config file '{bad}': unknown key 'bogus_key'"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_torchrun_refusal_is_one_line_and_writes_nothing(tmp_path):
    """Two gloo processes refuse a global batch of 33 (not a multiple of 2; before the fix each process silently
    took 16, a batch of 32): the error comes once, not once per process, and nothing is written."""
    torchrun = Path(sys.executable).with_name("torchrun")
    if not torchrun.exists():
        pytest.skip("torchrun is not installed next to this python")
    out = tmp_path / "run"
    cfg = tmp_path / "run.yaml"
    cfg.write_text(yaml.safe_dump(tiny_cfg(out, batch_size=33)))
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    t0 = time.perf_counter()
    proc = subprocess.run(
        [str(torchrun), "--nproc_per_node", "2", "--master_port", str(_free_port()), "-m", "edgeattn.quant.train",
         "-c", str(cfg), "--no-progress"],
        env=env, capture_output=True, text=True, timeout=120,
    )
    errors = [line for line in (proc.stdout + proc.stderr).splitlines() if line.startswith("error:")]
    assert errors == [
        "error: batch_size 33 is not a multiple of the 2 processes (WORLD_SIZE): it is the global batch, split "
        "evenly over them; use a batch_size of 32 or 34"
    ], proc.stderr[-3000:]
    assert proc.returncode == 1  # torchrun's own code for a failed worker (the worker exited 2)
    assert "exitcode  : 2" in proc.stderr
    assert not out.exists()
    assert time.perf_counter() - t0 < 60


class _OneRankOf:
    """Stands in for ``train._Dist`` on one rank of ``world``: records the counts that rank would add up."""

    def __init__(self, rank: int, world: int) -> None:
        self.rank, self.world = rank, world
        self.sent: list[float] = []

    def sum_over_ranks(self, values: list[float]) -> list[float]:
        self.sent = list(values)
        return values


def test_validation_is_sharded_over_ranks_and_adds_up_to_one_process() -> None:
    """Each rank scores every world-th sample; the counts the ranks add up are exactly one process's counts."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 10))
    x, y = torch.randn(33, 1, 4, 4), torch.randint(0, 10, (33,))
    ds = torch.utils.data.TensorDataset(x, y)
    ranks = [_OneRankOf(r, 2) for r in range(2)]
    for r in ranks:
        T.validation_metrics(model, ds, "vision", batch_size=8, dist=r)  # type: ignore[arg-type]
    correct, total, nll = (sum(vals) for vals in zip(*(r.sent for r in ranks), strict=True))
    assert [r.sent[1] for r in ranks] == [17.0, 16.0]  # every sample on exactly one rank
    with torch.no_grad():  # independent reference: the whole set in one float64 pass
        logits = model(x).double()
        ref_nll = float(torch.nn.functional.cross_entropy(logits, y, reduction="sum"))
        ref_correct = int((logits.argmax(-1) == y).sum())
    assert (correct, total) == (ref_correct, 33)
    assert nll == pytest.approx(ref_nll, rel=1e-6)
    top1, mean_nll = T.validation_metrics(model, ds, "vision", batch_size=8)
    assert top1 == pytest.approx(100.0 * ref_correct / 33) and mean_nll == pytest.approx(ref_nll / 33, rel=1e-6)


def test_ddp_looks_for_unused_parameters_only_when_there_are_some() -> None:
    """Token-adaptive bits leave the first block's low-bit scales without a gradient: DDP must search for unused
    parameters there (or fail), and nowhere else (or it warns on every rank and traverses the graph every step).
    The probe leaves the RNG stream, the gradients and the training flag as they were."""
    from edgeattn.quant import QuantConfig, ptq

    from edgeattn.models import create_model

    model = create_model("vit_tiny", img_size=16, in_chans=1, num_classes=10, **TINY).eval()
    x = torch.randn(4, 1, 16, 16)
    plain = ptq(model, QuantConfig(), [x]).train()
    adaptive = ptq(model, QuantConfig(token_adaptive=True), [x])
    marker = next(plain.parameters())
    marker.grad = torch.full_like(marker, 3.0)
    torch.manual_seed(5)
    assert T.has_unused_parameters(plain, x[:2]) is False
    after = torch.rand(3)
    torch.manual_seed(5)
    assert torch.equal(after, torch.rand(3))  # the probe drew nothing from the global RNG
    assert torch.equal(marker.grad, torch.full_like(marker, 3.0)) and plain.training
    assert all(p.grad is None for p in list(plain.parameters())[1:])
    assert T.has_unused_parameters(adaptive, x[:2]) is True
    assert not adaptive.training


def _broadcast_worker(rank: int, port: int, out: str) -> None:
    """One of two gloo processes: a BatchNorm whose running statistics differ per rank (as after DDP training, each
    rank updating them from its own shard), then broadcast_from_main; writes what it holds afterwards."""
    import os

    os.environ.update(RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist = T._Dist()
    try:
        bn = torch.nn.BatchNorm2d(3)
        with torch.no_grad():
            bn.running_mean.fill_(float(rank + 1))
            bn.running_var.fill_(float(10 * (rank + 1)))
            bn.weight.fill_(float(rank + 2))
        dist.broadcast_from_main(bn)
        torch.save({k: v.clone() for k, v in bn.state_dict().items()}, f"{out}/rank{rank}.pt")
    finally:
        dist.close()


def test_broadcast_from_main_gives_every_rank_rank_0s_batchnorm_statistics(no_dist_env, tmp_path):
    """After DDP FP training each rank kept its own BatchNorm running statistics while rank 0 saved fp.pt, so rank 1
    distilled from another teacher and a resumed fmvit_t run (fp.pt on every rank) left the uninterrupted curve."""
    import torch.multiprocessing as mp

    mp.spawn(_broadcast_worker, args=(_free_port(), str(tmp_path)), nprocs=2, join=True)
    zero, one = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    assert torch.equal(zero["running_mean"], torch.full((3,), 1.0))  # rank 0's own
    for key in ("running_mean", "running_var", "weight", "bias", "num_batches_tracked"):
        assert torch.equal(one[key], zero[key]), key
