"""Device profiles: every shipped profile validates, lookup by name and path, bad input is one clear line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from edgeattn import hostinfo
from edgeattn.cli import main
from edgeattn.device_profile import (
    DeviceProfile,
    describe_fields,
    load_profile,
    profile_from_mapping,
    shipped_profile_names,
)
from edgeattn.errors import ProfileError

REQUIRED = {
    "jetson-orin-trt10",
    "rtx-trt11",
    "intel-avx2-openvino",
    "intel-vnni-openvino",
    "apple-a17-coreml",
    "zcu102-hls",
    "host-cpu",
}
REPO = Path(__file__).resolve().parents[1]


def test_all_required_profiles_ship_and_validate():
    names = set(shipped_profile_names())
    assert names >= REQUIRED
    for name in names:
        profile = load_profile(name)
        assert profile.name == name
        assert profile.targets


def test_profiles_encode_the_published_deployment_facts():
    assert load_profile("intel-avx2-openvino").quant.weight_bits == 7
    assert load_profile("intel-vnni-openvino").quant.weight_bits == 8
    trt10, trt11 = load_profile("jetson-orin-trt10"), load_profile("rtx-trt11")
    assert (trt10.tensorrt.major, trt11.tensorrt.major) == (10, 11)
    for p in (trt10, trt11):
        assert p.quant.softmax_signed and p.quant.act_signed and p.quant.bias == "float"
        assert p.export.opset >= 17
    apple = load_profile("apple-a17-coreml")
    assert (apple.coreml.deployment_target, apple.coreml.compute_precision) == ("iOS17", "fp16")
    hls = load_profile("zcu102-hls").hls
    assert (hls.part, hls.clock_mhz) == ("xczu9eg-ffvb1156-2-e", 300)
    assert (hls.act.width, hls.act.integer, hls.weight.width, hls.weight.integer) == (32, 10, 16, 2)


def test_load_by_path_roundtrips(tmp_path):
    data = load_profile("rtx-trt11").model_dump(mode="json")
    data["name"] = "my-board"
    path = tmp_path / "my-board.yaml"
    path.write_text(yaml.safe_dump(data))
    assert load_profile(path) == DeviceProfile.model_validate(data)


def _bad_profile(tmp_path, mutate) -> Path:
    data = load_profile("jetson-orin-trt10").model_dump(mode="json")
    text = mutate(data)
    path = tmp_path / "bad.yaml"
    path.write_text(text if isinstance(text, str) else yaml.safe_dump(data))
    return path


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda d: "name: [unclosed\n", "not valid YAML (line"),
        (lambda d: "name: a\nname: b\n", "not valid YAML (line 2, column 1): key 'name' is given twice"),
        (lambda d: d.update(colour="blue"), "unknown field 'colour'"),
        (lambda d: d["quant"].update(weight_bits="eight"), "field 'quant.weight_bits'"),
        (lambda d: d["quant"].update(weight_bits=40), "field 'quant.weight_bits'"),
        (lambda d: d.pop("runtime"), "field 'runtime' is required"),
        (lambda d: d.pop("tensorrt"), "'tensorrt' section is missing"),
        (lambda d: d["runtime"].update(name="tflite"), "field 'runtime.name'"),
        (lambda d: d["export"].update(input_shape=[]), "field 'export.input_shape': needs 2 dims"),
        (lambda d: d["export"].update(input_shape=[8]), "field 'export.input_shape': needs 2 dims"),
        # once read as a batch of 3 at 224 px by the export
        (lambda d: d["export"].update(input_shape=[3, 32, 32]), "needs 2 dims (batch, tokens) or 4 (N, C, H, W)"),
        (lambda d: d["export"].update(input_shape=[1, 3, 8, 8, 8]), "needs 2 dims (batch, tokens) or 4 (N, C, H, W)"),
        (lambda d: d["export"].update(input_shape=[1, 3, 0, 224]), "every dim must be >= 1, got [1, 3, 0, 224]"),
        (lambda d: d["export"].update(input_shape=[1, -3, 224, 224]), "every dim must be >= 1"),
        (lambda d: d["tolerance"]["int8"].update(max_abs=-1), "field 'tolerance.int8.max_abs'"),
        (lambda d: d["tolerance"]["int8"].update(max_abs=float("nan")), "field 'tolerance.int8.max_abs'"),
        (lambda d: d["tolerance"]["fp16"].update(min_cosine=1.5), "field 'tolerance.fp16.min_cosine'"),
        (lambda d: d["tolerance"]["fp32"].update(min_top1_agreement=2), "field 'tolerance.fp32.min_top1_agreement'"),
    ],
)
def test_bad_profile_is_one_line_exit_2(tmp_path, capsys, mutate, expected):
    path = _bad_profile(tmp_path, mutate)
    with pytest.raises(ProfileError) as err:
        load_profile(path)
    assert str(path) in str(err.value) and expected in str(err.value)
    assert main(["profiles", "show", str(path)]) == 2
    stderr = capsys.readouterr().err.strip()
    assert "Traceback" not in stderr
    assert expected in " ".join(stderr.split())


@pytest.mark.parametrize(
    ("softmax", "gelu"), [("online", "tanh"), ("exact", "edgemoe"), ("ibert", "edgemoe_mm"), ("exact", "exact")]
)
def test_an_hls_profile_must_deploy_what_the_cpp_computes(tmp_path, softmax, gelu):
    # the C++ datapath is fixed: online softmax and the Edge-MoE GELU table; another approx would be ignored
    data = load_profile("zcu102-hls").model_dump(mode="json")
    assert data["approx"] == {"softmax": "online", "gelu": "edgemoe"}
    if (softmax, gelu) == ("exact", "exact"):
        del data["approx"]  # left out: the default (exact) is not what the C++ computes either
    else:
        data["approx"] = {"softmax": softmax, "gelu": gelu}
    path = tmp_path / "hls.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ProfileError) as err:
        load_profile(path)
    # one line; the message keeps its own case ("C++", "GELU") and names what the profile says
    assert str(err.value) == (
        f"{path}: targets lists 'hls', whose C++ datapath computes softmax "
        f"'online' and GELU 'edgemoe'; approx says softmax '{softmax}', gelu '{gelu}' "
        "(set approx: {softmax: online, gelu: edgemoe})"
    )


@pytest.mark.parametrize(("rows", "width", "ok"), [(64, 16, True), (65, 16, False), (128, 8, True), (129, 8, False)])
def test_an_hls_profile_keeps_the_weight_word_within_1024_bits(tmp_path, capsys, rows, width, ok):
    """One DDR word carries a weight per MAC row (ap_uint<mac_rows * width>); 1040 bits did not compile."""
    data = load_profile("zcu102-hls").model_dump(mode="json")
    data["hls"].update(mac_rows=rows, weight={"width": width, "integer": 2})
    path = tmp_path / "wide.yaml"
    path.write_text(yaml.safe_dump(data))
    if ok:
        assert load_profile(path).hls.mac_rows == rows
        return
    with pytest.raises(ProfileError) as err:
        load_profile(path)
    assert str(err.value) == (
        f"{path}: field 'hls': mac_rows x weight.width is {rows} x {width} = {rows * width} bits, over "
        f"the 1024-bit weight word (one m_axi beat); at most {1024 // width} rows at {width}-bit weights"
    )
    assert main(["hls", "vit_tiny", "-o", str(tmp_path / "prj"), "-p", str(path)]) == 2
    assert "Traceback" not in capsys.readouterr().err and not (tmp_path / "prj").exists()


def test_export_refuses_a_profile_with_an_empty_input_shape_before_exporting(tmp_path, capsys):
    path = _bad_profile(tmp_path, lambda d: d["export"].update(input_shape=[]))
    rc = main(["export", "fmvit_t", "-t", "onnx", "-p", str(path), "-o", str(tmp_path / "out")])
    assert rc == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "Traceback" not in err and "field 'export.input_shape'" in err
    assert not (tmp_path / "out").exists()


def test_input_shape_takes_token_shapes_of_language_models():
    data = load_profile("host-cpu").model_dump(mode="json")
    data["export"]["input_shape"] = [1, 128]  # tiny_llama: (batch, tokens)
    assert DeviceProfile.model_validate(data).export.input_shape == (1, 128)
    for name in shipped_profile_names():
        assert all(d >= 1 for d in load_profile(name).export.input_shape)


def test_fixed_precision_is_for_hls_only_profiles():
    hls = load_profile("zcu102-hls")
    assert hls.precision == "fixed" and hls.targets == ("hls",)  # the generated C++ is ap_fixed, not int8
    data = load_profile("host-cpu").model_dump(mode="json")
    data["precision"] = "fixed"
    with pytest.raises(ProfileError, match="precision 'fixed' is for hls-only profiles"):
        profile_from_mapping(data, "x.yaml")


def test_a_folder_or_a_binary_file_is_not_a_profile(tmp_path, capsys):
    (tmp_path / "dir.yaml").mkdir()
    (tmp_path / "bin.yaml").write_bytes(b"\x89PNG\r\n\xff\x00")
    for name, expected in (("dir.yaml", "is a folder, not a profile file"), ("bin.yaml", "not UTF-8 text")):
        assert main(["profiles", "show", str(tmp_path / name)]) == 2
        err = capsys.readouterr().err.strip()
        assert f"{tmp_path / name}: {expected}" in err and len(err.splitlines()) == 1, err


def test_missing_file_and_unknown_name(capsys):
    assert main(["profiles", "show", "no/such/profile.yaml"]) == 2
    assert "profile file not found" in capsys.readouterr().err
    assert main(["profiles", "show", "tpu-v9"]) == 2
    err = capsys.readouterr().err
    assert "unknown profile 'tpu-v9'" in err and "jetson-orin-trt10" in err


def test_require_target_names_the_mismatch():
    with pytest.raises(ProfileError, match="not 'coreml'"):
        load_profile("jetson-orin-trt10").require_target("coreml")


def test_every_field_is_documented():
    rows = describe_fields()
    names = {r[0] for r in rows}
    assert {"quant.weight_bits", "hls.act.width", "tensorrt.strongly_typed", "export.opset"} <= names
    assert all(desc for _, _, desc in rows), [r for r in rows if not r[2]]


def _fake_host(monkeypatch, flags: set[str], machine: str = "x86_64") -> None:
    monkeypatch.setattr(hostinfo, "_cpu_flags_and_model", lambda: (flags, "Test CPU"))
    monkeypatch.setattr(hostinfo.platform, "machine", lambda: machine)
    monkeypatch.setattr(hostinfo.platform, "system", lambda: "Linux")
    hostinfo.detect_host.cache_clear()


@pytest.mark.parametrize(
    ("flags", "profile", "bits", "kv_cap"),
    [
        ({"avx2", "fma"}, "intel-avx2-openvino", 7, 7),
        ({"avx2", "fma", "avx512f", "avx512_vnni"}, "intel-vnni-openvino", 8, None),
        ({"avx2", "fma", "avx_vnni"}, "intel-vnni-openvino", 8, None),
    ],
)
def test_host_detection_maps_isa_to_profile(monkeypatch, flags, profile, bits, kv_cap):
    from edgeattn.quant import QuantConfig

    _fake_host(monkeypatch, flags)
    try:
        host = hostinfo.detect_host()
        assert (host.matching_profile, host.recommended_weight_bits) == (profile, bits)
        assert host.recommended_kv_max_bits == kv_cap
        # host-cpu follows the detected ISA: 7-bit weights, K and V where int8 pairs saturate
        quant = load_profile("host-cpu").quant
        assert (quant.weight_bits, quant.kv_max_bits) == (bits, kv_cap)
        cfg = QuantConfig.from_profile("host-cpu")
        assert cfg.act_bits_for("blocks.0.attn.k_quant") == cfg.act_bits_for("blocks.0.attn.v_quant") == (kv_cap or 8)
        assert cfg.act_bits_for("blocks.0.attn.q_quant") == cfg.act_bits_for("blocks.0.attn.attn_quant") == 8
    finally:
        hostinfo.detect_host.cache_clear()


@pytest.mark.parametrize(
    ("flags", "asked", "got"),
    [
        ({"avx2", "fma"}, (4, 4, None), (4, 4, 7)),  # lower bits are kept; the K/V cap still comes from the CPU
        ({"avx2", "fma"}, (8, 8, 5), (7, 8, 5)),  # an 8-bit weight still drops to the CPU's 7; a lower K/V cap stays
        ({"avx2", "fma", "avx512f", "avx512_vnni"}, (4, 4, None), (4, 4, None)),
    ],
)
def test_a_host_cpu_copy_keeps_bits_below_the_cpus_cap(monkeypatch, tmp_path, flags, asked, got):
    """A profile named host-cpu caps its bits at what the CPU can run; it used to set them, so a copy of
    host-cpu.yaml asking for 4-bit weights silently got 7 (or 8)."""
    weight_bits, act_bits, kv = asked
    data = yaml.safe_load((REPO / "profiles" / "host-cpu.yaml").read_text())
    data["quant"].update(weight_bits=weight_bits, act_bits=act_bits, kv_max_bits=kv)
    path = tmp_path / "my-host.yaml"
    path.write_text(yaml.safe_dump(data))
    _fake_host(monkeypatch, flags)
    try:
        quant = load_profile(path).quant
        assert (quant.weight_bits, quant.act_bits, quant.kv_max_bits) == got
    finally:
        hostinfo.detect_host.cache_clear()


def test_peak_of_a_detected_host_is_the_profilers_one_formula(monkeypatch):
    # One peak formula only (edgeattn.profile.system.peak_gmacs); HostInfo used to carry a second one that
    # counted 4 int8 MACs per lane without VNNI, where AVX2 needs two instructions for four (2 per lane).
    from edgeattn.profile import system

    assert not hasattr(hostinfo.HostInfo, "peak_gmacs")
    monkeypatch.setattr(system, "peak_clock_ghz", lambda: (3.0, "test"))
    for flags, int8_per_lane in (({"avx2", "fma"}, 2), ({"avx2", "fma", "avx_vnni"}, 4)):
        _fake_host(monkeypatch, flags)
        try:
            host = hostinfo.detect_host().model_copy(update={"physical_cores": 2})
            # AVX2: 2 FMA units x 8 lanes x MACs per lane x 2 cores x 3 GHz
            assert system.peak_gmacs("fp32", host=host)[0] == pytest.approx(2 * 8 * 1 * 2 * 3.0)
            assert system.peak_gmacs("int8", host=host)[0] == pytest.approx(2 * 8 * int8_per_lane * 2 * 3.0)
        finally:
            hostinfo.detect_host.cache_clear()


def test_show_host_cpu_reports_detection(tmp_path):
    out = tmp_path / "host.json"
    assert main(["profiles", "show", "host-cpu", "--json", str(out)]) == 0
    payload = json.loads(out.read_text())
    real = hostinfo.detect_host()
    assert payload["host"]["matching_profile"] == real.matching_profile
    assert payload["host"]["logical_cores"] == real.logical_cores
    assert payload["profile"]["quant"]["weight_bits"] == real.recommended_weight_bits


def test_profiles_list_json_matches_loader(tmp_path):
    out = tmp_path / "profiles.json"
    assert main(["profiles", "list", "--json", str(out)]) == 0
    listed = {p["name"]: p for p in json.loads(out.read_text())}
    assert set(listed) == set(shipped_profile_names())
    assert listed["rtx-trt11"] == load_profile("rtx-trt11").model_dump(mode="json")


def test_console_script_runs_without_traceback():
    exe = Path(sys.executable).with_name("edgeattn")
    result = subprocess.run([str(exe), "profiles", "show", "nope"], capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
