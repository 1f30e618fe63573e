"""`edgeattn hls --reference`: a quantized checkpoint is gated against the arithmetic the design implements.

- ``design`` (the default): the checkpoint's quantized weights with float activations, recomputed here in numpy
  float64 from the master weights and the weight quantizer's scale (a whole tiny ``vit_tiny``: patch embedding,
  one encoder layer, norm, head);
- a W4A4 checkpoint passes the default gate against it, while ``--reference checkpoint`` (the fake-quant model,
  4-bit activations on) reproduces the old failure (0.127 of the output range, cosine 0.953);
- the kind is recorded in ``project.json``, ``--json``, ``csim_report.json`` and the console lines; a float model
  gives the same figures either way; a bad value is one line, exit 2, nothing written.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from _hls_toolchain import gate_figures as _figures
from _hls_toolchain import require_toolchain

from edgeattn.cli import main
from edgeattn.models import create_model

TINY = {"num_classes": 10, "img_size": 16, "depth": 1, "embed_dim": 32, "num_heads": 2, "patch_size": 4}
RANDOM = ["--vectors-from", "random"]


def _checkpoint(path: Path, bits: str, **approx: str) -> torch.nn.Module:
    """A calibrated (PTQ) tiny ``vit_tiny`` under the fpga preset, saved at ``path`` as ``edgeattn qat`` does."""
    from edgeattn.quant import QuantConfig, ptq
    from edgeattn.quant.checkpoint import save_checkpoint

    kwargs = {**TINY, **approx}
    torch.manual_seed(11)
    model = create_model("vit_tiny", **kwargs).eval()
    cfg = QuantConfig.from_profile("zcu102-hls").with_bits(bits)
    qmodel = ptq(model, cfg, [torch.randn(16, 3, 16, 16, generator=torch.Generator().manual_seed(1))])
    save_checkpoint(path, qmodel, {"model": "vit_tiny", "model_kwargs": kwargs, "quant": cfg})
    return qmodel


@pytest.fixture(scope="module")
def w4a4(tmp_path_factory) -> Path:
    """The W4A4 checkpoint whose old gate failure docs/hls.md records (online softmax, EdgeMoE GELU)."""
    path = tmp_path_factory.mktemp("ckpt") / "w4a4.pt"
    _checkpoint(path, "w4a4", softmax="online", gelu="edgemoe")
    return path


def _hls(capsys, prj: Path, ckpt: Path, *extra: str) -> tuple[int, str, str]:
    code = main(["hls", "vit_tiny", "-o", str(prj), "--checkpoint", str(ckpt), *extra])
    out, err = capsys.readouterr()
    return code, " ".join(out.split()), err


# ------------------------------------------------------------------ the float64 reference, by hand
def _w4(layer: torch.nn.Module) -> np.ndarray:
    """4-bit narrow-range weights on the quantizer's grid: clip(round_half_even(w / scale), -7, 7) * scale."""
    scale = float(layer.quant_weight().scale.detach())
    w = layer.weight.detach().double().numpy()
    return np.clip(np.round(w / scale), -7, 7) * scale


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().double().numpy()


def _ln(x: np.ndarray, norm: torch.nn.LayerNorm) -> np.ndarray:
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + norm.eps) * _np(norm.weight) + _np(norm.bias)


def _lin(x: np.ndarray, layer: torch.nn.Module) -> np.ndarray:
    return x @ _w4(layer).reshape(layer.weight.shape[0], -1).T + _np(layer.bias)


def _vit_float64(q: torch.nn.Module, image: np.ndarray) -> np.ndarray:
    """The tiny ViT with 4-bit weights and unquantized float64 activations, exact softmax and erf GELU."""
    p = q.patch_embed.kernel_size[0]
    c, h, w = image.shape
    patches = image.reshape(c, h // p, p, w // p, p).transpose(1, 3, 0, 2, 4).reshape(-1, c * p * p)
    x = np.concatenate([_np(q.cls_token).reshape(1, -1), _lin(patches, q.patch_embed)]) + _np(q.pos_embed)[0]
    for blk in q.blocks:
        n, d = x.shape
        heads = blk.attn.num_heads
        qkv = _lin(_ln(x, blk.norm1), blk.attn.qkv).reshape(n, 3, heads, d // heads).transpose(1, 2, 0, 3)
        s = qkv[0] @ qkv[1].transpose(0, 2, 1) / math.sqrt(d // heads)
        e = np.exp(s - s.max(-1, keepdims=True))
        att = (e / e.sum(-1, keepdims=True)) @ qkv[2]
        x = x + _lin(att.transpose(1, 0, 2).reshape(n, d), blk.attn.proj)
        hid = _lin(_ln(x, blk.norm2), blk.mlp.fc1)
        hid = 0.5 * hid * (1.0 + np.vectorize(math.erf)(hid / math.sqrt(2.0)))
        x = x + _lin(hid, blk.mlp.fc2)
    return _lin(_ln(x[:1], q.norm), q.head)[0]


def test_design_reference_is_the_quantized_weights_with_float_activations(tmp_path, capsys):
    ckpt = tmp_path / "exact.pt"
    qmodel = _checkpoint(ckpt, "w4a4")  # exact softmax and GELU: the float64 model above computes those
    prj = tmp_path / "p"
    code, _, err = _hls(capsys, prj, ckpt, "--layer", "all", "--vectors", "2", *RANDOM)
    assert code == 0, err
    images = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0)).double().numpy()
    expect = np.stack([_vit_float64(qmodel, im) for im in images])
    tb_float = np.loadtxt(prj / "tb_data/tb_float.dat", ndmin=2)
    span = expect.max() - expect.min()
    assert np.abs(tb_float - expect).max() < 1e-5 * span  # float32 torch vs float64 numpy
    # the fake-quant model (4-bit activations) is far from it: that was the reference before
    with torch.no_grad():
        fake_quant = qmodel(torch.from_numpy(images).float()).double().numpy()
    assert np.abs(fake_quant - expect).max() > 0.05 * span
    # the golden model is then within its own fixed-point error of the reference
    rel, cos = _figures(prj)
    assert rel < 0.01 and cos > 0.9995


def test_w4a4_checkpoint_passes_the_default_gate_against_the_design(tmp_path, capsys, w4a4):
    prj, summary = tmp_path / "p", tmp_path / "s.json"
    code, out, err = _hls(capsys, prj, w4a4, "--layer", "all", *RANDOM, "--json", str(summary))
    assert code == 0, err
    rel, cos = _figures(prj)
    assert rel < 0.01 and cos > 0.9995  # measured 0.00503 / 0.999897
    saved = json.loads((prj / "project.json").read_text())
    assert saved["reference_kind"] == "design" and saved["reference_bits"] == "W4A4"
    assert saved["reference"].startswith("the W4A4 checkpoint's quantized weights with float activations")
    assert saved["gate"]["passed"] and saved["gate"]["max_abs_rel_range"] == pytest.approx(rel, rel=1e-9)
    assert json.loads(summary.read_text())["reference_kind"] == "design"
    phrase = "vs the W4A4 checkpoint's weights with float activations (--reference design)"
    assert f"fixed point {phrase}:" in out and f"accuracy gate {phrase}:" in out and ": passed" in out


def test_checkpoint_reference_reproduces_the_old_failure(tmp_path, capsys, w4a4):
    prj, summary = tmp_path / "p", tmp_path / "s.json"
    extra = ["--layer", "all", *RANDOM, "--reference", "checkpoint", "--json", str(summary)]
    code, out, err = _hls(capsys, prj, w4a4, *extra)
    rel, cos = _figures(prj)
    assert rel == pytest.approx(0.127, abs=5e-4) and cos == pytest.approx(0.953, abs=5e-4)  # docs/hls.md
    assert code == 1 and err.count("\n") == 1
    assert err.startswith(
        "error: accuracy gate failed: the fixed-point golden model vs the checkpoint's W4A4 model "
        "(--reference checkpoint): max abs error 0.127 of the output range > 0.1 (--atol)"
    )
    saved = json.loads((prj / "project.json").read_text())
    assert saved["reference_kind"] == "checkpoint" and saved["reference"].startswith("the fake-quant W4A4 model")
    assert json.loads(summary.read_text())["reference_kind"] == "checkpoint"
    # its tb_float.dat is the fake-quant model's output
    images = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    from edgeattn.quant.checkpoint import load_checkpoint

    qmodel, _ = load_checkpoint(w4a4, strip_token_adaptive=True)
    with torch.no_grad():
        fake_quant = qmodel(images).double().numpy()
    assert np.abs(np.loadtxt(prj / "tb_data/tb_float.dat", ndmin=2) - fake_quant).max() < 1e-6
    # and the model's activation quantizers are on again after generate_project
    with torch.no_grad():
        assert torch.equal(qmodel(images), torch.from_numpy(fake_quant).float())


def test_a_float_model_is_its_own_reference_either_way(tmp_path, capsys):
    from edgeattn.quant.checkpoint import save_checkpoint

    torch.manual_seed(3)
    ckpt = tmp_path / "fp.pt"
    save_checkpoint(ckpt, create_model("vit_tiny", **TINY).eval(), {"model": "vit_tiny", "model_kwargs": TINY})
    figures = []
    for kind in ("design", "checkpoint"):
        prj = tmp_path / kind
        code, out, err = _hls(capsys, prj, ckpt, "--vectors", "2", *RANDOM, "--reference", kind)
        assert code == 0, err
        saved = json.loads((prj / "project.json").read_text())
        assert saved["reference"] == "the float model" and saved["reference_kind"] == kind
        assert "fixed point vs the float model:" in out
        figures.append((saved["gate"], (prj / "tb_data/tb_float.dat").read_text()))
    assert figures[0] == figures[1]


def test_bad_reference_is_one_line_and_writes_nothing(tmp_path, capsys, w4a4):
    prj = tmp_path / "p"
    code, _, err = _hls(capsys, prj, w4a4, "--reference", "fake")
    assert code == 2 and err.count("\n") == 1 and "--reference must be one of design, checkpoint" in err, err
    assert not prj.exists()


def test_csim_matches_the_golden_model_and_passes_against_the_design(tmp_path, capsys, w4a4):
    require_toolchain()
    prj = tmp_path / "p"
    code, out, err = _hls(capsys, prj, w4a4, "--layer", "0", "--vectors", "2", *RANDOM, "--csim")
    assert code == 0, err
    report = json.loads((prj / "csim_report.json").read_text())
    rel, cos = _figures(prj, "tb_data/csim_results.dat")
    assert report["mismatches"] == 0 and report["reference_kind"] == "design"
    assert report["gate"]["passed"] and report["gate"]["cosine"] == pytest.approx(cos, abs=1e-12)
    assert rel < 0.01 and cos > 0.9995
    assert "csim: 0 mismatches" in out


def test_a_mixed_precision_checkpoint_is_labelled_by_the_bits_of_the_part_the_design_holds(tmp_path):
    """The sweep's mixed run (blocks.0 4-bit weights, blocks.1.mlp float) was labelled "W8A8" for every part: the
    label came from the global bits. Now it comes from the quantizers of the layer (or model) implemented."""
    from edgeattn.fpga_hls import generate_project
    from edgeattn.quant import QuantConfig, ptq

    kwargs = {**TINY, "depth": 2, "softmax": "online", "gelu": "edgemoe"}
    torch.manual_seed(11)
    model = create_model("vit_tiny", **kwargs).eval()
    cfg = QuantConfig.from_profile("zcu102-hls").with_bits("w8a8")
    cfg = cfg.model_copy(update={"overrides": {"blocks.0.*": {"weight_bits": 4}, "blocks.1.mlp": {"float": True}}})
    cfg = QuantConfig.parse(cfg.model_dump())
    qmodel = ptq(model, cfg, [torch.randn(16, 3, 16, 16, generator=torch.Generator().manual_seed(1))])
    want = {0: "W4A8", 1: "W8A8 + 2 float layers", None: "W4/8A8 + 2 float layers"}
    for layer, bits in want.items():
        info = generate_project(qmodel, "zcu102-hls", tmp_path / f"p{layer}", layer=layer, vectors=1)
        assert info.reference_bits == bits, layer
        assert info.reference.startswith(f"the {bits} checkpoint's quantized weights"), info.reference
