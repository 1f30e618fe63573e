"""Shared test setup: deterministic, single-threaded torch so two pytest workers share 2 cores fairly."""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _torch_single_thread():
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a hard dependency
        yield
        return
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield


@pytest.fixture
def user_cwd(tmp_path, monkeypatch):
    """A working directory ``tmp_path/work`` holding the user's ``keep.txt`` ("user data"), entered for the test:
    for checking that ``-o .`` / ``-o ..`` never delete the folder a command runs in."""
    work = tmp_path / "work"
    work.mkdir()
    (work / "keep.txt").write_text("user data")
    monkeypatch.chdir(work)
    return work
