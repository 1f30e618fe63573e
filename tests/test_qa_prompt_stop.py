"""`edgeattn qat` stops promptly on SIGINT/SIGTERM at stage boundaries (not only after a QAT step), a second Ctrl-C
stops at once, and an early stop prints no empty results table.

Each run is the real command (``python -m edgeattn.quant.train``) in a subprocess. A stage is slowed with a sleep
(``SLOW_*`` below) so that where the run stops does not depend on the shared machine's speed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from _tiny_runs import tiny_cfg
from edgeattn.quant import train as T
from edgeattn.quant.checkpoint import load_checkpoint

# Runs the command with optional slow stages: SLOW_CALIB seconds before PTQ calibration, SLOW_FIDELITY seconds
# before each attention-fidelity pass (PTQ's last step), SLOW_FINISH seconds before result.json is written, and a
# marker file once FP training has started.
LAUNCHER = """
import os, sys, time
from pathlib import Path
from edgeattn.quant import train as T

calib, fid, train_fp = T.calibrated_ptq_model, T.attention_fidelity, T._train_fp

def slow_calib(*a, **k):
    time.sleep(float(os.environ.get("SLOW_CALIB", "0")))
    return calib(*a, **k)

def slow_fidelity(*a, **k):
    time.sleep(float(os.environ.get("SLOW_FIDELITY", "0")))
    return fid(*a, **k)

def marked_train_fp(cfg, *a, **k):
    Path(cfg.output_dir).parent.joinpath("fp_started").touch()  # the output folder may not exist yet
    return train_fp(cfg, *a, **k)

finish = T._finish

def slow_finish(*a, **k):
    time.sleep(float(os.environ.get("SLOW_FINISH", "0")))
    return finish(*a, **k)

T.calibrated_ptq_model, T.attention_fidelity, T._train_fp = slow_calib, slow_fidelity, marked_train_fp
T._finish = slow_finish
sys.exit(T.main(sys.argv[1:]))
"""


def _cfg(tmp_path: Path, out: Path, **kw) -> Path:
    path = tmp_path / f"{out.name}.yaml"
    path.write_text(yaml.safe_dump(tiny_cfg(out, **kw)))
    return path


def _start(cfg: Path, *extra: str, **slow: float) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore", COLUMNS="120")
    env.update({k: str(v) for k, v in slow.items()})
    return subprocess.Popen(
        [sys.executable, "-c", LAUNCHER, "--config", str(cfg), "--no-progress", *extra],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for(proc: subprocess.Popen, path: Path, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while not path.is_file():
        if proc.poll() is not None:
            pytest.fail(f"the run ended before {path.name} appeared: {proc.communicate()}")
        assert time.monotonic() < deadline, f"{path.name} did not appear in time"
        time.sleep(0.05)


def _stop(proc: subprocess.Popen, *signals: signal.Signals, gap: float = 0.5) -> tuple[int, float, str, str]:
    """Sends the signals ``gap`` s apart; returns the exit code, the seconds from the first signal to the exit, and
    the output."""
    t0 = time.monotonic()
    for i, sig in enumerate(signals):
        if i:
            time.sleep(gap)
        proc.send_signal(sig)
    try:
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    return proc.returncode, time.monotonic() - t0, out, err


def _result(out: Path) -> dict:
    return json.loads((out / "result.json").read_text())


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_during_ptq_stops_at_the_stage_boundary_and_resume_finishes(tmp_path, sig):
    out = tmp_path / "run"
    cfg = _cfg(tmp_path, out)
    # calibration takes 2 s and PTQ's fidelity pass 40 s: the old code only looked at the flag after a QAT step
    proc = _start(cfg, SLOW_CALIB=2, SLOW_FIDELITY=40)
    _wait_for(proc, out / "fp.pt")
    rc, seconds, stdout, stderr = _stop(proc, sig)
    assert rc == 130, stderr
    assert seconds < 20, f"took {seconds:.1f} s after the signal"
    assert stderr.count(T.STOP_NOTICE) == 1  # the signal is acknowledged, once
    assert "Traceback" not in stderr
    res = _result(out)
    assert res["status"] == "interrupted" and res["stopped"] == {"stage": "PTQ"}
    assert "qat_epochs_complete" not in res and not (out / "state.pt").exists()  # no QAT step ran
    assert not list(out.glob(".*tmp*"))
    fp_model, meta = load_checkpoint(out / "fp.pt")
    assert meta["quant"] is None and res["fp32"] is not None
    assert "the last complete stage is kept" in stdout

    # --resume from fp.pt finishes, bit for bit the same as a run that was never stopped
    rc = subprocess.run(
        [sys.executable, "-m", "edgeattn.quant.train", "--config", str(cfg), "--no-progress", "--resume"],
        env=dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore"),
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert rc.returncode == 0, rc.stderr
    ref = tmp_path / "ref"
    T.run(yaml.safe_load(_cfg(tmp_path, ref).read_text()), progress=False)
    done, want = _result(out), _result(ref)
    assert done["status"] == "done" and "stopped" not in done
    for key in ("fp32", "ptq", "qat", "qat_nll"):
        assert done[key] == want[key], key
    got_sd = load_checkpoint(out / "model.pt")[0].state_dict()
    ref_sd = load_checkpoint(ref / "model.pt")[0].state_dict()
    assert got_sd.keys() == ref_sd.keys()
    assert all(torch.equal(got_sd[k], ref_sd[k]) for k in got_sd)


def test_a_second_ctrl_c_stops_at_once(tmp_path):
    out = tmp_path / "run"
    proc = _start(_cfg(tmp_path, out), SLOW_CALIB=60)  # the first Ctrl-C alone would wait for the whole minute
    _wait_for(proc, out / "fp.pt")
    time.sleep(0.3)  # into the slow calibration
    rc, seconds, _stdout, stderr = _stop(proc, signal.SIGINT, signal.SIGINT, gap=1.0)
    assert rc == 130, stderr
    assert seconds < 20, f"took {seconds:.1f} s after the first signal"
    assert stderr.count(T.STOP_NOTICE) == 1 and "Traceback" not in stderr
    res = _result(out)
    assert res["status"] == "interrupted" and res["stopped"] == {"stage": "PTQ"}
    assert not (out / "ptq.pt").exists() and not list(out.glob(".*tmp*"))
    load_checkpoint(out / "fp.pt")  # still whole


def test_a_second_sigterm_while_result_json_is_written_waits_for_it_and_exits_130(tmp_path):
    """The stop handler was taken down before result.json was written: a second SIGTERM then killed the process
    (exit 143) and could land before the file. Now it waits for result.json and stops as Ctrl-C does."""
    out = tmp_path / "run"
    proc = _start(_cfg(tmp_path, out), SLOW_CALIB=2, SLOW_FINISH=4)
    _wait_for(proc, out / "fp.pt")
    time.sleep(0.3)  # into the 2 s calibration: the first signal stops the run at its end, then result.json waits 4 s
    rc, _seconds, _stdout, stderr = _stop(proc, signal.SIGTERM, signal.SIGTERM, gap=3.5)
    assert rc == 130, stderr
    assert stderr.count(T.STOP_NOTICE) == 1 and "Traceback" not in stderr
    res = _result(out)
    assert res["status"] == "interrupted" and res["stopped"] == {"stage": "PTQ"}


def test_ctrl_c_during_fp_training_prints_only_the_stop_line(tmp_path):
    out = tmp_path / "run"
    proc = _start(_cfg(tmp_path, out, fp_epochs=1000))
    _wait_for(proc, tmp_path / "fp_started")
    rc, seconds, stdout, stderr = _stop(proc, signal.SIGINT)
    assert rc == 130, stderr
    assert seconds < 20
    # the stop line alone: no empty table and no "outputs in ..." line before it
    assert stdout.split() == f"stopped before anything resumable was saved in {out} (--force starts over)".split()
    res = _result(out)
    assert res["status"] == "interrupted" and res["stopped"] == {"stage": "FP training"}
    assert not (out / "fp.pt").exists()


def test_the_stop_flag_acknowledges_once_and_a_second_signal_raises(capsys):
    old = signal.getsignal(signal.SIGINT)
    with T._StopFlag() as stop:
        signal.raise_signal(signal.SIGINT)
        assert stop.stop
        assert capsys.readouterr().err.strip() == T.STOP_NOTICE
        with pytest.raises(KeyboardInterrupt), stop.holding():
            signal.raise_signal(signal.SIGINT)  # inside holding(): deferred to the end of the block
            held = True
        assert held
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGTERM)
    assert signal.getsignal(signal.SIGINT) is old
