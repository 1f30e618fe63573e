"""`edgeattn hls`: the accuracy gate against the reference model, and test vectors from real images.

- the gate's figures (max abs error over the output range, smallest per-vector cosine), recomputed here in
  float64 from the written tb files, and the verdict at bounds just either side of them (exit 0 / exit 1 with
  one line naming the figure and the option), ``--json`` and ``project.json`` holding the figures and the
  verdict; a 2-bit weight profile fails the default gate, the shipped profile passes it;
- ``--vectors-from data`` (and the default with a checkpoint): the test inputs are digits validation images (or
  the checkpoint's split of them), rebuilt here from scikit-learn's digits with the documented split rule;
- the overflow check on real images, bad bounds, and the gate on the C simulation's own outputs.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from _hls_toolchain import gate_figures as _figures
from _hls_toolchain import require_toolchain
from edgeattn.fpga_hls.gate import gate_result

from edgeattn.cli import main
from edgeattn.models import create_model

KWARGS = {"embed_dim": 32, "img_size": 16, "num_heads": 2, "depth": 2}
SMALL = [a for k, v in KWARGS.items() for a in ("--set", f"{k}={v}")]
ACT_F = 22  # ap_fixed<32,10> activations of zcu102-hls
PROFILE = Path(__file__).resolve().parents[1] / "profiles/zcu102-hls.yaml"


def _run(capsys, prj: Path, *extra: str) -> tuple[int, str, str]:
    code = main(["hls", "edge_moe_vit", "-o", str(prj), *SMALL, "--vectors", "2", *extra])
    out, err = capsys.readouterr()
    return code, out, err


def _profile(tmp_path: Path, name: str, old: str, new: str) -> Path:
    text = PROFILE.read_text().replace("name: zcu102-hls", f"name: {name}")
    assert old in text
    path = tmp_path / f"{name}.yaml"
    path.write_text(text.replace(old, new))
    return path


def test_gate_result_on_a_hand_computed_case():
    fixed = np.array([[1.0, 0.0], [0.0, 1.0]])
    ref = np.array([[1.0, 0.0], [1.0, 1.0]])
    # vector 0 equal (cosine 1); vector 1: (0,1).(1,1) / (1 * sqrt 2); max abs 1 over range 1 - 0
    g = gate_result(fixed, ref, {"max_abs": 1.0, "min_cosine": 0.7})
    assert g["cosine"] == pytest.approx(1 / math.sqrt(2), abs=1e-15) and g["max_abs_rel_range"] == 1.0
    assert g["passed"] and g["failures"] == []
    g = gate_result(fixed, ref, {"max_abs": 0.5, "min_cosine": 0.71})
    assert not g["passed"]
    assert g["failures"] == [
        "max abs error 1 of the output range > 0.5 (--atol)",
        "cosine 0.707107 < 0.71 (--min-cosine)",
    ]


def test_gate_bounds_either_side_of_the_figures(tmp_path, capsys):
    prj, summary = tmp_path / "prj", tmp_path / "s.json"
    code, out, _ = _run(capsys, prj)
    assert code == 0 and "accuracy gate vs the float model" in out and ": passed" in out
    rel, cos = _figures(prj)
    meta = json.loads((prj / "project.json").read_text())
    assert meta["gate"]["max_abs_rel_range"] == pytest.approx(rel, rel=1e-9)
    assert meta["gate"]["cosine"] == pytest.approx(cos, abs=1e-12)
    assert meta["gate"]["tolerance"] == {"max_abs": 0.1, "min_cosine": 0.99} and meta["gate"]["passed"]
    assert rel < 0.05 and cos > 0.995  # the shipped profile passes the defaults with a margin

    # bounds just beyond the figures: exit 1, one line naming the figure and its option, the project written
    for option, bound, phrase in (
        ("--min-cosine", cos + 1e-7, f"cosine {cos:.6f} < {cos + 1e-7:.10g} (--min-cosine)"),
        ("--atol", rel * 0.999, "of the output range > "),
    ):
        code, _, err = _run(capsys, prj, "--force", "--json", str(summary), option, repr(bound))
        assert code == 1 and err.count("\n") == 1 and phrase in err, err
        assert err.startswith("error: accuracy gate failed: the fixed-point golden model vs the float model")
        assert (prj / "project.json").is_file() and f"written to {prj}" in err
        data = json.loads(summary.read_text())
        assert data["gate"]["passed"] is False and len(data["gate"]["failures"]) == 1
        key = "min_cosine" if option == "--min-cosine" else "max_abs"
        assert data["gate"]["tolerance"][key] == bound
        assert json.loads((prj / "project.json").read_text())["gate"]["passed"] is False
    # and just inside them: exit 0
    code, _, _ = _run(capsys, prj, "--force", "--min-cosine", repr(cos - 1e-7), "--atol", repr(rel * 1.001))
    assert code == 0


def test_a_2bit_weight_profile_fails_the_default_gate(tmp_path, capsys):
    prof = _profile(tmp_path, "w2", "weight: {width: 16, integer: 2}", "weight: {width: 2, integer: 2}")
    prj, summary = tmp_path / "prj", tmp_path / "s.json"
    code, out, err = _run(capsys, prj, "-p", str(prof), "--layer", "1", "--json", str(summary))
    rel, cos = _figures(prj)
    assert rel > 0.1 and cos < 0.99  # every weight rounds to 0 or +-1
    assert code == 1 and err.count("\n") == 1 and ": FAILED" in out
    assert f"cosine {cos:.6f} < 0.99 (--min-cosine)" in err and f"max abs error {rel:.3g} of the output range" in err
    data = json.loads(summary.read_text())
    assert data["gate"]["cosine"] == pytest.approx(cos, abs=1e-12) and data["gate"]["passed"] is False


def _digits_val(img: int, chans: int, seed: int) -> np.ndarray:
    """The digits validation images as docs/data describe them: a stratified split (20 % of every class, each
    class's indices shuffled by numpy's default_rng(seed)), bilinear upsampling, channels repeated, [-1, 1]."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    rng = np.random.default_rng(seed)
    val = []
    for c in np.unique(digits.target):
        idx = np.flatnonzero(digits.target == c)
        rng.shuffle(idx)
        val.extend(idx[: max(1, int(round(len(idx) * 0.2)))])
    x = torch.from_numpy(digits.images[np.sort(val)] / 16.0).unsqueeze(1)
    x = F.interpolate(x.float(), size=(img, img), mode="bilinear", align_corners=False).double()
    return ((x.clamp(0, 1) - 0.5) / 0.5).expand(-1, chans, -1, -1).numpy()


def _inputs(prj: Path) -> np.ndarray:
    return np.loadtxt(prj / "tb_data/tb_input.dat", skiprows=1, ndmin=2)


def test_vectors_from_data_are_digits_validation_images(tmp_path, capsys):
    prj = tmp_path / "prj"
    code, out, _ = _run(capsys, prj, "--layer", "all", "--vectors", "3", "--vectors-from", "data")
    assert code == 0
    expect = np.round(_digits_val(16, 3, 0)[:3].reshape(3, -1) * 2**ACT_F)
    assert np.array_equal(_inputs(prj), expect)
    src = json.loads((prj / "project.json").read_text())["vectors_source"]
    assert src["source"] == "data" and src["data"] == "digits" and src["split"] == "val" and src["split_seed"] == 0
    assert "test vectors: the first 3 digits validation images" in " ".join(out.split())
    # without a checkpoint the default stays random
    code, out, _ = _run(capsys, prj, "--layer", "all", "--force")
    rand = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0)).double().numpy()
    assert code == 0 and np.array_equal(_inputs(prj), np.round(rand.reshape(2, -1) * 2**ACT_F))
    assert json.loads((prj / "project.json").read_text())["vectors_source"]["source"] == "random"


def test_a_checkpoint_defaults_to_its_own_validation_images(tmp_path, capsys):
    from edgeattn.quant.checkpoint import save_checkpoint

    torch.manual_seed(3)
    model = create_model("edge_moe_vit", **KWARGS).eval()
    ckpt = tmp_path / "m.pt"
    meta = {"model": "edge_moe_vit", "model_kwargs": KWARGS, "data": "digits", "split": {"seed": 5, "in_chans": 3}}
    save_checkpoint(ckpt, model, meta)
    prj = tmp_path / "prj"
    code = main(["hls", "edge_moe_vit", "-o", str(prj), "--checkpoint", str(ckpt), "--layer", "all", "--vectors", "2"])
    out = capsys.readouterr().out
    assert code == 0
    expect = np.round(_digits_val(16, 3, 5)[:2].reshape(2, -1) * 2**ACT_F)
    assert np.array_equal(_inputs(prj), expect)
    src = json.loads((prj / "project.json").read_text())["vectors_source"]
    assert src["data"] == "digits" and src["split_seed"] == 5 and src["fallback"] is None
    assert "validation images of the checkpoint's data (digits)" in " ".join(out.split())


def test_overflow_is_still_caught_on_real_images(tmp_path, capsys):
    prof = _profile(tmp_path, "a2", "act: {width: 32, integer: 10}", "act: {width: 24, integer: 2}")
    prj = tmp_path / "prj"
    code, _, err = _run(capsys, prj, "-p", str(prof), "--vectors-from", "data")
    assert code == 2 and err.count("\n") == 1
    assert "activation overflow on the test vectors (the first 2 digits validation images" in err
    assert not prj.exists()


@pytest.mark.parametrize(
    ("args", "phrase"),
    [
        (["--atol", "0"], "--atol must be a number > 0"),
        (["--min-cosine", "1.5"], "--min-cosine must be in [-1, 1]"),
        (["--vectors-from", "imagenet"], "--vectors-from must be one of data, random"),
        (["--vectors-from", "data", "--vectors", "999"], "validation split holds only 359 images"),
        # a 4x4 model: digits (8x8) are upsampled, never shrunk; once an internal digits_dataset error
        (
            ["--set", "img_size=4", "--vectors-from", "data"],
            "--vectors-from data: digits images are 8x8, larger than the model's 4x4 input (use --vectors-from random)",
        ),
    ],
)
def test_bad_gate_and_vector_options_are_one_line(tmp_path, capsys, args, phrase):
    prj = tmp_path / "prj"
    code, _, err = _run(capsys, prj, *args)
    assert code == 2 and err.count("\n") == 1 and phrase in err, err
    assert not prj.exists()


def test_csim_gate_is_computed_on_the_simulated_outputs(tmp_path, capsys):
    require_toolchain()
    prj, summary = tmp_path / "prj", tmp_path / "s.json"
    code, out, err = _run(capsys, prj, "--layer", "1", "--csim", "--min-cosine", "0.9999999", "--json", str(summary))
    rel, cos = _figures(prj, "tb_data/csim_results.dat")
    report = json.loads((prj / "csim_report.json").read_text())
    assert report["mismatches"] == 0 and report["gate"]["cosine"] == pytest.approx(cos, abs=1e-12)
    assert report["gate"]["max_abs_rel_range"] == pytest.approx(rel, rel=1e-9)
    assert report["vectors_source"]["source"] == "random"
    assert code == 1 and "error: accuracy gate failed: the C simulation vs the float model: cosine" in err
    assert json.loads(summary.read_text())["csim"]["gate"]["passed"] is False


def test_a_profile_tolerance_sets_the_gate_and_flags_override_it(tmp_path, capsys):
    """The profile's hls.tolerance is the gate (a bound it leaves out keeps the default); --min-cosine overrides."""
    shipped = "tolerance: {max_abs: 0.1, min_cosine: 0.99}"
    prof = _profile(tmp_path, "tight", shipped, "tolerance: {min_cosine: 0.9999999}")
    prj, summary = tmp_path / "prj", tmp_path / "s.json"
    code, out, err = _run(capsys, prj, "-p", str(prof), "--json", str(summary))
    rel, cos = _figures(prj)
    assert cos < 0.9999999 and rel <= 0.1  # 32-bit activations, 16-bit weights: close, but not that close
    assert code == 1 and f"cosine {cos:.6f} < 0.9999999 (--min-cosine)" in err
    gate = json.loads(summary.read_text())["gate"]
    assert gate["tolerance"] == {"max_abs": 0.1, "min_cosine": 0.9999999} and gate["passed"] is False
    code, out, err = _run(capsys, tmp_path / "prj2", "-p", str(prof), "--min-cosine", "0.5")
    assert code == 0, err
    bad = _profile(tmp_path, "bad", shipped, "tolerance: {max_abs: 0}")
    code, out, err = _run(capsys, tmp_path / "prj3", "-p", str(bad))
    assert code == 2 and "max_abs" in err and err.count("\n") == 1 and not (tmp_path / "prj3").exists()


def test_the_gate_line_prints_a_fine_bound_whole_and_the_cosine_finer():
    """--min-cosine 0.9999999 printed as "(bound 1)" and a failing 0.99999985 as "1.000000": a line that
    contradicted its own verdict."""
    from edgeattn.cli.hls import _gate_line

    gate = {"tolerance": {"max_abs": 0.1, "min_cosine": 0.9999999}, "passed": False}
    line = _gate_line({**gate, "max_abs_rel_range": 0.01, "cosine": 0.99999985}, "the model")
    assert "smallest cosine 0.99999985 (bound 0.9999999): FAILED" in line
    # a bound of exactly 1: the console line and the error line both show the shortfall (0.99999965 once read
    # "cosine 1.000000 < 1")
    one = {"tolerance": {"max_abs": 0.1, "min_cosine": 1.0}, "passed": False}
    line = _gate_line({**one, "max_abs_rel_range": 0.01, "cosine": 0.99999965}, "the model")
    assert "smallest cosine 0.9999997 (bound 1): FAILED" in line
    fixed, ref = np.array([[1.0, 0.0], [1.0, 1.0]]), np.array([[1.0, 0.0], [1.0, 1.0008]])
    g = gate_result(fixed, ref, {"max_abs": 0.0008, "min_cosine": 1.0})
    # by hand: vector 1's cosine (1 + 1.0008) / (sqrt 2 * sqrt(1 + 1.0008^2)) = 0.99999992; max abs 0.0008 over
    # the range 1.0008 = 0.00079936051 (3 digits would read 0.000799, below its bound: 7 are shown)
    cos = 2.0008 / (math.sqrt(2) * math.sqrt(1 + 1.0008**2))
    assert g["cosine"] == pytest.approx(cos, abs=1e-15) and 0.9999999 < cos < 1
    assert g["failures"] == [f"cosine {cos:.7g} < 1 (--min-cosine)"]
    g = gate_result(fixed, ref, {"max_abs": 0.0007993, "min_cosine": 0.0})
    assert g["failures"] == ["max abs error 0.0007993605 of the output range > 0.0007993 (--atol)"]
    default = {"tolerance": {"max_abs": 0.1, "min_cosine": 0.99}, "passed": True}
    line = _gate_line({**default, "max_abs_rel_range": 0.01, "cosine": 0.999971}, "x")
    assert "smallest cosine 0.999971 (bound 0.99)" in line
