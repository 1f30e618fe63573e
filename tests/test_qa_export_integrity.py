"""QA sweep (pipeline integrity), export side.

* A token-adaptive checkpoint exports stripped (every token at act_bits): report.json measures what that costs
  against the model as trained (``checkpoint.token_adaptive_gap``), checked here in float64 numpy.
* More than 8 bits (a profile's quant, or a checkpoint's quantizers) is refused for the Q/DQ targets before any
  work, exit 2, instead of exit 5 after calibration.
* The refusal of a checkpoint whose softmax/GELU its own model_kwargs chose names that entry.
* The no-VNNI saturation hint names the quant overrides that gave layers 8-bit weights.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from edgeattn.export import export_all, export_model
from edgeattn.quant import QuantConfig, calibrate, quantize_model
from edgeattn.quant.checkpoint import load_checkpoint, save_checkpoint

from edgeattn.cli import main
from edgeattn.errors import EdgeAttnError
from edgeattn.models import create_model

TINY_VIT = {"num_classes": 10, "img_size": 16, "depth": 2, "embed_dim": 32, "num_heads": 2, "patch_size": 4}


def _quant_checkpoint(path: Path, cfg: QuantConfig, **model_kwargs) -> Path:
    """A calibrated quantized tiny vit_tiny saved as ``edgeattn qat`` would."""
    torch.manual_seed(0)
    kwargs = {**TINY_VIT, **model_kwargs}
    q = quantize_model(create_model("vit_tiny", **kwargs).eval(), cfg)
    calibrate(q, [torch.randn(16, 3, 16, 16, generator=torch.Generator().manual_seed(1))])
    return save_checkpoint(path, q, {"model": "vit_tiny", "model_kwargs": kwargs, "quant": cfg})


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


# ------------------------------------------------------------------------ 1: what stripping token-adaptive bits costs
def test_token_adaptive_gap_is_measured_against_the_model_as_trained(tmp_path):
    cfg = QuantConfig(token_adaptive=True, token_ratio=0.5, low_act_bits=2)  # 2-bit tokens: a gap to see
    ckpt = _quant_checkpoint(tmp_path / "m.pt", cfg)
    x = np.random.default_rng(3).standard_normal((8, 3, 16, 16)).astype(np.float32)
    rep = export_model(str(ckpt), "onnx", "host-cpu", tmp_path / "o", inputs=x, n_inputs=8)
    gap = rep.checkpoint["token_adaptive_gap"]

    # independent reference: both forms of the checkpoint in torch, the figures in float64 numpy
    adaptive, _ = load_checkpoint(ckpt)
    stripped, _ = load_checkpoint(ckpt, strip_token_adaptive=True)
    with torch.no_grad():
        a = adaptive(torch.from_numpy(x)).double().numpy()
        s = stripped(torch.from_numpy(x)).double().numpy()
    rel = np.abs(a - s).max() / (a.max() - a.min())
    cos = ((a * s).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(s, axis=1))).min()
    top1 = (a.argmax(1) == s.argmax(1)).mean()
    assert rel > 1e-3  # stripping does move this model: the figures below are not trivially zero
    assert gap["max_abs_rel_range"] == pytest.approx(rel, rel=1e-5)
    assert gap["cosine"] == pytest.approx(cos, abs=1e-6)
    assert gap["top1"] == pytest.approx(top1) and gap["n_inputs"] == 8
    # the stripping note carries the figure; report.json has it too
    note = next(n for n in rep.notes if "token-adaptive bits stripped" in n)
    assert f"max {rel:.3g} of the range" in note and f"top-1 agreement {top1:.3f}" in note
    assert '"token_adaptive_gap"' in (tmp_path / "o" / "report.json").read_text()


def test_a_token_adaptive_file_that_loads_only_stripped_exports_with_the_gap_unmeasured(tmp_path, monkeypatch):
    def refuse(path):  # what load_checkpoint says of a file from before pooled-key scores
        raise EdgeAttnError(f"checkpoint '{path}' was written before token-adaptive bits scored pooled-key attention")

    monkeypatch.setattr("edgeattn.export.api._load_adaptive", refuse)
    ckpt = _quant_checkpoint(tmp_path / "m.pt", QuantConfig(token_adaptive=True))
    rep = export_model(str(ckpt), "onnx", "host-cpu", tmp_path / "o", n_inputs=2)
    assert rep.passed and rep.checkpoint["token_adaptive_stripped"] and rep.checkpoint["token_adaptive_gap"] is None
    note = next(n for n in rep.notes if "token-adaptive bits stripped" in n)
    assert "what stripping costs was not measured (checkpoint" in note and "pooled-key" in note


# ------------------------------------------------------------------------ 2: more than 8 bits for Q/DQ targets
def _wide_profile(tmp_path: Path, weight_bits: int = 10, act_bits: int = 8) -> Path:
    path = tmp_path / "wide.yaml"
    path.write_text(
        "name: wide\ntargets: [onnx, openvino]\nruntime: {name: openvino, version: '>=2024.4', device: CPU}\n"
        f"precision: int8\nquant: {{weight_bits: {weight_bits}, act_bits: {act_bits}, preset: openvino}}\n"
        "export: {opset: 17, input_shape: [1, 3, 16, 16], dynamic_batch: false}\n"
        "approx: {softmax: exact, gelu: exact}\n"
        "openvino: {compress_to_fp16: false, hint: latency, inference_precision: f32}\n"
    )
    return path


class WorkStarted(Exception):
    """Raised in place of the model's resolution: the export got past its up-front checks."""


@pytest.mark.parametrize(("bits", "field"), [((10, 8), "quant.weight_bits is 10"), ((8, 16), "quant.act_bits is 16")])
def test_a_profile_asking_for_more_than_8_bits_is_refused_before_any_work(tmp_path, capsys, monkeypatch, bits, field):
    # old code: calibrated, then exit 5 "ONNX export of ... failed: Bit width 10 is not supported"
    def no_work(*args, **kwargs):
        raise WorkStarted

    monkeypatch.setattr("edgeattn.export.api.resolve_model", no_work)
    prof = _wide_profile(tmp_path, *bits)
    out = tmp_path / "o"
    code = main(["export", "vit_tiny", "-t", "onnx", "-p", str(prof), "-o", str(out), "--img-size", "16"])
    line = _one_error_line(capsys)
    assert code == 2 and field in line and "profile 'wide'" in line and "2 to 8 bits" in line, line
    assert not out.exists()
    # fp32 does not quantize: the profile's quant does not apply and nothing is refused
    with pytest.raises(WorkStarted):
        export_model("vit_tiny", "onnx", str(prof), out, precision="fp32", n_inputs=1)


def test_export_all_refuses_a_wide_profile_before_any_target_runs(tmp_path, monkeypatch):
    ran: list[str] = []
    monkeypatch.setattr("edgeattn.export.api.export_model", lambda model, target, *a, **k: ran.append(target))
    prof = _wide_profile(tmp_path)
    with pytest.raises(EdgeAttnError, match=r"profile 'wide': quant.weight_bits is 10.*openvino export") as info:
        export_all("vit_tiny", tmp_path / "all", ["onnx", "openvino"], {"openvino": str(prof)}, n_inputs=1)
    assert info.value.exit_code == 2 and ran == []  # old code: the onnx target ran first


def test_a_checkpoint_holding_more_than_8_bits_is_refused_with_exit_2(tmp_path, capsys):
    ckpt = _quant_checkpoint(tmp_path / "m.pt", QuantConfig(weight_bits=10))
    out = tmp_path / "o"
    code = main(["export", str(ckpt), "-t", "onnx", "-p", "host-cpu", "-o", str(out), "--n-inputs", "1"])
    line = _one_error_line(capsys)
    # old code: exit 5, "ONNX export of VisionTransformer failed: Bit width 10 is not supported."
    assert code == 2 and f"checkpoint '{ckpt}' holds 10-bit weight quantizers" in line, line
    assert "2 to 8 bits" in line and not out.exists()


# ------------------------------------------------------------------------ 3: approximations chosen by model_kwargs
def test_approximation_refusal_names_the_model_kwargs_entry_that_chose_it(tmp_path, capsys):
    torch.manual_seed(0)
    kwargs = {**TINY_VIT, "softmax": "ibert", "gelu": "edgemoe"}  # as /tmp/sweep4/apxcfg.yaml's qat run set them
    meta = {"model": "vit_tiny", "model_kwargs": kwargs}
    ckpt = save_checkpoint(tmp_path / "k.pt", create_model("vit_tiny", **kwargs), meta)
    out = str(tmp_path / "o")
    code = main(["export", str(ckpt), "-t", "onnx", "-p", "host-cpu", "-o", out, "--precision", "fp32"])
    line = _one_error_line(capsys)
    assert code == 2 and "model_kwargs set softmax: ibert, gelu: edgemoe (meta['model_kwargs']" in line, line
    assert "qat run must not set them, or must use a profile with approx.softmax ibert and approx.gelu edgemoe" in line
    assert "fine-tune it with that profile" not in line
    # methods not chosen by model_kwargs (set on the model itself) keep the advice to fine-tune with the profile
    from edgeattn.approx import set_approximations

    plain = create_model("vit_tiny", **TINY_VIT)
    set_approximations(plain, softmax="ibert")
    ckpt2 = save_checkpoint(tmp_path / "p.pt", plain, {"model": "vit_tiny", "model_kwargs": TINY_VIT})
    with pytest.raises(EdgeAttnError, match=r"fine-tune it with that profile \(edgeattn qat --profile host-cpu\)"):
        export_model(str(ckpt2), "onnx", "host-cpu", tmp_path / "o2", precision="fp32", n_inputs=1)


def test_methods_a_qat_profile_chose_keep_the_advice_to_fine_tune_with_the_export_profile(tmp_path):
    """edgeattn qat writes its profile's softmax/GELU into meta['model_kwargs'] and records which entries its config
    gave (model_kwargs_given): only those are named. A qat run on zcu102-hls (online, edgemoe) exported for host-cpu
    was told its model_kwargs set them and that its qat run must not set them, though the user never had."""
    torch.manual_seed(0)
    kwargs = {**TINY_VIT, "softmax": "online", "gelu": "edgemoe"}
    meta = {"model": "vit_tiny", "model_kwargs": kwargs, "model_kwargs_given": []}
    ckpt = save_checkpoint(tmp_path / "q.pt", create_model("vit_tiny", **kwargs), meta)
    with pytest.raises(EdgeAttnError) as err:
        export_model(str(ckpt), "onnx", "host-cpu", tmp_path / "o", precision="fp32", n_inputs=1)
    assert "fine-tune it with that profile (edgeattn qat --profile host-cpu)" in str(err.value)
    assert "model_kwargs set" not in str(err.value)
    # an entry the run's config gave is still named
    meta["model_kwargs_given"] = ["gelu"]
    ckpt = save_checkpoint(tmp_path / "g.pt", create_model("vit_tiny", **kwargs), meta)
    with pytest.raises(EdgeAttnError, match=r"model_kwargs set gelu: edgemoe \(meta\['model_kwargs'\]"):
        export_model(str(ckpt), "onnx", "host-cpu", tmp_path / "o", precision="fp32", n_inputs=1)
    assert not (tmp_path / "o").exists()


# ------------------------------------------------------------------------ 4: the no-VNNI hint names the overrides
def test_saturation_hint_names_the_overrides_that_set_8_bit_weights():
    from edgeattn.export.api import _saturation_hint

    cfg = QuantConfig(
        weight_bits=7,
        kv_max_bits=7,
        overrides={
            "blocks.1.mlp": {"weight_bits": 8},
            "blocks.0": {"weight_bits": 6},
            "nothing.here": {"weight_bits": 8},
        },
    )
    torch.manual_seed(0)
    q = quantize_model(create_model("vit_tiny", **TINY_VIT).eval(), cfg)
    hint = _saturation_hint(q, "openvino-cpu-avx2", "AVX2", cfg.model_dump(mode="json"))
    # only the pattern that gave a layer 8 bits: not the 6-bit one, not the one matching no module
    assert "8-bit weights (set by quant.overrides 'blocks.1.mlp': give them weight_bits 7 or less)" in hint, hint
    assert "'blocks.0'" not in hint and "nothing.here" not in hint
    # a model whose 8 bits are its global weight_bits names no override
    q8 = quantize_model(create_model("vit_tiny", **TINY_VIT).eval(), QuantConfig(weight_bits=8))
    assert "overrides" not in _saturation_hint(q8, "openvino-cpu", "AVX2", QuantConfig(weight_bits=8).model_dump())
