"""`edgeattn approx report`: JSON records against the stated targets, the plot, and bad input (exit 2)."""

from __future__ import annotations

import json

from edgeattn.cli import main


def test_report_json_and_plot(tmp_path) -> None:
    js, png = tmp_path / "approx.json", tmp_path / "approx.png"
    assert main(["approx", "report", "--json", str(js), "--plot", str(png)]) == 0
    data = json.loads(js.read_text())
    recs = {(r["op"], r["method"], r["repr"]): r for r in data["records"]}
    ops = {
        "softmax": ["exact", "online", "ibert", "shift", "base2"],
        "gelu": ["exact", "tanh", "edgemoe", "ibert", "sigmoid", "respoly"],
    }
    for op, methods in ops.items():
        for m in methods:
            for rep in ("float", "fixed"):
                r = recs[(op, m, rep)]
                assert r["max_abs_err"] >= r["mean_abs_err"] >= 0
                if op == "softmax":
                    assert "worst_row_sum_dev" in r and "kl_div" in r
    assert recs[("gelu", "edgemoe", "fixed")]["max_abs_err"] <= 2e-4
    assert (
        recs[("gelu", "edgemoe_mm", "fixed")]["max_abs_err"]
        < 0.6 * recs[("gelu", "edgemoe", "fixed")]["max_abs_err"]
    )
    assert abs(recs[("gelu", "ibert", "float")]["max_abs_err"] - 1.8e-2) <= 1.8e-3
    online = recs[("softmax", "online", "fixed")]
    assert online["max_abs_err"] <= 2.0**-8 and online["worst_row_sum_dev"] <= 2 * 2.0**-8
    assert recs[("softmax", "online", "float")]["max_abs_err"] < 1e-6
    assert png.stat().st_size > 10_000 and png.read_bytes()[:4] == b"\x89PNG"
    # refuses to overwrite without --force
    assert main(["approx", "report", "--json", str(js)]) == 2


def test_report_bad_bits(tmp_path, capsys) -> None:
    for bad in ("16", "a,b", "4,8", "16,8,40,16"):
        assert main(["approx", "report", "--bits", bad, "--json", str(tmp_path / "x.json")]) == 2
    err = capsys.readouterr().err
    assert "--bits" in err or "bits must be" in err
    assert "Traceback" not in err
    assert not (tmp_path / "x.json").exists()
    assert main(["approx", "report", "--plot", str(tmp_path / "x.svg")]) == 2
    capsys.readouterr()
    # ASCII digits only: int() alone took '1_6' as 16 and Arabic-Indic digits as 16
    for bad in ("1_6,8", "\u0661\u0666,8", "-16,8"):
        assert main(["approx", "report", "--bits", bad, "--json", str(tmp_path / "x.json")]) == 2
        assert capsys.readouterr().err.strip() == (
            f"error: --bits must be integers 'IN,OUT' or 'IN,OUT,GELU_IN,GELU_OUT_FRAC', got {bad!r}"
        )


def _no_measuring(*args, **kwargs):
    raise AssertionError("measured before checking the output paths")


def test_report_checks_every_output_path_before_measuring(tmp_path, capsys, monkeypatch) -> None:
    """A bad --json path fails up front (exit 2, one line) and --plot is not written: a rerun is not refused."""
    import edgeattn.approx.report as report_mod

    monkeypatch.setattr(report_mod, "build_report", _no_measuring)
    (tmp_path / "a.png").write_bytes(b"a file, not a folder")
    (tmp_path / "dir").mkdir()
    png = tmp_path / "pp.png"
    for bad_json, needle in (
        (tmp_path / "a.png" / "x.json", "is not a folder"),
        (tmp_path / "dir", "is a directory"),
        (png, "the same file"),
    ):
        argv = ["approx", "report", "--plot", str(png), "--json", str(bad_json)]
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and needle in err and "--json" in err
        assert not png.exists()
    assert main(["approx", "report", "--plot", str(tmp_path / "dir")]) == 2  # a folder named x.png too
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "dir"]


def test_report_write_failure_leaves_no_output(tmp_path, monkeypatch) -> None:
    """If writing the JSON fails after the plot is drawn, neither file (nor a folder made for them) is left."""
    import edgeattn.cli.approx as cli_approx

    def disk_full(path, payload):
        raise OSError(28, "No space left on device", str(path))

    monkeypatch.setattr(cli_approx, "write_json", disk_full)
    png, js = tmp_path / "new" / "pp.png", tmp_path / "new" / "sub" / "x.json"
    assert main(["approx", "report", "--plot", str(png), "--json", str(js)]) == 2
    assert list(tmp_path.iterdir()) == []
    monkeypatch.undo()
    assert main(["approx", "report", "--plot", str(png), "--json", str(js)]) == 0  # the rerun is not refused
    assert png.read_bytes()[:4] == b"\x89PNG" and "records" in json.loads(js.read_text())
