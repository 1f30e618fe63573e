"""QA sweep of `edgeattn models`, `edgeattn profiles` and `edgeattn approx`: one regression test per defect found.

Numbers are checked against independent float64 numpy references written from the formulas in docs/approx.md;
errors against their exact one-line text and exit code.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from scipy.special import erf

from edgeattn.cli import main
from edgeattn.device_profile import describe_fields, load_profile
from edgeattn.errors import EdgeAttnError, ProfileError

REPO = Path(__file__).resolve().parents[1]
VNNI = REPO / "profiles" / "intel-vnni-openvino.yaml"


def _profile(tmp_path: Path, mutate, name: str = "board.yaml") -> Path:
    """intel-vnni-openvino's mapping, changed by ``mutate(data)``, written to ``tmp_path/name``."""
    data = yaml.safe_load(VNNI.read_text())
    mutate(data)
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    return path


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


# ------------------------------------------------------------------------------------------------ profiles
INT, BOOL, EMPTY = "input should be a valid integer", "input should be a valid boolean", "string should have at least 1"
TWICE = "lists onnx more than once, got ['onnx', 'onnx']"


@pytest.mark.parametrize(
    ("section", "key", "value", "expected"),
    [
        ("quant", "weight_bits", "8", f"field 'quant.weight_bits': {INT}, got '8'"),
        ("quant", "weight_bits", 8.0, f"field 'quant.weight_bits': {INT}, got 8.0"),
        ("quant", "weight_bits", True, f"field 'quant.weight_bits': {INT}, got True"),  # was ">= 2, got True"
        ("quant", "act_signed", 1, f"field 'quant.act_signed': {BOOL}, got 1"),
        ("quant", "act_signed", "yes", f"field 'quant.act_signed': {BOOL}, got 'yes'"),
        ("export", "input_shape", [1, 3, "224", 224], f"field 'export.input_shape.2': {INT}, got '224'"),
        (None, "targets", [], "field 'targets': tuple should have at least 1 item after validation, not 0, got []"),
        (None, "targets", ["onnx", "onnx"], f"field 'targets': {TWICE}"),
        (None, "name", "", f"field 'name': {EMPTY} character, got ''"),
        ("runtime", "device", "", f"field 'runtime.device': {EMPTY} character, got ''"),
    ],
)
def test_wrong_types_and_empty_values_are_refused_not_coerced(tmp_path, capsys, section, key, value, expected):
    path = _profile(tmp_path, lambda d: (d[section] if section else d).update({key: value}))
    assert main(["profiles", "show", str(path)]) == 2
    assert _one_error_line(capsys) == f"error: {path}: {expected}"


def test_a_whole_number_is_still_a_float_and_lists_still_load(tmp_path):
    path = _profile(tmp_path, lambda d: d.update(tolerance={"int8": {"max_abs": 1, "min_cosine": 0.9}}))
    prof = load_profile(path)
    assert prof.tolerance["int8"].max_abs == 1.0 and isinstance(prof.tolerance["int8"].max_abs, float)
    assert prof.targets == ("onnx", "openvino") and prof.export.input_shape == (1, 3, 224, 224)


def test_a_list_used_as_a_mapping_key_is_one_line(tmp_path, capsys):
    path = tmp_path / "key.yaml"
    path.write_text(VNNI.read_text() + "? [a, b]\n: 1\n")
    assert main(["profiles", "show", str(path)]) == 2
    line = len(VNNI.read_text().splitlines()) + 1
    assert _one_error_line(capsys) == (
        f"error: {path}: not valid YAML (line {line}, column 3): a mapping key is a list or a mapping"
    )


def test_a_list_used_as_a_mapping_key_in_a_qat_config_is_one_line(tmp_path, capsys):
    path = tmp_path / "run.yaml"
    path.write_text("epochs: 1\n? [a, b]\n: 1\n")
    assert main(["qat", "-c", str(path), "-o", str(tmp_path / "out")]) == 2
    assert _one_error_line(capsys) == (
        f"error: config file '{path}': not valid YAML (line 2, column 3): a mapping key is a list or a mapping"
    )
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("name", ["", "  "])
def test_an_empty_profile_name_says_so(capsys, name):
    assert main(["profiles", "show", name]) == 2
    assert _one_error_line(capsys) == (
        "error: empty profile name; give a shipped profile name or a path to a YAML file"
    )


def test_a_folder_named_like_a_shipped_profile_does_not_hide_it(tmp_path, monkeypatch, capsys):
    # `edgeattn hls ... -o zcu102-hls` leaves such a folder; it used to break `profiles list` and every --profile
    monkeypatch.chdir(tmp_path)
    (tmp_path / "zcu102-hls").mkdir()
    assert load_profile("zcu102-hls").hls.part == "xczu9eg-ffvb1156-2-e"
    assert main(["profiles", "list"]) == 0
    capsys.readouterr()
    assert main(["profiles", "show", "./zcu102-hls"]) == 2  # the folder itself, asked for as a path
    assert _one_error_line(capsys) == "error: zcu102-hls: is a folder, not a profile file"


def test_a_bare_name_that_is_a_file_here_still_loads_as_a_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _profile(tmp_path, lambda d: d.update(name="my-board"), name="my-board")
    assert load_profile("my-board").name == "my-board"


def test_show_prints_markup_and_unicode_literally(tmp_path, capsys):
    path = _profile(tmp_path, lambda d: d.update(name="zürich[/red]", description="[bold]x"))
    assert main(["profiles", "show", str(path)]) == 0  # was a rich MarkupError traceback
    out = capsys.readouterr().out
    assert out.splitlines()[0] == "zürich[/red]: [bold]x"
    assert "name: zürich[/red]\n" in out  # not "\xFC" escapes


@pytest.mark.parametrize(
    "argv",
    [["profiles", "list"], ["profiles", "show", "host-cpu"], ["models", "info", "mobilenetv2"], ["models", "list"]],
)
def test_json_into_a_folder_fails_first_naming_the_flag(tmp_path, capsys, argv):
    assert main([*argv, "--json", str(tmp_path)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""  # nothing measured or printed before the error
    assert captured.err.strip() == f"error: --json '{tmp_path}' is a directory"


def test_fields_name_the_allowed_values_ranges_and_defaults():
    rows = {name: kind for name, kind, _ in describe_fields()}
    assert rows["precision"] == "fp32 | fp16 | int8 | fixed, required"
    assert rows["quant.weight_bits"] == "int 2..16, default 8"
    assert rows["quant.kv_max_bits"] == "int 2..16 or null, optional"
    assert rows["quant.weight_per_channel"] == "bool, default true"
    assert rows["export.input_shape"] == "list of int, default [1, 3, 224, 224]"
    assert rows["tensorrt"] == "section or null, optional"
    assert rows["hls.clock_mhz"] == "float > 0, required"
    # the map's entries are named by their key: a profile writes tolerance.int8.max_abs, not tolerance.max_abs
    assert rows["tolerance.<fp32|fp16|int8>.max_abs"] == "float > 0, required"
    assert "tolerance.max_abs" not in rows


# -------------------------------------------------------------------------------------------------- models
@pytest.mark.parametrize(
    ("name", "kwargs", "expected"),
    [
        ("vit_tiny", {"softmax": "bogus"}, "model 'vit_tiny': argument 'softmax': unknown softmax method 'bogus'; "
         "allowed: exact, online, ibert, shift, base2"),
        ("fmvit_t", {"gelu": None}, "model 'fmvit_t': argument 'gelu': unknown gelu method None; "
         "allowed: exact, tanh, edgemoe, edgemoe_mm, ibert, sigmoid, respoly"),
        ("tiny_llama", {"gelu": "bogus"}, "model 'tiny_llama' takes no argument 'gelu'"),
    ],
)
def test_create_model_names_the_approximation_argument(name, kwargs, expected):
    from edgeattn.models import create_model

    with pytest.raises(EdgeAttnError) as err:
        create_model(name, **kwargs)
    assert str(err.value).startswith(expected)


@pytest.mark.parametrize("name", ["vit_tiny", "edge_moe_vit"])
def test_an_mlp_ratio_that_leaves_no_hidden_unit_is_refused(name):
    from edgeattn.models import create_model

    # int(192 * 0.001) = 0 used to build zero-width Linear layers (a model that computes nothing in its MLPs)
    with pytest.raises(ValueError, match=r"mlp_ratio=0.001 leaves the MLP no hidden unit \(int\(embed_dim"):
        create_model(name, mlp_ratio=0.001)
    assert create_model(name, mlp_ratio=1 / 192).blocks[0].mlp.fc1.out_features == 1  # the smallest that works


# -------------------------------------------------------------------------------------------------- approx
@pytest.mark.parametrize(
    ("row", "dtype", "expected"),
    [
        ([3e38, -3e38], torch.float32, [1.0, 0.0]),  # x*log2(e) overflows float32: was a NaN row
        ([3e38, 2e38, 0.0], torch.float32, [1.0, 0.0, 0.0]),
        ([-3e38, -3e38], torch.float32, [0.5, 0.5]),
        ([60000.0, 1000.0], torch.float16, [1.0, 0.0]),  # float16: from 45400 up
    ],
)
def test_base2_softmax_of_huge_finite_scores_is_finite(row, dtype, expected):
    from edgeattn.approx import softmax

    assert softmax(torch.tensor([row], dtype=dtype), method="base2").float().tolist() == [expected]


def test_base2_softmax_still_computes_its_formula():
    from edgeattn.approx import softmax

    x = np.array([[0.3, -1.7, 2.25, 0.0, -40.0]])
    t = x * math.log2(math.e)  # docs/approx.md: t = x log2e, m = ceil(max t), 2^frac by 8-segment lerp
    u = t - np.ceil(t.max())
    k = np.floor(u)
    s = (u - k) * 8
    j = np.floor(s)
    e = 2.0 ** (j / 8) * (1 + (2 ** (1 / 8) - 1) * (s - j)) * 2.0**k
    got = softmax(torch.tensor(x, dtype=torch.float64), method="base2").numpy()
    np.testing.assert_allclose(got, e / e.sum(), rtol=1e-12, atol=0)


def test_quantize_saturates_huge_finite_values():
    from edgeattn.approx.fixed import FixedFormat

    fmt = FixedFormat(16, 8)
    assert fmt.quantize([1e308, -1e308, 3.0]).tolist() == [32767, -32768, 768]  # was "input has NaN or inf"
    with pytest.raises(ValueError, match=r"value out of range \[-128.0, 127.99609375\]"):
        fmt.quantize(1e308, saturate=False)
    with pytest.raises(ValueError, match="input has NaN or inf"):
        fmt.quantize(float("inf"))


def test_negative_seed_is_refused_naming_it(capsys):
    from edgeattn.approx.report import build_report

    with pytest.raises(ValueError, match=r"^argument 'seed' must be a non-negative integer, got -1$"):
        build_report(seed=-1)
    assert main(["approx", "report", "--seed", "-1"]) == 2  # typer's usage error, before anything is measured


def _softmax_rows(seed: int, lengths, scales) -> list[np.ndarray]:
    """The report's softmax distribution (docs/approx.md), quantized to sfix<16,8> by hand (half-even, saturating)."""
    rng = np.random.default_rng(seed)
    out = []
    for n in lengths:
        for sc in scales:
            s = sc * rng.standard_normal((64, n))
            s[np.arange(32), rng.integers(0, n, 32)] += 3 * sc
            out.append(np.clip(np.round(s * 256), -32768, 32767) / 256)
    return out


def _softmax64(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _shift64(x: np.ndarray) -> np.ndarray:
    """I-ViT Shiftmax in float64: t = 1.4375 (x - max), 2^t ~ (1 + r/2) 2^-q."""
    t = np.maximum(x - x.max(-1, keepdims=True), -128) * 1.4375
    q = np.floor(-t)
    e = (1 + (t + q) / 2) * 2.0**-q
    return e / e.sum(-1, keepdims=True)


def test_report_softmax_figures_match_an_independent_float64_computation(monkeypatch):
    from edgeattn.approx import report

    lengths, scales = (16, 197), (1.0, 8.0)
    monkeypatch.setattr(report, "SOFTMAX_LENGTHS", lengths)
    monkeypatch.setattr(report, "SOFTMAX_SCALES", scales)
    recs = {(r["method"], r["repr"]): r for r in report.softmax_records(report.ReportBits(), seed=3)}
    rows = _softmax_rows(3, lengths, scales)
    refs = [_softmax64(x) for x in rows]
    # float shift (float32 in the report; its error is ~1e-2, so float32 rounding does not show at rtol 1e-4)
    errs = [np.abs(_shift64(x) - r) for x, r in zip(rows, refs, strict=True)]
    shift = recs[("shift", "float")]
    assert shift["max_abs_err"] == pytest.approx(max(e.max() for e in errs), rel=1e-4)
    assert shift["mean_abs_err"] == pytest.approx(sum(e.sum() for e in errs) / sum(e.size for e in errs), rel=1e-4)
    # fixed "exact" is the ideal 8-bit quantizer: round(p * 256), 1.0 saturating to 255/256
    ys = [np.minimum(np.round(r * 256), 255) / 256 for r in refs]
    ideal = recs[("exact", "fixed")]
    assert ideal["max_abs_err"] == pytest.approx(max(np.abs(y - r).max() for y, r in zip(ys, refs, strict=True)))
    assert ideal["worst_row_sum_dev"] == pytest.approx(max(np.abs(y.sum(-1) - 1).max() for y in ys))
    kls = []
    for y, r in zip(ys, refs, strict=True):
        q = np.where(y <= 0, np.minimum(r, 2.0**-9), y)  # a 0 output stands for "below half an LSB"
        q = q / q.sum(-1, keepdims=True)
        kls.append(np.mean(np.sum(r * np.log(r / q), -1)))
    assert ideal["kl_div"] == pytest.approx(np.mean(kls), rel=1e-9)


def test_report_gelu_figures_match_an_independent_float64_computation():
    from edgeattn.approx import report

    recs, _ = report.gelu_records(report.ReportBits(), seed=0)
    recs = {(r["method"], r["repr"]): r for r in recs}
    x = np.arange(-8 * 2048, 8 * 2048 + 1) / 2048.0  # every sfix<16,11> input in [-8, 8]
    ref = 0.5 * x * (1 + erf(x / math.sqrt(2)))
    t = np.minimum(np.abs(x / math.sqrt(2)), 1.769)
    ibert = 0.5 * x * (1 + np.sign(x) * (-0.2888 * (t - 1.769) ** 2 + 1))
    tc = np.minimum(np.abs(x), 3.12988)
    respoly = np.maximum(x, 0) - tc * (3.12988 - tc) ** 2 * (0.0511279 - 0.0163458 * tc)
    for method, approx in (("ibert", ibert), ("respoly", respoly)):
        err = np.abs(approx - ref)
        assert recs[(method, "float")]["max_abs_err"] == pytest.approx(err.max(), rel=1e-3)
        assert recs[(method, "float")]["mean_abs_err"] == pytest.approx(err.mean(), rel=1e-3)
    ideal = np.abs(np.round(ref * 2.0**16) / 2.0**16 - ref)  # fixed "exact": ideal 16-fraction-bit rounding
    assert recs[("exact", "fixed")]["max_abs_err"] == pytest.approx(ideal.max(), rel=1e-9)
    assert recs[("exact", "fixed")]["mean_abs_err"] == pytest.approx(ideal.mean(), rel=1e-9)


def test_profile_error_is_a_profile_error_for_api_callers(tmp_path):
    path = _profile(tmp_path, lambda d: d["quant"].update(weight_bits="8"))
    with pytest.raises(ProfileError, match="field 'quant.weight_bits'"):
        load_profile(path)
