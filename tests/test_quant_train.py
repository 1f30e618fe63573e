"""The QAT trainer: end-to-end run, exact --resume, clean SIGTERM stop, DDP on gloo, bad input via the CLI, the
step's loss terms."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from edgeattn.quant import train as T
from edgeattn.quant.checkpoint import load_checkpoint
from edgeattn.quant.losses import Probe, distribution_loss, entropy_loss, kd_loss

from edgeattn.cli import main as cli_main
from edgeattn.models import create_model

TINY = {"depth": 1, "embed_dim": 32, "num_heads": 2, "patch_size": 4}
ALL_LOSSES = {"kd": True, "entropy": True, "distribution": True}  # every loss path (entropy is off by default)


def tiny_cfg(out: Path, **kw) -> dict:
    cfg = {
        "model": "vit_tiny",
        "model_kwargs": TINY,
        "img_size": 16,
        "in_chans": 1,
        "max_train_samples": 128,
        "max_val_samples": 64,
        "batch_size": 32,
        "fp_epochs": 1,
        "epochs": 3,
        "calib_samples": 64,
        "output_dir": str(out),
        "num_threads": 1,
    }
    cfg.update(kw)
    return cfg


def test_run_end_to_end_writes_checkpoints_and_metrics(tmp_path):
    res = T.run(tiny_cfg(tmp_path / "r", epochs=1, token_adaptive=True, losses=ALL_LOSSES), progress=False)
    assert res["status"] == "done" and res["metric"] == "top1"
    for key in ("fp32", "ptq", "qat"):
        assert 0.0 <= res[key] <= 100.0
    assert res["attn_kl_qat"] is not None and res["attn_kl_qat"] >= 0
    hist = json.loads((tmp_path / "r" / "metrics.json").read_text())["history"]
    assert len(hist) == 1 and {"loss_task", "loss_entropy", "loss_distribution", "val", "val_nll"} <= set(hist[0])
    model, meta = load_checkpoint(tmp_path / "r" / "model.pt")
    assert meta["quant"]["token_adaptive"] and meta["reparameterized"]
    ds = T.load_data(T.TrainConfig.parse(tiny_cfg(tmp_path)))[1]
    assert T.evaluate(model, ds, "vision") == pytest.approx(res["qat"])
    assert T.validation_metrics(model, ds, "vision")[1] == pytest.approx(res["qat_nll"], rel=1e-6)
    assert hist[0]["val_nll"] == pytest.approx(res["qat_nll"], rel=1e-6)
    assert all(res[k] > 0 for k in ("fp32_nll", "ptq_nll", "qat_nll"))
    # the same output directory is not silently overwritten
    with pytest.raises(T.EdgeAttnError, match="already holds a run"):
        T.run(tiny_cfg(tmp_path / "r", epochs=1), progress=False)


def _float64_nll(logits: np.ndarray, target: np.ndarray) -> float:
    """Mean -log softmax(logits)[target] over every target, by hand in float64."""
    z = logits.reshape(-1, logits.shape[-1]).astype(np.float64)
    t = target.reshape(-1)
    log_norm = z.max(-1) + np.log(np.exp(z - z.max(-1, keepdims=True)).sum(-1))
    return float(np.mean(log_norm - z[np.arange(len(t)), t]))


def test_validation_metrics_match_a_float64_hand_computation():
    gen = torch.Generator().manual_seed(0)
    # vision: 10 images, 5 classes, batches of 3 (a short last batch)
    net = torch.nn.Linear(6, 5)
    x, y = torch.randn(10, 6, generator=gen), torch.randint(0, 5, (10,), generator=gen)
    logits = net(x).detach().double().numpy()
    top1, nll = T.validation_metrics(net, torch.utils.data.TensorDataset(x, y), "vision", batch_size=3)
    assert top1 == 100.0 * float(np.mean(logits.argmax(-1) == y.numpy()))
    assert nll == pytest.approx(_float64_nll(logits, y.numpy()), rel=1e-6)
    # language: (B, T) tokens, nll per predicted token and perplexity = exp(nll)
    emb = torch.nn.Embedding(7, 7)
    tok, nxt = torch.randint(0, 7, (5, 4), generator=gen), torch.randint(0, 7, (5, 4), generator=gen)
    ppl, nll = T.validation_metrics(emb, torch.utils.data.TensorDataset(tok, nxt), "language", batch_size=2)
    ref = _float64_nll(emb(tok).detach().double().numpy(), nxt.numpy())
    assert nll == pytest.approx(ref, rel=1e-6) and ppl == pytest.approx(np.exp(ref), rel=1e-6)
    assert T.evaluate(emb, torch.utils.data.TensorDataset(tok, nxt), "language") == pytest.approx(ppl)


@pytest.mark.parametrize("augment_shift", [0, 2])
def test_resume_continues_exactly(tmp_path, monkeypatch, augment_shift):
    # with augment_shift the resumed epochs must also see the shifts the uninterrupted run saw
    cfg = tiny_cfg(tmp_path / "straight", token_adaptive=True, losses=ALL_LOSSES, augment_shift=augment_shift)
    straight = T.run(cfg, progress=False)

    class StopInEpoch2(T._StopFlag):
        """Acts like a SIGTERM in QAT epoch 2: checked once per step (4 FP steps, 4 per QAT epoch), at the 4 stage
        boundaries between FP training and QAT, and before each QAT epoch."""

        checks = 0

        @property
        def stop(self):
            StopInEpoch2.checks += 1
            return StopInEpoch2.checks >= 4 + 4 + (1 + 4) + (1 + 2)

        @stop.setter
        def stop(self, value):
            pass

    cut = tiny_cfg(tmp_path / "cut", token_adaptive=True, losses=ALL_LOSSES, augment_shift=augment_shift)
    monkeypatch.setattr(T, "_StopFlag", StopInEpoch2)
    first = T.run(cut, progress=False)
    assert first["status"] == "interrupted"
    state = torch.load(tmp_path / "cut" / "state.pt", weights_only=True)  # no pickled numpy: loads safely
    assert state["epoch"] == 1  # the last complete epoch is what stays on disk
    # the result describes that kept epoch, not the half-trained model in memory: its validation re-measured
    kept, _ = load_checkpoint(tmp_path / "cut" / "qat_last.pt")
    train_ds, val_ds, info = T.load_data(T.TrainConfig(**cut))
    assert first["qat_epochs_complete"] == 1 and first["attn_kl_qat"] is None
    assert first["qat"] == pytest.approx(T.validation_metrics(kept, val_ds, info["task"])[0], abs=1e-9)
    assert first["qat"] == first["history"][0]["val"] and first["qat"] == straight["history"][0]["val"]
    monkeypatch.undo()
    resumed = T.run(cut, resume=True, progress=False)
    keys = ("loss_total", "loss_task", "loss_entropy", "loss_distribution", "val")
    a = [[row[k] for k in keys] for row in straight["history"]]
    b = [[row[k] for k in keys] for row in resumed["history"]]
    assert len(a) == len(b) == 3
    assert a == b  # bit for bit
    m1, _ = load_checkpoint(tmp_path / "straight" / "model.pt")
    m2, _ = load_checkpoint(tmp_path / "cut" / "model.pt")
    for (n, p1), p2 in zip(m1.state_dict().items(), m2.state_dict().values(), strict=True):
        assert torch.equal(p1, p2), n


def _env() -> dict:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    return env


def test_sigterm_stops_cleanly_and_keeps_the_last_checkpoint(tmp_path):
    out = tmp_path / "run"
    cfg_file = tmp_path / "cfg.yaml"
    cfg_file.write_text(yaml.safe_dump(tiny_cfg(out, epochs=500, max_train_samples=64)))
    proc = subprocess.Popen(
        [sys.executable, "-m", "edgeattn.quant.train", "--config", str(cfg_file), "--no-progress"],
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.time() + 90
        while not (out / "metrics.json").is_file():
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.time() < deadline, "no epoch finished in time"
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert rc == 130
    state = torch.load(out / "state.pt", weights_only=True)
    hist = json.loads((out / "metrics.json").read_text())["history"]
    assert len(hist) == state["epoch"] >= 1
    model, meta = load_checkpoint(out / "qat_last.pt")
    assert meta["quant"] is not None
    assert not list(out.glob(".*.tmp"))  # no half-written files left behind


def test_ddp_two_gloo_processes_match_one_process(tmp_path):
    torchrun = shutil.which("torchrun") or str(Path(sys.executable).with_name("torchrun"))
    if not Path(torchrun).exists():
        pytest.skip("torchrun is not installed next to this python")
    losses = {"kd": True, "entropy": False, "distribution": False}  # per-sample-mean losses: DDP == big batch
    common = {"max_train_samples": 64, "max_val_samples": 32, "epochs": 1, "losses": losses}
    ddp_cfg, one_cfg = tmp_path / "ddp.yaml", tmp_path / "one.yaml"
    ddp_cfg.write_text(yaml.safe_dump(tiny_cfg(tmp_path / "ddp", **common)))
    one_cfg.write_text(yaml.safe_dump(tiny_cfg(tmp_path / "one", **common)))
    proc = subprocess.run(
        [
            torchrun,
            "--nproc_per_node",
            "2",
            "--master_port",
            "29517",
            "-m",
            "edgeattn.quant.train",
            "--config",
            str(ddp_cfg),
            "--no-progress",
        ],
        env=_env(),
        capture_output=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    # no parameter goes unused here, so DDP does not search for them (and torch does not warn on each rank)
    assert b"find_unused_parameters" not in proc.stderr
    assert json.loads((tmp_path / "ddp" / "result.json").read_text())["world_size"] == 2
    T.run(T.TrainConfig.parse(yaml.safe_load(one_cfg.read_text())), progress=False)
    ddp = json.loads((tmp_path / "ddp" / "result.json").read_text())
    one = json.loads((tmp_path / "one" / "result.json").read_text())
    # gradients are averaged over the two half-batches, so the loss curve is the one-process curve
    assert ddp["history"][0]["loss_total"] == pytest.approx(one["history"][0]["loss_total"], rel=1e-4)
    # AdamW moves every weight by about lr per step whatever its gradient's size, so float-rounding
    # differences in
    # the all-reduce show up at the 1e-4 (FP, 2 steps) / 1e-3 (QAT) level; unsynchronised ranks (each training
    # on
    # its own half) would differ by several lr steps everywhere
    for name, atol in (("fp.pt", 5e-4), ("model.pt", 3e-3)):
        m_ddp, _ = load_checkpoint(tmp_path / "ddp" / name)
        m_one, _ = load_checkpoint(tmp_path / "one" / name)
        diffs = [
            (a - b).abs()
            for a, b in zip(m_ddp.state_dict().values(), m_one.state_dict().values(), strict=True)
            if a.is_floating_point()
        ]
        assert max(float(d.max()) for d in diffs) < atol, name
        assert float(torch.cat([d.flatten() for d in diffs]).mean()) < atol / 10, name


def test_language_model_path(tmp_path):
    res = T.run(
        {
            "model": "tiny_llama",
            "model_kwargs": {"dim": 32, "depth": 1, "num_heads": 2},
            "data": "stdlib",
            "seq_len": 16,
            "corpus_bytes": 20_000,
            "max_train_samples": 64,
            "max_val_samples": 16,
            "batch_size": 16,
            "fp_epochs": 2,
            "epochs": 1,
            "output_dir": str(tmp_path / "lm"),
            "num_threads": 1,
        },
        progress=False,
    )
    assert res["metric"] == "perplexity"
    assert 1.0 < res["fp32"] < 256.0  # learned something: better than a uniform guess over bytes
    assert 1.0 < res["qat"] < 256.0
    # EdgeQAT keeps the o_proj input and lm_head in float
    assert "*lm_head*" in res["quant_config"]["float_layers"]


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--fp-checkpoint", "{tmp}/missing.pt"], "not found"),
        (["--fp-checkpoint", "{tmp}"], "is a folder, not a checkpoint file"),
        (["--fp-checkpoint", "{tmp}/corrupt.pt"], "corrupt"),
        (["--config", "{tmp}/unknown.yaml"], "unknown key 'learning_rate'"),
        (["--bits", "w1a8"], "1-bit"),
        (["--data", "{tmp}/no/such/folder"], "does not exist"),
        (["--preset", "huge"], "unknown preset"),
        (["--preset", "llama", "--augment-shift", "2"], "augment_shift moves images"),
    ],
)
def test_cli_bad_input_one_line_exit_2_nothing_written(tmp_path, capsys, args, needle):
    (tmp_path / "corrupt.pt").write_bytes(b"\x00garbage")
    (tmp_path / "unknown.yaml").write_text("model: vit_tiny\nlearning_rate: 0.1\n")
    out = tmp_path / "out"
    argv = ["qat", "--output", str(out), *[a.format(tmp=tmp_path) for a in args]]
    assert cli_main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1
    assert not out.exists()


@pytest.mark.parametrize(
    ("config", "flags", "needle"),
    [
        ("losses: 5\n", [], "'losses': expected a mapping (kd, kd_alpha, entropy, distribution, ...), got int"),
        ("losses: kd\n", [], "'losses': expected a mapping"),
        ("model_kwargs: {num_classes: 5}\n", [], "num_classes=5 contradicts the data (num_classes=10)"),
        ("model_kwargs: {in_chans: 1}\n", [], "in_chans=1 contradicts the top-level in_chans"),
        ("token_adaptive: false\nquant: {token_adaptive: true}\n", [], "is set by the top-level token_adaptive"),
        ("quant: {weight_bits: 4, act_bits: 4}\n", [], "'weight_bits' is set by the top-level bits"),
        ("quant: {calibration: minmax}\n", [], "'calibration' is set by the top-level calibration"),
        ("quant: {bogus: 3}\n", [], "'quant': unknown key 'bogus' (QuantConfig fields: weight_bits"),
        ("quant: {overrides: {'nosuch.*': {weight_bits: 4}}}\n", [], "quant.overrides: pattern 'nosuch.*' matches no"),
        ("quant: {float_layers: [blocks.99]}\n", [], "quant.float_layers: pattern 'blocks.99' matches no module"),
        ("false\n", [], "expected a mapping of settings, got bool"),
        ("[]\n", [], "expected a mapping of settings, got list"),
        ("epochs: true\n", [], "'epochs': expected a number, got True"),
        ("epochs: 1\nepochs: 2\n", [], "not valid YAML (line 2, column 1): key 'epochs' is given twice"),
        (b"\x89PNG\xff", [], "not UTF-8 text"),
        (None, [], "is a folder, not a file"),
        ("", ["--epochs", "-1"], "--epochs: 'epochs': input should be greater than or equal to 0"),
        ("", ["--threads", "0"], "--threads: 'num_threads': input should be greater than or equal to 1"),
        ("", ["--seed", "-1"], "--seed: 'seed': input should be greater than or equal to 0"),
        ("", ["--seed", str(2**64)], "--seed: 'seed': input should be less than or equal to 4294967295"),
        ("", ["--model", "tiny_llama"], "'tiny_llama' is a language model and data 'digits' is images"),
        ("", ["--data", "stdlib"], "'fmvit_t' is a vision model and data 'stdlib' is text"),
        ("", ["--bits", "w8a8\n"], "--bits: 'bits': expected 'profile' or wNaM, e.g. w8a8, w4a8, w4a4, got 'w8a8\\n'"),
    ],
)
def test_cli_bad_settings_name_the_setting_and_its_source(tmp_path, capsys, config, flags, needle):
    """Each bad setting: one line naming where it came from (the config file, or the flag that set it), exit 2,
    and an existing run in --output left as it was although --force was given."""
    cfg = tmp_path / "run.yaml"
    if config is None:
        cfg.mkdir()
    elif isinstance(config, bytes):
        cfg.write_bytes(config)
    else:
        cfg.write_text(config)
    out = tmp_path / "out"
    out.mkdir()
    (out / "model.pt").write_bytes(b"the previous run")
    err = _cli_fails(["-c", str(cfg), "-o", str(out), "--force", "--fp-epochs", "1", *flags], capsys)
    assert needle in err, err
    source = flags[0] if flags else f"config file '{cfg}'"
    if not any(word in needle for word in ("contradicts", "matches no", "model and data")):  # name their keys
        assert err.startswith(f"error: {source}"), err
    assert (out / "model.pt").read_bytes() == b"the previous run" and len(list(out.iterdir())) == 1


def test_an_empty_config_file_is_no_settings(tmp_path):
    for text in ("", "# nothing yet\n"):
        (tmp_path / "run.yaml").write_text(text)
        assert T.build_config(config_file=str(tmp_path / "run.yaml")) == T.TrainConfig()


def test_cli_json_may_not_replace_a_run_file(tmp_path, capsys):
    out = tmp_path / "r"
    err = _cli_fails(["-o", str(out), "--json", str(out / "model.pt")], capsys)
    assert "is one of the run's own files" in err and not out.exists()


def test_resume_takes_the_same_data_folder_however_spelled(tmp_path, monkeypatch):
    (tmp_path / "imgs").mkdir()
    monkeypatch.chdir(tmp_path)
    saved = T.TrainConfig(data="imgs").model_dump(mode="json")
    T._check_resume_config(saved, T.TrainConfig(data=str(tmp_path / "imgs")), tmp_path / "state.pt")
    T._check_resume_config(saved, T.TrainConfig(data="./imgs/"), tmp_path / "state.pt")
    with pytest.raises(T.EdgeAttnError, match="was made with data='imgs', not 'digits'"):
        T._check_resume_config(saved, T.TrainConfig(), tmp_path / "state.pt")


def test_cli_refuses_to_overwrite_without_force(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "model.pt").write_bytes(b"keep me")
    assert cli_main(["qat", "--output", str(out), "--model", "vit_tiny"]) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert (out / "model.pt").read_bytes() == b"keep me"


def test_low_bit_presets_set_bits_epochs_lr_and_flags_still_win(tmp_path):
    # the W4 presets carry the longer, hotter QAT the benchmark measured; flags and YAML override them
    cfg = T.build_config(preset="w4a8")
    assert (cfg.bits, cfg.epochs, cfg.lr) == ("w4a8", 6, 5e-4)
    w4a4 = T.preset_config("w4a4")
    assert (w4a4.bits, w4a4.grad_clip, w4a4.losses.entropy, w4a4.losses.kd, w4a4.losses.distribution) == (
        "w4a4",
        1.0,
        False,
        True,
        True,
    )
    (tmp_path / "run.yaml").write_text("epochs: 3\n")
    cfg = T.build_config(config_file=str(tmp_path / "run.yaml"), preset="w4a4", lr=2e-4)
    assert (cfg.bits, cfg.epochs, cfg.lr) == ("w4a4", 3, 2e-4)
    # the W8A8 default is unchanged
    assert (T.TrainConfig().epochs, T.TrainConfig().lr) == (2, 1e-4)


def test_grad_clip_bounds_every_step_norm(tmp_path, monkeypatch):
    """With ``grad_clip`` the global gradient norm the optimizer sees never exceeds it; without, it does."""
    seen: dict[str, list[float]] = {}
    step = torch.optim.AdamW.step

    def recording_step(self, *args, **kwargs):
        grads = [p.grad for g in self.param_groups for p in g["params"] if p.grad is not None]
        seen.setdefault(run_name, []).append(float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))))
        return step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", recording_step)
    for run_name, clip in (("free", None), ("clipped", 1e-3)):
        T.run(tiny_cfg(tmp_path / run_name, fp_epochs=0, epochs=1, grad_clip=clip), progress=False)
    assert len(seen["clipped"]) == len(seen["free"]) == 4  # 128 samples / batch 32, QAT only (no FP epochs)
    assert max(seen["clipped"]) <= 1e-3 * (1 + 1e-5)
    assert min(seen["free"]) > 1e-2


def test_augment_shift_trains_on_shifted_images(tmp_path, monkeypatch):
    seen: list[torch.Tensor] = []
    real = T.qat_loss_terms

    def record(cfg, net, student, teacher, x, y):
        seen.append(x.clone())
        return real(cfg, net, student, teacher, x, y)

    monkeypatch.setattr(T, "qat_loss_terms", record)
    plain = T.run(tiny_cfg(tmp_path / "plain", epochs=1), progress=False)
    unshifted, seen[:] = list(seen), []
    shifted = T.run(tiny_cfg(tmp_path / "shifted", epochs=1, augment_shift=2), progress=False)
    assert len(seen) == len(unshifted) == 4
    for a, b in zip(unshifted, seen, strict=True):  # same images (same order), each moved by a whole offset
        assert not torch.equal(a, b)
        assert sorted(a.flatten().tolist()) != sorted(b.flatten().tolist())  # edge fill repeats border pixels
    # FP training was augmented too: the FP models differ, and so do the numbers
    assert plain["fp32_nll"] != shifted["fp32_nll"]
    assert plain["history"][0]["loss_task"] != shifted["history"][0]["loss_task"]


@pytest.mark.parametrize(
    ("settings", "match"),
    [
        ({"model": "tiny_llama", "data": "stdlib", "augment_shift": 1}, "does not apply to a language model"),
        ({"img_size": 16, "augment_shift": 16}, "must be smaller than img_size 16"),
        ({"augment_shift": -1}, "greater than or equal to 0"),
    ],
)
def test_bad_augment_shift_is_refused(settings, match):
    with pytest.raises(T.EdgeAttnError, match=match):
        T.TrainConfig.parse(settings)


def test_float_control_quantizes_nothing(tmp_path):
    """``quant.float_layers: ['*']`` (the benchmark's FP fine-tuning control) leaves every module in float: the
    'PTQ' model is the FP model exactly, and fine-tuning it changes its accuracy only by training."""
    res = T.run(tiny_cfg(tmp_path / "f", epochs=1, quant={"float_layers": ["*"]}), progress=False)
    assert res["ptq"] == res["fp32"]
    assert res["attn_kl_ptq"] == pytest.approx(0.0, abs=1e-12)
    model, _ = load_checkpoint(tmp_path / "f" / "model.pt")
    assert not [n for n, m in model.named_modules() if type(m).__module__.startswith("brevitas")]


def test_distribution_row_floor_reaches_the_loss_and_is_validated(tmp_path, monkeypatch):
    """``losses.distribution_row_floor`` is what the QAT step hands to the distribution loss; a negative one is a
    one-line config error."""
    floors: list[float] = []
    loss_fn = T.distribution_loss

    def recording_loss(student, teacher, row_floor):
        floors.append(row_floor)
        return loss_fn(student, teacher, row_floor)

    monkeypatch.setattr(T, "distribution_loss", recording_loss)
    losses = {"kd": True, "distribution": True, "distribution_row_floor": 0.02}
    T.run(tiny_cfg(tmp_path / "r", fp_epochs=0, epochs=1, losses=losses), progress=False)
    assert floors == [0.02] * 4  # 128 samples / batch 32
    assert T.TrainConfig().losses.distribution_row_floor == 1e-3
    with pytest.raises(T.EdgeAttnError, match="distribution_row_floor"):
        T.TrainConfig.parse({"losses": {"distribution_row_floor": -1.0}})


@pytest.mark.parametrize(
    "losses",
    [
        {**ALL_LOSSES, "entropy_weight": 0.3, "distribution_weight": 0.7, "distribution_row_floor": 0.02},
        {"kd": False, "entropy": False, "distribution": True},  # the teacher runs for its attention logits only
        {"kd": False, "entropy": False, "distribution": False},  # plain QAT: no teacher
    ],
)
def test_qat_loss_terms_match_the_losses_computed_directly(tmp_path, losses):
    """``qat_loss_terms`` (the QAT step's loss, shared with benchmarks/grad_spikes.py) equals the losses of
    ``edgeattn.quant.losses`` on separate probes of the same models, and ``_qat_step_loss`` is its weighted sum in
    the trainer's order."""
    cfg = T.TrainConfig.parse(tiny_cfg(tmp_path, losses=losses))
    lc = cfg.losses
    train, _val, info = T.load_data(cfg)
    teacher = T.frozen_teacher(create_model(cfg.model, **T.model_kwargs_for(cfg, info)), {})
    student = T.calibrated_ptq_model(cfg, teacher, T.quant_config_for(cfg, info), train)
    x, y = train.tensors[0][:8], train.tensors[1][:8]
    terms = T.qat_loss_terms(cfg, student, student, teacher, x, y)

    with Probe(student, ["q_quant", "k_quant", "logits_probe"]) as ps:
        out = student(x)
    with torch.no_grad(), Probe(teacher, ["logits_probe"]) as pt:
        t_out = teacher(x)
    assert len(terms.student_logits) == len(ps["logits_probe"]) == TINY["depth"]
    assert all(torch.equal(a, b) for a, b in zip(terms.student_logits, ps["logits_probe"], strict=True))
    if lc.kd or lc.distribution:
        assert len(terms.teacher_logits) == len(pt["logits_probe"])
        assert all(torch.equal(a, b) for a, b in zip(terms.teacher_logits, pt["logits_probe"], strict=True))
    else:
        assert terms.teacher_logits == []
    if lc.kd:
        task = kd_loss(out, t_out, y, alpha=lc.kd_alpha, temperature=lc.kd_temperature)
    else:
        task = torch.nn.functional.cross_entropy(out, y)
    assert torch.equal(terms.task, task)
    total, parts = task, {"task": float(task.detach())}
    if lc.entropy:
        ent = entropy_loss(ps["q_quant"], ps["k_quant"])
        assert torch.equal(terms.entropy, ent)
        total, parts["entropy"] = total + lc.entropy_weight * ent, float(ent.detach())
    else:
        assert terms.entropy is None
    if lc.distribution:
        dl = distribution_loss(ps["logits_probe"], pt["logits_probe"], row_floor=lc.distribution_row_floor)
        assert torch.equal(terms.distribution, dl)
        total, parts["distribution"] = total + lc.distribution_weight * dl, float(dl.detach())
    else:
        assert terms.distribution is None
    parts["total"] = float(total.detach())
    assert torch.equal(terms.total(), total)

    loss, step_parts = T._qat_step_loss(cfg, student, student, teacher, x, y)
    assert torch.equal(loss, total)
    assert list(step_parts.items()) == list(parts.items())  # the metrics' keys in the same order


@pytest.mark.parametrize("n,batch_size,world", [(128, 32, 1), (130, 32, 1), (1437, 64, 1), (1437, 32, 2), (101, 7, 3)])
def test_steps_per_epoch_counts_the_batches_every_rank_runs(n, batch_size, world):
    # the lr schedule's length must equal the steps the loop takes, on every rank (or DDP ranks fall out of step)
    ds = torch.utils.data.TensorDataset(torch.arange(n))
    for rank in range(world):
        taken = sum(1 for _ in T._batches(ds, T.epoch_order(n, seed=3, epoch=1, rank=rank, world=world), batch_size))
        assert T.steps_per_epoch(n, batch_size, world) == taken


# ---------------------------------------------------------------------------------------------- guards
# Refusals are one line on stderr with exit code 2, before anything is written or removed.


def _cli_fails(argv: list[str], capsys) -> str:
    """Run ``edgeattn qat`` and return its one error line (asserting exit 2 and a single line)."""
    assert cli_main(["qat", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def _yaml(path: Path, cfg: dict) -> str:
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


@pytest.fixture(scope="module")
def fp_run(tmp_path_factory) -> Path:
    """One finished tiny vit_tiny run (FP 1 epoch, QAT 1 epoch, seed 0) whose files the guard tests reuse."""
    out = tmp_path_factory.mktemp("fp") / "r1"
    T.run(tiny_cfg(out, epochs=1), progress=False)
    return out


def test_fp_checkpoint_of_another_model_or_size_is_refused(fp_run, tmp_path, capsys):
    # a config without `model:` means fmvit_t; the checkpoint holds vit_tiny: refused, not relabelled
    no_model = {k: v for k, v in tiny_cfg(tmp_path / "x", epochs=1).items() if k not in ("model", "model_kwargs")}
    cfg = _yaml(tmp_path / "no_model.yaml", no_model)
    fp = str(fp_run / "fp.pt")
    err = _cli_fails(["-c", cfg, "--fp-checkpoint", fp, "-o", str(tmp_path / "r3")], capsys)
    assert "holds a 'vit_tiny' model" in err and "fmvit_t" in err
    cfg = _yaml(tmp_path / "tiny.yaml", tiny_cfg(tmp_path / "x", epochs=1))
    err = _cli_fails(["-c", cfg, "--fp-checkpoint", fp, "--img-size", "32", "-o", str(tmp_path / "r3")], capsys)
    assert "model_kwargs.img_size=16" in err and "32" in err
    assert not (tmp_path / "r3").exists()


def test_outputs_from_an_fp_checkpoint_are_labelled_and_load(fp_run, tmp_path):
    out = tmp_path / "r3"
    res = T.run(tiny_cfg(out, epochs=1, fp_checkpoint=str(fp_run / "fp.pt")), progress=False)
    assert res["model"] == "vit_tiny"
    _, fp_meta = load_checkpoint(fp_run / "fp.pt")
    for name in ("ptq.pt", "qat_last.pt", "model.pt"):
        _, meta = load_checkpoint(out / name)
        assert (meta["model"], meta["model_kwargs"]) == (fp_meta["model"], fp_meta["model_kwargs"]), name
    assert json.loads((out / "result.json").read_text())["model"] == "vit_tiny"


def test_fp_checkpoint_from_another_split_seed_is_refused(fp_run, tmp_path, capsys):
    _, meta = load_checkpoint(fp_run / "fp.pt")
    assert meta["split"] == {"seed": 0, "img_size": 16, "in_chans": 1}
    cfg = _yaml(tmp_path / "tiny.yaml", tiny_cfg(tmp_path / "x", epochs=1))
    out = tmp_path / "seed1"
    err = _cli_fails(["-c", cfg, "--fp-checkpoint", str(fp_run / "fp.pt"), "--seed", "1", "-o", str(out)], capsys)
    assert "seed=0" in err and "seed=1" in err and "trained on" in err
    assert not out.exists()


def test_fp_checkpoint_without_a_recorded_split_still_loads_with_a_warning(fp_run, tmp_path, capsys):
    payload = torch.load(fp_run / "fp.pt", weights_only=True)
    del payload["meta"]["split"], payload["meta"]["config"]  # as an older edgeattn wrote it
    del payload["meta"]["data"]  # the oldest ones did not record the data either
    old = tmp_path / "old_fp.pt"
    torch.save(payload, old)
    res = T.run(tiny_cfg(tmp_path / "r", epochs=1, fp_checkpoint=str(old)), progress=False)
    assert res["status"] == "done"
    err = capsys.readouterr().err
    assert "does not record its train/val split" in err and "'seed': 0" in err


def _copy_run(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


@pytest.mark.parametrize(
    ("change", "key"),
    [({"bits": "w4a8"}, "bits"), ({"batch_size": 16}, "batch_size"), ({"epochs": 2}, "epochs"),
     ({"losses": {"kd": False}}, "losses.kd")],
)
def test_resume_with_other_settings_is_refused(fp_run, tmp_path, change, key):
    out = _copy_run(fp_run, tmp_path / "r")
    before = _snapshot(out)
    with pytest.raises(T.EdgeAttnError, match=rf"made with {key}=") as info:
        T.run(tiny_cfg(out, **{"epochs": 1, **change}), resume=True, progress=False)
    assert len(str(info.value).splitlines()) == 1
    assert _snapshot(out) == before


def test_resume_ignores_threads_and_checks_fp_pt_before_the_first_epoch(fp_run, tmp_path):
    out = _copy_run(fp_run, tmp_path / "r")
    res = T.run(tiny_cfg(out, epochs=1, num_threads=2), resume=True, progress=False)  # threads change no number
    assert res["status"] == "done"
    (out / "state.pt").unlink()  # as if stopped in QAT epoch 1: only fp.pt records the settings
    with pytest.raises(T.EdgeAttnError, match=r"made with lr="):
        T.run(tiny_cfg(out, epochs=1, lr=1e-3), resume=True, progress=False)


def test_resume_of_a_run_from_before_a_setting_existed_takes_its_default(fp_run, tmp_path):
    out = _copy_run(fp_run, tmp_path / "r")
    state = torch.load(out / "state.pt", weights_only=True)
    del state["config"]["augment_shift"]  # written before augmentation existed: its run had none
    torch.save(state, out / "state.pt")
    assert T.run(tiny_cfg(out, epochs=1), resume=True, progress=False)["status"] == "done"
    with pytest.raises(T.EdgeAttnError, match=r"made with augment_shift=0, not 1"):
        T.run(tiny_cfg(out, epochs=1, augment_shift=1), resume=True, progress=False)


def test_resume_of_a_corrupt_state_is_one_error_line(fp_run, tmp_path, capsys):
    out = _copy_run(fp_run, tmp_path / "r")
    (out / "state.pt").write_bytes(b"\x00garbage")
    cfg = _yaml(tmp_path / "tiny.yaml", tiny_cfg(out, epochs=1))
    err = _cli_fails(["-c", cfg, "--resume"], capsys)
    assert "state.pt' cannot be read" in err and "--force" in err


def test_force_removes_the_previous_runs_files_only(fp_run, tmp_path):
    out = _copy_run(fp_run, tmp_path / "r")
    (out / "notes.txt").write_text("mine")
    (out / ".state.pt.abc123.tmp").write_bytes(b"left by a killed run")
    (out / ".metrics.json.k3j2.json").write_text("{")  # a JSON write's temp file
    T.run(tiny_cfg(out, skip_qat=True), progress=False, force=True)
    names = {p.name for p in out.iterdir()}
    assert names == {"fp.pt", "ptq.pt", "result.json", "notes.txt"}  # no stale state.pt / model.pt / metrics
    # an --fp-checkpoint inside the folder being replaced is the run's input: kept, and the run loads it
    fp_bytes = (out / "fp.pt").read_bytes()
    T.run(tiny_cfg(out, epochs=1, fp_checkpoint=str(out / "fp.pt")), progress=False, force=True)
    assert (out / "fp.pt").read_bytes() == fp_bytes and (out / "model.pt").is_file()
    with pytest.raises(T.EdgeAttnError, match="give one"):
        T.run(tiny_cfg(out, epochs=1), progress=False, force=True, resume=True)


def test_force_with_a_bad_model_setting_removes_nothing(fp_run, tmp_path, capsys):
    # the model is built (and token-adaptive settings checked) before --force clears the previous run
    out = _copy_run(fp_run, tmp_path / "r")
    before = _snapshot(out)
    with pytest.raises(T.EdgeAttnError, match="unknown model 'vit_tiy'"):
        T.run({**tiny_cfg(out), "model": "vit_tiy"}, progress=False, force=True)
    with pytest.raises(ValueError, match="depth must be a positive integer"):
        T.run(tiny_cfg(out, model_kwargs={**TINY, "depth": 0}), progress=False, force=True)
    assert _snapshot(out) == before


def test_token_adaptive_first_on_a_causal_model_is_refused_before_training(tmp_path):
    cfg = {"model": "tiny_llama", "model_kwargs": {"dim": 32, "depth": 1, "num_heads": 2}, "data": "stdlib",
           "seq_len": 16, "corpus_bytes": 20_000, "max_train_samples": 64, "max_val_samples": 16, "batch_size": 16,
           "fp_epochs": 1, "epochs": 1, "calib_samples": 16, "num_threads": 1, "token_adaptive": True,
           "quant": {"importance": "first"}, "output_dir": str(tmp_path / "l")}
    with pytest.raises(T.EdgeAttnError, match="'first' is undefined for causal attention"):
        T.run(cfg, progress=False)
    assert not (tmp_path / "l" / "fp.pt").exists()


def test_fp_checkpoint_kwargs_compare_tuples_and_lists_alike():
    # a checkpoint keeps tuples (Python API), a YAML config gives lists: the same model either way
    cfg = T.TrainConfig.parse({"model": "fmvit_t"})
    split = {"seed": 0, "img_size": 32, "in_chans": 3}
    meta = {"model": "fmvit_t", "model_kwargs": {"sr_ratios": (1, 1), "img_size": 32}, "data": "digits",
            "split": split, "quant": None}
    T._check_fp_meta(meta, "fp.pt", cfg, {"sr_ratios": [1, 1], "img_size": 32}, split, warn=False)
    with pytest.raises(T.EdgeAttnError, match=r"model_kwargs.sr_ratios=\[1, 1\], this run has \[1, 2\]"):
        T._check_fp_meta(meta, "fp.pt", cfg, {"sr_ratios": [1, 2], "img_size": 32}, split, warn=False)


def _stop_after(checks: int):
    class StopAfter(T._StopFlag):
        """Acts like a SIGTERM at the ``checks``-th check (4 FP steps, 4 stage boundaries, then per QAT epoch one
        check before it and 4 steps)."""

        seen = 0

        @property
        def stop(self):
            StopAfter.seen += 1
            return StopAfter.seen >= checks

        @stop.setter
        def stop(self, value):
            pass

    return StopAfter


@pytest.mark.parametrize(("checks", "advice"), [(2, "--force starts over"), (4 + 4 + 1 + 2, "--resume continues")])
def test_stop_message_gives_the_advice_that_works(tmp_path, monkeypatch, capsys, checks, advice):
    out = tmp_path / "r"
    cfg = _yaml(tmp_path / "tiny.yaml", tiny_cfg(out, epochs=2))
    monkeypatch.setattr(T, "_StopFlag", _stop_after(checks))
    assert cli_main(["qat", "-c", cfg, "--no-progress"]) == 130
    assert advice in " ".join(capsys.readouterr().out.split())  # rich wraps long lines
    monkeypatch.undo()
    if advice.startswith("--resume"):
        assert cli_main(["qat", "-c", cfg, "--no-progress", "--resume"]) == 0
    else:
        err = _cli_fails(["-c", cfg, "--resume"], capsys)
        assert "nothing to resume" in err
        assert cli_main(["qat", "-c", cfg, "--no-progress", "--force"]) == 0


@pytest.mark.parametrize(
    "setting",
    [{"lr": float("inf")}, {"fp_lr": float("nan")}, {"losses": {"kd_temperature": float("inf")}},
     {"losses": {"entropy_weight": float("nan")}}, {"losses": {"distribution_weight": float("inf")}}],
)
def test_non_finite_numbers_are_refused(setting):
    key = next(iter(setting)) if "losses" not in setting else "losses." + next(iter(setting["losses"]))
    with pytest.raises(T.EdgeAttnError, match=rf"'{key}'.*finite"):
        T.TrainConfig.parse(setting)


def test_cli_non_finite_lr_and_bad_data_files(tmp_path, capsys):
    out = tmp_path / "out"
    assert "finite" in _cli_fails(["--lr", "inf", "-o", str(out)], capsys)
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    err = _cli_fails(["--model", "tiny_llama", "--data", str(empty), "-o", str(out)], capsys)
    assert f"'{empty}' is empty" in err
    # one image per class: no training image for that class (and an empty training split): refused up front
    from PIL import Image

    for cname in ("a", "b"):
        (tmp_path / "imgs" / cname).mkdir(parents=True)
        Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(tmp_path / "imgs" / cname / "0.png")
    err = _cli_fails(["--model", "vit_tiny", "--data", str(tmp_path / "imgs"), "-o", str(out)], capsys)
    assert "class 'a' has 1 image(s)" in err
    assert not out.exists()


def test_checkpoints_get_the_same_modes_as_the_json_files(fp_run):
    modes = {p.name: p.stat().st_mode & 0o777 for p in fp_run.iterdir()}
    assert len(set(modes.values())) == 1, modes  # e.g. 0644 everywhere under umask 022, not 0600 for *.pt


def test_module_entry_point_is_the_qat_command(tmp_path, monkeypatch, capsys):
    """``python -m edgeattn.quant.train`` takes every ``edgeattn qat`` flag (torchrun launches it) and turns a
    plain ValueError into one line, like the CLI."""
    out = tmp_path / "r"
    cfg = _yaml(tmp_path / "tiny.yaml", tiny_cfg(out, epochs=1, img_size=8))
    flags = ["-c", cfg, "--threads", "1", "--img-size", "16", "--lr-schedule", "constant", "--no-kd", "--entropy",
             "--no-distribution", "--no-progress"]
    proc = subprocess.run([sys.executable, "-m", "edgeattn.quant.train", *flags], env=_env(), capture_output=True)
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    config = json.loads((out / "metrics.json").read_text())["config"]
    assert (config["img_size"], config["lr_schedule"], config["num_threads"]) == (16, "constant", 1)
    assert (config["losses"]["kd"], config["losses"]["entropy"], config["losses"]["distribution"]) == (
        False, True, False)

    def broken(*args, **kwargs):
        raise ValueError("boom")

    assert T.main(["-h"]) == 0
    assert "Usage: python -m edgeattn.quant.train [OPTIONS]" in " ".join(capsys.readouterr().out.split())

    monkeypatch.setattr(T, "run", broken)
    assert T.main(["--model", "vit_tiny", "-o", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith("boom") and len(err.splitlines()) == 1


@pytest.mark.parametrize("progress", [True, False])
def test_resume_of_a_finished_run_changes_nothing_and_says_so(fp_run, tmp_path, capsys, progress):
    """Resuming a complete run redid PTQ and rewrote ptq.pt, model.pt and result.json (dropping
    fp_train_seconds); now it returns the run's result.json and leaves every file as it was. The note is not
    progress: --no-progress hid it."""
    out = _copy_run(fp_run, tmp_path / "r")
    before = _snapshot(out)
    res = T.run(tiny_cfg(out, epochs=1), resume=True, progress=progress)
    assert _snapshot(out) == before
    assert res == json.loads((out / "result.json").read_text()) and "fp_train_seconds" in res
    assert "is complete (1 of 1 QAT epochs): nothing to resume; its files are unchanged" in capsys.readouterr().err


def test_resume_checks_the_fp_teacher_by_content_not_by_how_its_path_is_spelled(fp_run, tmp_path, monkeypatch):
    """The QAT epochs are distilled from one FP model: another one at the same path is refused before any file
    is written (it was taken silently, and the losses left the run's curve); the same one spelled another way (an
    absolute path for a relative one) is accepted (it was refused as another setting)."""
    ext = tmp_path / "ext"
    ext.mkdir()
    shutil.copy(fp_run / "fp.pt", ext / "fp.pt")
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "r"
    first = T.run(tiny_cfg(out, epochs=2, fp_checkpoint="ext/fp.pt"), progress=False)
    assert first["status"] == "done"
    (out / "model.pt").unlink()  # as if stopped after the last epoch's state: resuming has work left
    state = torch.load(out / "state.pt", weights_only=True)
    assert state["teacher_fingerprint"] == T.teacher_fingerprint(torch.load(ext / "fp.pt")["state_dict"])
    # the same FP model, spelled as an absolute path: accepted, and the run ends where it would have
    res = T.run(tiny_cfg(out, epochs=2, fp_checkpoint=str(ext / "fp.pt")), resume=True, progress=False)
    assert res["status"] == "done" and res["qat"] == first["qat"]
    # another FP model at the same path: refused, nothing written
    other = torch.load(ext / "fp.pt", weights_only=True)
    name = next(k for k, v in other["state_dict"].items() if v.is_floating_point())
    other["state_dict"][name] = other["state_dict"][name] + 0.01
    torch.save(other, ext / "fp.pt")
    (out / "model.pt").unlink()
    before = _snapshot(out)
    with pytest.raises(T.EdgeAttnError, match=r"^--resume: 'ext/fp.pt' is not the FP model the run in '.*r' "):
        T.run(tiny_cfg(out, epochs=2, fp_checkpoint="ext/fp.pt"), resume=True, progress=False)
    assert _snapshot(out) == before
