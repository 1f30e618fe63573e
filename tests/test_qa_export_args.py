"""QA sweep: bounds of ``edgeattn export``/``profile`` arguments, a run folder given as MODEL, a NaN checkpoint.

Each bad input must give the documented exit code and one ``error:`` line, before any work, with no output folder.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from edgeattn.cli import main
from edgeattn.errors import EdgeAttnError

SMALL = ("--img-size", "32", "--precision", "fp32", "--n-inputs", "2")


class WorkStarted(Exception):
    """Raised in place of the model's resolution: the export got past its argument checks."""


def _no_work(*args, **kwargs):
    raise WorkStarted


def _export(capsys, model: str, out: Path, *extra: str) -> tuple[int, str]:
    """Run ``edgeattn export MODEL -t onnx -p host-cpu -o OUT ...``; (exit code, the one error line)."""
    code = main(["export", model, "-t", "onnx", "-p", "host-cpu", "-o", str(out), *extra])
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return code, lines[0]


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".") or p.name == "o")


# ---------------------------------------------------------------------------------- D4/D5: --threads, --n-inputs
@pytest.mark.parametrize(
    ("flag", "value", "line"),
    [
        ("--threads", "100000", "error: --threads must be <= 1024, got 100000"),
        ("--threads", "1025", "error: --threads must be <= 1024, got 1025"),
        ("--threads", "0", "error: --threads must be >= 1, got 0"),
        ("--threads", "-1", "error: --threads must be >= 1, got -1"),
        ("--n-inputs", "100000000", "error: --n-inputs must be <= 4096, got 100000000"),
        ("--n-inputs", "4097", "error: --n-inputs must be <= 4096, got 4097"),
        ("--n-inputs", "0", "error: --n-inputs must be >= 1, got 0"),
    ],
)
def test_export_refuses_counts_out_of_bounds_before_any_work(tmp_path, capsys, monkeypatch, flag, value, line):
    # the model is never resolved: on the old code the run got past the checks (and 100000 threads hung the host)
    monkeypatch.setattr("edgeattn.export.api.resolve_model", _no_work)
    small = [a for a in SMALL if a not in ("--n-inputs", "2")] if flag == "--n-inputs" else list(SMALL)
    code, got = _export(capsys, "mobilenetv2", tmp_path / "o", *small, flag, value)
    assert (code, got) == (2, line)
    assert _leftovers(tmp_path) == []


def test_the_bounds_themselves_are_accepted_and_match_qat(tmp_path, monkeypatch):
    from edgeattn.export import api
    from edgeattn.quant.train import MAX_THREADS as QAT_MAX_THREADS

    from edgeattn.profile import runners

    assert api.MAX_THREADS == runners.MAX_THREADS == QAT_MAX_THREADS == 1024
    monkeypatch.setattr(api, "resolve_model", _no_work)
    for kwargs in ({"threads": 1024, "n_inputs": 4096}, {"threads": 1, "n_inputs": 1}):
        with pytest.raises(WorkStarted):  # past every argument check
            api.export_model("mobilenetv2", "onnx", "host-cpu", tmp_path / "o", precision="fp32", **kwargs)
    runners.check_batch_and_threads(1, 1024)


@pytest.mark.parametrize(("kwargs", "match"), [({"threads": 2000}, "--threads must be <= 1024, got 2000"),
                                               ({"threads": 0}, "--threads must be >= 1, got 0"),
                                               ({"n_inputs": 5000}, "--n-inputs must be <= 4096, got 5000")])
def test_export_all_refuses_counts_out_of_bounds_before_any_work(tmp_path, monkeypatch, kwargs, match):
    from edgeattn.export import api

    monkeypatch.setattr(api, "resolve_model", _no_work)
    with pytest.raises(EdgeAttnError, match=match) as info:
        api.export_all("mobilenetv2", tmp_path / "all", targets=["onnx", "openvino"], **kwargs)
    assert info.value.exit_code == 2 and not (tmp_path / "all").exists()


def test_profile_refuses_threads_above_the_bound(tmp_path, capsys, monkeypatch):
    from edgeattn.profile import measure

    monkeypatch.setattr(measure, "open_runner", _no_work)
    assert main(["profile", str(tmp_path / "m.onnx"), "--threads", "5000"]) == 2
    assert "--threads must be <= 1024, got 5000" in capsys.readouterr().err


# ---------------------------------------------------------------------------------- D8: a run folder as MODEL
def test_a_folder_given_as_the_checkpoint_is_named_as_a_folder(tmp_path, capsys, monkeypatch):
    run = tmp_path / "run1"
    run.mkdir()
    for name in ("qat_last.pt", "model.pt", "fp.pt", "state.pt", "metrics.json"):  # only names are read
        (run / name).write_bytes(b"")
    (tmp_path / "adir").mkdir()
    monkeypatch.chdir(tmp_path)
    holds = "(it holds fp.pt, model.pt, qat_last.pt)"  # state.pt is qat's resume state, not a model
    for model, extra, shown in (
        (str(run), (), str(run)),
        ("run1", (), "run1"),  # no path separator: it used to be an "unknown model"
        ("mobilenetv2", ("--checkpoint", "run1"), "run1"),
    ):
        code, line = _export(capsys, model, tmp_path / "o", *extra, *SMALL)
        assert (code, line) == (
            7, f"error: '{shown}' is a folder; give a checkpoint file such as {shown}/model.pt {holds}"
        )
    code, line = _export(capsys, "adir", tmp_path / "o", *SMALL)
    assert (code, line) == (
        7, "error: 'adir' is a folder and holds no .pt file; give a checkpoint file (edgeattn qat writes "
        "OUTPUT/model.pt)"
    )
    assert _leftovers(tmp_path) == []

    # a folder that has a registry model's name (say an earlier `-o mobilenetv2`) does not hide the model
    from edgeattn.export.api import resolve_model

    from edgeattn.device_profile import load_profile

    (tmp_path / "mobilenetv2").mkdir()
    module, name, meta = resolve_model("mobilenetv2", None, load_profile("host-cpu"), {"img_size": 32})
    assert name == "mobilenetv2" and meta is None and isinstance(module, torch.nn.Module)


# ---------------------------------------------------------------------------------- D6: a diverged checkpoint
def _checkpoint(path: Path, quantized: bool, poison) -> dict[str, torch.Tensor]:
    """A mobilenetv2 (img 32) checkpoint, float or quantized, whose saved state ``poison`` edits in place."""
    from edgeattn.quant import calibrate, quantize_model
    from edgeattn.quant.checkpoint import save_checkpoint

    from edgeattn.models import create_model
    from edgeattn.reparameterize import reparameterize

    kwargs = {"img_size": 32, "num_classes": 10}
    model = create_model("mobilenetv2", **kwargs).eval()
    meta = {"model": "mobilenetv2", "model_kwargs": kwargs, "quant": None, "reparameterized": False}
    if quantized:  # calibrated, as a diverged run's checkpoint is (an uncalibrated scale loads as uncalibrated)
        model = quantize_model(reparameterize(model), "host-cpu")
        calibrate(model, [torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))])
        meta.update(quant=model.quant_config, reparameterized=True)
    save_checkpoint(path, model, meta)
    payload = torch.load(path, weights_only=True)
    poison(payload["state_dict"])
    torch.save(payload, path)
    return payload["state_dict"]


def test_a_checkpoint_with_nan_or_inf_weights_is_refused_at_load(tmp_path, capsys):
    keys: list[str] = []

    def poison(sd: dict[str, torch.Tensor]) -> None:
        floats = [k for k, v in sd.items() if v.is_floating_point() and v.numel() >= 5]
        keys.extend([floats[3], floats[7]])
        sd[floats[3]].view(-1)[:5] = float("nan")  # 5 NaN in the 4th float tensor
        sd[floats[7]].view(-1)[1:3] = float("-inf")  # 2 inf in the 8th

    ckpt = tmp_path / "model.pt"
    _checkpoint(ckpt, quantized=False, poison=poison)
    for model, extra in ((str(ckpt), ()), ("mobilenetv2", ("--checkpoint", str(ckpt)))):
        code, line = _export(capsys, model, tmp_path / "o", *extra, "--n-inputs", "2")
        assert (code, line) == (
            7,
            f"error: checkpoint '{ckpt}' holds non-finite weights (5 NaN and 2 inf in 2 tensors, first: {keys[0]}); "
            "it is from a diverged run: retrain it or export an earlier checkpoint",
        )
    assert not (tmp_path / "o").exists() and _leftovers(tmp_path) == []


def test_a_nan_quantizer_scale_is_refused_too(tmp_path, capsys):
    scales: list[str] = []

    def poison(sd: dict[str, torch.Tensor]) -> None:
        scales.extend(k for k in sd if k.endswith("scaling_impl.value"))
        sd[scales[2]].fill_(float("nan"))  # the weights stay finite: only a quantizer's scale diverged

    sd = _checkpoint(tmp_path / "q.pt", quantized=True, poison=poison)
    n = sd[scales[2]].numel()
    code, line = _export(capsys, str(tmp_path / "q.pt"), tmp_path / "o", "--n-inputs", "2")
    assert code == 7 and f"holds non-finite weights ({n} NaN in 1 tensor, first: {scales[2]});" in line
    assert not (tmp_path / "o").exists()


def test_hls_refuses_a_state_dict_with_nan_weights(tmp_path, capsys):
    # edgeattn hls loads checkpoints on its own path: the same finiteness check, before any project is written
    from edgeattn.models import create_model

    kwargs = {"embed_dim": 32, "img_size": 16, "num_heads": 2, "depth": 2}
    state = create_model("edge_moe_vit", **kwargs).state_dict()
    name = next(k for k, v in state.items() if v.is_floating_point() and v.numel() >= 3)
    state[name].view(-1)[:3] = float("nan")
    torch.save(state, tmp_path / "w.pt")
    args = [a for k, v in kwargs.items() for a in ("--set", f"{k}={v}")]
    code = main(["hls", "edge_moe_vit", "-o", str(tmp_path / "p"), "--checkpoint", str(tmp_path / "w.pt"), *args])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err == [
        f"error: --checkpoint '{tmp_path / 'w.pt'}' holds non-finite weights (3 NaN in 1 tensor, first: {name}); "
        "it is from a diverged run"
    ]
    assert not (tmp_path / "p").exists() and _leftovers(tmp_path) == []


def _profile_with_shape(tmp_path: Path, shape: list[int]) -> Path:
    import yaml

    from edgeattn.device_profile import load_profile

    data = load_profile("host-cpu").model_dump(mode="json")
    data["name"] = "shaped"
    data["export"]["input_shape"] = shape
    path = tmp_path / "shaped.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_a_non_square_profile_shape_is_refused_for_a_registry_vision_model(tmp_path, capsys):
    """[1, 3, 32, 48] was exported as [1, 3, 32, 32] without a word: registry vision models are square."""
    prof = _profile_with_shape(tmp_path, [1, 3, 32, 48])
    out = tmp_path / "o"
    assert main(["export", "mobilenetv2", "-t", "onnx", "-p", str(prof), "--precision", "fp32", "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert err == (
        "error: profile 'shaped' gives input_shape [1, 3, 32, 48], not square: registry vision models are built at "
        "img_size x img_size; pass --img-size, or export your own nn.Module for 32x48\n"
    )
    assert not out.exists()


def test_a_batch_tokens_profile_sets_the_language_models_context(tmp_path, capsys):
    """(batch, tokens) = [2, 16]: the ONNX takes [2, 16] token ids (it took the model's own 128 tokens)."""
    import onnx

    prof = _profile_with_shape(tmp_path, [2, 16])
    out = tmp_path / "lm"
    args = ["export", "tiny_llama", "-t", "onnx", "-p", str(prof), "--precision", "fp32", "--n-inputs", "2"]
    assert main([*args, "-o", str(out)]) == 0, capsys.readouterr().err
    model = onnx.load(str(out / "model.onnx"))
    dims = [[d.dim_value for d in i.type.tensor_type.shape.dim] for i in model.graph.input]
    assert dims == [[2, 16]]


def test_int8_export_of_a_non_square_model_calibrates_on_random_images(tmp_path):
    """A (3, 16, 24) model: digits (square) once calibrated it at 16x16 and crashed in torch ('mat1 and mat2 shapes
    cannot be multiplied'); now PTQ calibrates on random normal images of its own shape, and the note says so."""
    from edgeattn.export import export_model
    from torch import nn

    class Wide(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.input_size = (3, 16, 24)
            self.conv = nn.Conv2d(3, 8, 3, padding=1)
            self.fc = nn.Linear(8 * 16 * 24, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(torch.relu(self.conv(x)).flatten(1))

    torch.manual_seed(0)
    report = export_model(Wide().eval(), "onnx", "host-cpu", tmp_path / "w", precision="int8", n_inputs=8)
    assert all(p["passed"] for p in report.parity)
    assert "PTQ calibrated on 16 random normal inputs of shape [3, 16, 24]; pass calib_inputs= for your own data" in (
        report.notes
    )


# ------------------------------------------------------------------------------------------------------- --seed
def test_export_seed_flag_draws_the_registry_weights_and_is_recorded(tmp_path, capsys):
    """docs/export.md said a registry model's random weights are drawn from --seed, which export did not have."""
    import json

    import onnx
    from onnx import numpy_helper

    def weights(out: Path) -> dict:
        return {t.name: numpy_helper.to_array(t) for t in onnx.load(out / "model.onnx").graph.initializer}

    runs = {}
    for seed in ("0", "0", "1"):
        out = tmp_path / f"s{seed}_{len(runs)}"
        assert main(["export", "vit_tiny", "-t", "onnx", "-p", "host-cpu", "-o", str(out), *SMALL, "--seed", seed]) == 0
        assert json.loads((out / "report.json").read_text())["settings"]["seed"] == int(seed)
        runs[out.name] = weights(out)
    capsys.readouterr()
    (a, w0), (b, w0_again), (c, w1) = runs.items()
    big = max(w0, key=lambda k: w0[k].size)
    assert all((w0[k] == w0_again[k]).all() for k in w0)  # the same seed gives the same weights
    assert not (w0[big] == w1[big]).all()
    code, line = _export(capsys, "vit_tiny", tmp_path / "o", *SMALL, "--seed", "-1")
    assert code == 2 and line == "error: seed must be an integer in 0..4294967295, got -1"
    assert not (tmp_path / "o").exists()
