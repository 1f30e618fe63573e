"""edgeattn.export.export_all (several targets in one run, shared work), torch_threads, artifact file modes.

The shared run is checked against separate, uncached ``export_model`` runs of the same model: the same
parity figures, byte-identical ONNX where the targets share one, and every gate still present.
"""

from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from _export_models import TinyViT  # noqa: E402
from edgeattn.export import DEFAULT_PROFILES, ParityFailure, export_all, export_model  # noqa: E402

from edgeattn.atomic import current_umask, publish_modes  # noqa: E402
from edgeattn.device_profile import DeviceProfile, Tolerance  # noqa: E402
from edgeattn.errors import EdgeAttnError  # noqa: E402

KW = {"model_kwargs": {"img_size": 32, "num_classes": 10}, "n_inputs": 4, "threads": 1}


def _modes(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): stat.S_IMODE(p.stat().st_mode) for p in [root, *root.rglob("*")]}


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    out = tmp_path_factory.mktemp("all")
    torch.manual_seed(0)
    return out, export_all("mobilenetv2", out, ["onnx", "openvino", "tensorrt"], **KW)


def test_export_all_matches_separate_uncached_runs(shared, tmp_path):
    out, reports = shared
    assert set(reports) == {"onnx", "openvino", "tensorrt"}
    for rep in reports.values():
        assert rep.passed
    # openvino's own uncached run is left out for time: its ONNX is checked byte-equal to the onnx target's
    for target in ("onnx", "tensorrt"):
        rep = reports[target]
        torch.manual_seed(0)  # the registry model's random init, as in the shared run
        alone = export_model("mobilenetv2", target, DEFAULT_PROFILES[target], tmp_path / target, **KW)
        # every gate of the separate run ran in the shared run too, with the same figures
        assert [p["runtime"] for p in rep.parity] == [p["runtime"] for p in alone.parity]
        for a, b in zip(rep.parity, alone.parity, strict=True):
            assert a["max_abs_rel_range"] == pytest.approx(b["max_abs_rel_range"], rel=1e-6, abs=1e-9)
            assert a["n_inputs"] == b["n_inputs"] == 4
            assert a["tolerance"] == b["tolerance"]
        assert (out / target / "model.onnx").read_bytes() == (tmp_path / target / "model.onnx").read_bytes()
    # onnx and openvino both default to host-cpu: one ONNX serves both, so they are the same bytes
    assert (out / "onnx" / "model.onnx").read_bytes() == (out / "openvino" / "model.onnx").read_bytes()
    assert reports["openvino"].timings_s["onnx_export"] < reports["onnx"].timings_s["onnx_export"]
    noopt = {t: next(p for p in r.parity if p["runtime"] == "onnxruntime-noopt") for t, r in reports.items()}
    assert noopt["openvino"] == noopt["onnx"]  # one ORT run served both: the same ONNX on the same inputs
    assert [p["runtime"] for p in reports["openvino"].parity] == ["onnxruntime-noopt", "openvino-cpu"]


def test_artifacts_get_the_umask_modes(shared):
    out, _ = shared
    mask = current_umask()
    for rel, mode in _modes(out / "openvino").items():
        path = out / "openvino" / rel
        want = (0o777 if path.is_dir() else 0o666) & ~mask
        assert mode == want, f"{rel}: {oct(mode)} != {oct(want)}"
    names = {p.name for p in (out / "openvino").iterdir()}
    assert {"model.onnx", "model.xml", "model.bin", "report.json"} <= names
    assert not [n for n in names if n.startswith(".")]  # no staging leftovers


def test_publish_modes_follows_a_restrictive_umask(tmp_path):
    root = tmp_path / "pkg"
    (root / "sub").mkdir(parents=True)
    for p in (root / "a.json", root / "sub" / "w.bin"):
        p.write_text("x")
        p.chmod(0o600)
    root.chmod(0o700)
    old = os.umask(0o027)
    try:
        publish_modes(root)
        publish_modes(root / "a.json")
    finally:
        os.umask(old)
    assert _modes(root) == {".": 0o750, "sub": 0o750, "a.json": 0o640, "sub/w.bin": 0o640}


def test_save_onnx_and_write_report_are_world_readable(tmp_path):
    import onnx
    from edgeattn.export.onnx_export import save_onnx
    from edgeattn.export.report import ExportReport, write_report

    vi = onnx.helper.make_tensor_value_info
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Identity", ["x"], ["y"])],
        "g",
        [vi("x", onnx.TensorProto.FLOAT, [1])],
        [vi("y", onnx.TensorProto.FLOAT, [1])],
    )
    old = os.umask(0o022)
    try:
        a = save_onnx(onnx.helper.make_model(graph), tmp_path / "m.onnx")
        b = write_report(tmp_path / "r.json", ExportReport("m", "onnx", "fp32", {}, str(tmp_path)))
    finally:
        os.umask(old)
    assert stat.S_IMODE(a.stat().st_mode) == stat.S_IMODE(b.stat().st_mode) == 0o644
    assert json.loads(b.read_text())["model"] == "m" and onnx.load(a).graph.node[0].op_type == "Identity"


def test_export_all_refuses_before_any_work(tmp_path):
    with pytest.raises(EdgeAttnError, match="unknown target 'tflite'"):
        export_all("mobilenetv2", tmp_path / "a", ["onnx", "tflite"], **KW)
    with pytest.raises(EdgeAttnError, match="profiles given for targets not exported: coreml"):
        export_all("mobilenetv2", tmp_path / "b", ["onnx"], {"coreml": "apple-a17-coreml"}, **KW)
    with pytest.raises(EdgeAttnError, match="does not list|target"):
        export_all("mobilenetv2", tmp_path / "c", ["tensorrt"], {"tensorrt": "host-cpu"}, **KW)
    (tmp_path / "d" / "openvino").mkdir(parents=True)
    (tmp_path / "d" / "openvino" / "keep.txt").write_text("mine")
    with pytest.raises(EdgeAttnError, match="openvino' exists and is not empty") as exc:
        export_all("mobilenetv2", tmp_path / "d", ["onnx", "openvino"], **KW)
    assert exc.value.exit_code == 6
    assert not (tmp_path / "d" / "onnx").exists()  # the check ran before the first target
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_export_all_runs_every_target_then_reports_the_failures(tmp_path, monkeypatch):
    torch.manual_seed(0)
    model = TinyViT().eval()
    # a tolerance no output can meet (a negative max_abs, which --atol and profiles refuse, so it is built without
    # validation) fails every gate: both targets must still run and write their reports
    impossible = Tolerance.model_construct(max_abs=-1.0, min_cosine=1.0, min_top1_agreement=1.0)
    monkeypatch.setattr(DeviceProfile, "tolerance_for", lambda self, precision: impossible)
    with pytest.raises(ParityFailure, match="2 of 2 targets failed parity") as exc:
        export_all(model, tmp_path, ["onnx", "openvino"], precision="fp32", n_inputs=2, threads=1)
    assert set(exc.value.reports) == {"onnx", "openvino"}
    for target in ("onnx", "openvino"):
        rep = json.loads((tmp_path / target / "report.json").read_text())
        assert not rep["passed"] and all(not p["passed"] for p in rep["parity"])


_SEEN: list[int] = []  # module level: the export works on copies of the model (reparameterize, deepcopy)


class _ThreadProbe(TinyViT):
    """TinyViT that records torch's intra-op thread count at every forward."""

    def forward(self, x):
        _SEEN.append(torch.get_num_threads())
        return super().forward(x)


@pytest.mark.parametrize("torch_threads", [1, None])
def test_torch_threads_is_applied_and_restored(torch_threads, tmp_path):
    torch.manual_seed(0)
    model = _ThreadProbe().eval()
    _SEEN.clear()
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        export_model(
            model, "onnx", "host-cpu", tmp_path / "o", precision="fp32", n_inputs=2, torch_threads=torch_threads
        )
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    assert _SEEN and set(_SEEN) == {1 if torch_threads == 1 else 2}
    with pytest.raises(EdgeAttnError, match="torch_threads must be >= 1"):
        export_model(model, "onnx", "host-cpu", tmp_path / "p", precision="fp32", torch_threads=0)
