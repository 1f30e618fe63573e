"""A diverged QAT or FP training stops the run: one error line, exit 1, ``result.json`` with status ``diverged``, the
last good epoch's files unchanged and no NaN ``model.pt``; all DDP ranks stop together. Also two config fixes: an
explicit ``resize`` with text is refused, and a bad ``--bits`` has one clean prefix."""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from _tiny_runs import tiny_cfg as shared_tiny_cfg
from edgeattn.quant import train as T
from edgeattn.quant.checkpoint import load_checkpoint

from edgeattn.cli import main as cli_main

SNAPSHOT = ("fp.pt", "ptq.pt", "qat_last.pt", "state.pt", "metrics.json")  # the last good epoch's files


def tiny_cfg(out: Path, **kw: object) -> dict:
    """The shared tiny run with 2 QAT epochs (2 steps of 32 each)."""
    return shared_tiny_cfg(out, **{"epochs": 2, **kw})


def _write(path: Path, cfg: dict) -> Path:
    path.write_text(yaml.safe_dump(cfg))
    return path


def _finite(path: Path) -> bool:
    model, _ = load_checkpoint(path)
    return all(bool(torch.isfinite(t).all()) for t in model.state_dict().values() if t.is_floating_point())


def test_nan_in_the_second_qat_epoch_keeps_the_first_and_exits_1(tmp_path, capsys, monkeypatch):
    """A NaN loss at epoch 2, step 1: exit 1 with one line naming stage, epoch, step and the cure; epoch 1's files
    byte-identical to what epoch 1 wrote; no model.pt. Before the fix the run ended 'done' with a NaN model.pt."""
    out = tmp_path / "run"
    cfg = _write(tmp_path / "run.yaml", tiny_cfg(out))
    real = T._qat_step_loss
    calls: list[int] = []
    saved: dict[str, bytes] = {}

    def poisoned(*args, **kwargs):
        loss, parts = real(*args, **kwargs)
        calls.append(1)
        if len(calls) == 3:  # epoch 2, step 1 (2 steps per epoch): epoch 1's files are all written by now
            saved.update({name: (out / name).read_bytes() for name in SNAPSHOT})
            loss = loss * float("nan")
            parts["total"] = float(loss.detach())
        return loss, parts

    monkeypatch.setattr(T, "_qat_step_loss", poisoned)
    assert cli_main(["qat", "-c", str(cfg), "--no-progress"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "error: QAT diverged at epoch 2, step 1 of 2: the training loss is nan; lower --lr (was 0.0001) or set "
        f"--grad-clip (e.g. 1.0) and start again with --force (--fp-checkpoint {out / 'fp.pt'} skips FP training); "
        f"QAT epoch 1's files are kept in '{out}', no model.pt (result.json: status diverged)"
    ]
    assert len(calls) == 3  # stopped at that step, not at the end of the epoch
    assert {name: (out / name).read_bytes() for name in SNAPSHOT} == saved
    assert not (out / "model.pt").exists()
    result = json.loads((out / "result.json").read_text())
    assert result["status"] == "diverged"
    assert result["diverged"] == {
        "stage": "QAT", "epoch": 2, "step": 1, "steps": 2, "reason": "the training loss is nan"
    }
    kept = json.loads((out / "metrics.json").read_text())["history"]
    assert len(kept) == 1 and result["qat_epochs_complete"] == 1
    assert result["qat"] == kept[0]["val"] and math.isfinite(result["qat_nll"])
    assert _finite(out / "qat_last.pt")


def test_huge_lr_on_text_stops_and_the_hinted_rerun_works(tmp_path, capsys):
    """The QA case (tiny_llama on a text file, --lr 1e30): before the fix exit 0, status done, 408,117 NaN values in
    model.pt. Now exit 1, no model.pt; --resume at a lower lr is refused (other settings), and the rerun the error
    suggests (--force --fp-checkpoint DIR/fp.pt --lr 1e-4) ends with a finite model.pt."""
    text = tmp_path / "some.txt"
    text.write_text("hello world, some text for the model. " * 60)
    out = tmp_path / "o_lrh2"
    base = ["qat", "--model", "tiny_llama", "--data", str(text), "--fp-epochs", "1", "--epochs", "1",
            "--max-train-samples", "32", "--max-val-samples", "8", "--batch-size", "16", "--threads", "1",
            "--no-progress", "-o", str(out)]
    report = tmp_path / "report.json"
    assert cli_main([*base, "--lr", "1e30", "--json", str(report)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    # at a step (a nan loss) or, when the last step overflowed the weights, at the end of the epoch
    assert len(err) == 1 and err[0].startswith(("error: QAT diverged at epoch 1, step ", "error: QAT diverged at the "
                                                "end of epoch 1: its weights hold inf or nan;")), err
    assert "lower --lr (was 1e+30)" in err[0] and f"--fp-checkpoint {out / 'fp.pt'}" in err[0]
    assert json.loads((out / "result.json").read_text())["status"] == "diverged"
    assert json.loads(report.read_text()) == json.loads((out / "result.json").read_text())  # --json: the same record
    assert not (out / "model.pt").exists() and not (out / "state.pt").exists()
    assert _finite(out / "fp.pt") and _finite(out / "ptq.pt")
    fp_bytes = (out / "fp.pt").read_bytes()

    assert cli_main([*base, "--lr", "1e-4", "--resume"]) == 2  # documented: --resume needs the same settings
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: --resume: the run in '{out}' was made with lr=1e+30, not 0.0001"), err

    assert cli_main([*base, "--lr", "1e-4", "--force", "--fp-checkpoint", str(out / "fp.pt")]) == 0
    capsys.readouterr()
    assert (out / "fp.pt").read_bytes() == fp_bytes  # --force keeps the --fp-checkpoint it starts from
    assert json.loads((out / "result.json").read_text())["status"] == "done"
    assert _finite(out / "model.pt")


def test_fp_training_divergence_saves_no_fp_model(tmp_path, capsys):
    """fp_lr 1e30 (a config key): the FP stage stops, no fp.pt or ptq.pt is written."""
    out = tmp_path / "run"
    cfg = _write(tmp_path / "run.yaml", tiny_cfg(out, fp_lr=1e30, fp_epochs=2))
    assert cli_main(["qat", "-c", str(cfg), "--no-progress"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: FP training diverged at "), err
    assert "lower fp_lr (was 1e+30; a --config key)" in err[0] and err[0].endswith(
        f"no model was saved in '{out}', no model.pt (result.json: status diverged)"
    )
    result = json.loads((out / "result.json").read_text())
    assert result["status"] == "diverged" and result["diverged"]["stage"] == "FP training"
    assert sorted(p.name for p in out.iterdir()) == ["result.json"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# Run by torchrun: rank 1 alone gets a NaN loss at QAT step 2 (epoch 1); rank 0's loss stays finite.
ONE_RANK_NAN = """
import os, sys
from edgeattn.quant import train as T
real, calls = T._qat_step_loss, []
def poisoned(*args, **kwargs):
    loss, parts = real(*args, **kwargs)
    calls.append(1)
    if os.environ["RANK"] == "1" and len(calls) == 2:
        loss = loss * float("nan")
        parts["total"] = float(loss.detach())
    return loss, parts
T._qat_step_loss = poisoned
sys.exit(T.main(sys.argv[1:]))
"""


def test_ddp_a_nan_on_one_rank_stops_every_rank(tmp_path):
    """Two gloo processes, a NaN on rank 1 only: both stop at that step (no hang in the next all-reduce), one error
    line from rank 0, torchrun fails, result.json says diverged. Before the fix the run ended 'done'."""
    torchrun = Path(sys.executable).with_name("torchrun")
    if not torch.distributed.is_available() or not torchrun.exists():
        pytest.skip("torch.distributed or torchrun is not available")
    out = tmp_path / "run"
    cfg = _write(tmp_path / "run.yaml", tiny_cfg(out, fp_epochs=0, epochs=1, max_train_samples=128))
    script = tmp_path / "one_rank_nan.py"
    script.write_text(ONE_RANK_NAN)
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    t0 = time.perf_counter()
    proc = subprocess.run(
        [str(torchrun), "--nproc_per_node", "2", "--master_port", str(_free_port()), str(script),
         "-c", str(cfg), "--no-progress"],
        env=env, capture_output=True, text=True, timeout=150,
    )
    errors = [line for line in (proc.stdout + proc.stderr).splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr[-3000:]
    assert errors[0].startswith(
        "error: QAT diverged at epoch 1, step 2 of 4: the training loss is inf or nan on another process;"
    ), errors
    assert proc.returncode == 1 and "exitcode  : 1" in proc.stderr
    result = json.loads((out / "result.json").read_text())
    assert result["status"] == "diverged" and result["diverged"]["step"] == 2 and result["world_size"] == 2
    assert not (out / "model.pt").exists() and not (out / "state.pt").exists()
    assert time.perf_counter() - t0 < 90


def test_resize_with_text_is_refused_only_when_given(tmp_path, capsys):
    text = tmp_path / "t.txt"
    text.write_text("abc " * 100)
    out = tmp_path / "o"
    assert cli_main(["qat", "--model", "tiny_llama", "--data", str(text), "--resize", "crop", "-o", str(out)]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        # the flag that set it (docs/qat.md); this said "settings:" before the docs sweep
        "error: --resize: resize brings images to img_size; it does not apply to a language model's text"
    ]
    assert not out.exists()
    with pytest.raises(T.EdgeAttnError, match="resize brings images"):
        T.TrainConfig.parse({"model": "tiny_llama", "data": "stdlib", "resize": "stretch"})
    assert T.TrainConfig.parse({"model": "tiny_llama", "data": str(text)}).resize == "crop"  # the default works
    assert T.preset_config("llama").is_language


@pytest.mark.parametrize(
    "bits,message",
    [
        ("w0a8", "0-bit weights are not supported (brevitas integer quantizers here: 2 to 16 bits), got 'w0a8'"),
        ("w8a17", "17-bit activations are not supported (brevitas integer quantizers here: 2 to 16 bits), got 'w8a17'"),
        ("int8", "expected 'profile' or wNaM, e.g. w8a8, w4a8, w4a4, got 'int8'"),
    ],
)
def test_bad_bits_have_one_prefix(tmp_path, capsys, bits, message):
    assert cli_main(["qat", "--bits", bits, "-o", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [f"error: --bits: 'bits': {message}"]
    from edgeattn.quant import QuantConfig

    with pytest.raises(T.EdgeAttnError) as err:  # the Python API keeps its own single prefix
        QuantConfig().with_bits(bits)
    assert str(err.value) == f"bits '{bits}': {message.rsplit(', got', 1)[0]}"
