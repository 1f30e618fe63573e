"""The QAT benchmark's ``--lr-sweep`` bookkeeping: spec parsing, row names and the paired summary, against
hand-computed figures (the benchmark itself trains for minutes; its helpers are checked here)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "qat.py"


@pytest.fixture(scope="module")
def bench():
    if str(BENCH.parent) not in sys.path:  # the script imports its helpers as top-level _cli / _timing
        sys.path.insert(0, str(BENCH.parent))
    spec = importlib.util.spec_from_file_location("bench_qat", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_sweep_specs_and_row_names(bench):
    assert bench._sweep_specs("w8a8:1e-3:1,w4a8:0.0005:6") == [("w8a8", "1e-3", 1), ("w4a8", "0.0005", 6)]
    with pytest.raises(SystemExit, match="bits:lr:epochs"):
        bench._sweep_specs("w8a8:1e-3")
    with pytest.raises(SystemExit, match="bits:lr:epochs"):
        bench._sweep_specs("w8a8:fast:1")
    rows = bench.lr_sweep_rows("w8a8", "1e-3", 1, prefix="lm-", controls=True)
    assert [r["name"] for r in rows] == [
        "lm-edgeqat-no-entropy-w8a8-lr1e-3-ep1",
        "lm-qat-w8a8-lr1e-3-ep1",
        "lm-fp-finetune-w8a8-lr1e-3-ep1",
    ]
    assert all(r["lr"] == 1e-3 and r["epochs"] == 1 for r in rows)
    assert rows[2]["quant"] == bench.FLOAT_EVERYTHING  # the control quantizes nothing
    for name, lr in (("edgeqat-no-entropy-w8a8-lr1e-3-ep6", "1e-3"), ("qat-w4a8-lr0.0005-ep2", "0.0005")):
        assert bench.SWEEP_SUFFIX.match(name)["lr"] == lr


def _section(fp32: float, rows: dict[str, dict[str, float]]) -> dict:
    return {"fp32": fp32, "rows": rows}


def test_language_sweep_summary_pairs_by_seed(bench):
    # three seeds: FP32, the PTQ the QAT rows start from, the suite-lr EdgeQAT and the lr 1e-3 EdgeQAT
    fp, ptq, suite, hot = [2.0, 2.1, 2.2], [2.05, 2.15, 2.25], [2.06, 2.14, 2.24], [2.04, 2.16, 2.23]
    sections = {
        s: _section(
            fp[s],
            {
                "lm-qat-w8a8": {"value": 9.0, "ptq_value": ptq[s]},
                "lm-edgeqat-no-entropy-w8a8": {"value": suite[s]},
                "lm-edgeqat-no-entropy-w8a8-lr1e-3-ep1": {"value": hot[s]},
            },
        )
        for s in range(3)
    }
    payload: dict = {}
    bench._lr_sweep_summary(payload, sections, "language_fp10", language=True, only=None)
    entry = payload["lr_sweep_summary"]["language_fp10"]["w8a8-lr1e-3-ep1"]
    over_ptq = entry["edgeqat-no-entropy_gain_over_ptq"]  # perplexity down is a gain: 0.01, -0.01, 0.02
    assert over_ptq["mean"] == pytest.approx(0.02 / 3)
    assert (over_ptq["wins"], over_ptq["ties"], over_ptq["losses"]) == (2, 0, 1)
    over_suite = entry["edgeqat-no-entropy_gain_over_edgeqat-no-entropy-suite-lr"]  # 0.02, -0.02, 0.01
    assert over_suite["mean"] == pytest.approx(0.01 / 3)
    assert entry["edgeqat-no-entropy"]["mean"] == pytest.approx(sum(hot) / 3)
    assert "edgeqat-no-entropy_gain_over_qat" not in entry  # no plain-QAT control ran
    bench._lr_sweep_summary(payload, sections, "language_fp10", language=True, only=[1, 2])
    held_out = payload["lr_sweep_summary"]["language_fp10_seeds_1-2"]["w8a8-lr1e-3-ep1"]
    assert held_out["edgeqat-no-entropy_gain_over_ptq"]["mean"] == pytest.approx(0.005)


def test_vision_sweep_summary_uses_the_better_ptq(bench):
    rows = [
        {
            "ptq-minmax-w8a8": {"value": 97.0},
            "ptq-percentile-w8a8": {"value": 98.0},
            "edgeqat-no-entropy-w8a8-lr1e-3-ep6": {"value": 98.5},
            "qat-w8a8-lr1e-3-ep6": {"value": 97.5},
        },
        {
            "ptq-minmax-w8a8": {"value": 99.0},
            "ptq-percentile-w8a8": {"value": 98.0},
            "edgeqat-no-entropy-w8a8-lr1e-3-ep6": {"value": 98.0},
            "qat-w8a8-lr1e-3-ep6": {"value": 99.0},
        },
    ]
    payload: dict = {}
    sections = {s: _section(98.0, r) for s, r in enumerate(rows)}
    bench._lr_sweep_summary(payload, sections, "vision_fp20", language=False, only=None)
    entry = payload["lr_sweep_summary"]["vision_fp20"]["w8a8-lr1e-3-ep6"]
    over_ptq = entry["edgeqat-no-entropy_gain_over_ptq"]  # 98.5 - 98.0, 98.0 - 99.0: top-1 up is a gain
    assert over_ptq["mean"] == pytest.approx(-0.25)
    assert (over_ptq["wins"], over_ptq["losses"]) == (1, 1)
    assert entry["qat_gain_over_ptq"]["mean"] == pytest.approx(-0.25)
    assert entry["edgeqat-no-entropy_gain_over_qat"]["mean"] == pytest.approx(0.0)


def test_nll_summary_takes_the_lower_ptq_and_counts_a_lower_nll_as_a_gain(bench):
    # two seeds; the best PTQ is the LOWER cross-entropy of the two PTQ rows (0.10, then 0.20)
    rows = [
        {
            "ptq-minmax-w8a8": {"nll": 0.12},
            "ptq-percentile-w8a8": {"nll": 0.10},
            "qat-w8a8": {"nll": 0.15},
            "edgeqat-no-entropy-w8a8": {"nll": 0.09},
        },
        {
            "ptq-minmax-w8a8": {"nll": 0.20},
            "ptq-percentile-w8a8": {"nll": 0.25},
            "qat-w8a8": {"nll": 0.30},
            "edgeqat-no-entropy-w8a8": {"nll": 0.23},
            "edgeqat-w8a8": {"value": 97.0},  # a row without an nll (run before it was measured) is left out
        },
    ]
    sections = {s: {"fp32": 98.0, "fp32_nll": 0.1 * (s + 1), "rows": r} for s, r in enumerate(rows)}
    out = bench._nll_summary(sections, "w8a8")
    assert out["ptq_best"]["by_seed"] == {0: 0.10, 1: 0.20}
    gain = out["edgeqat_no_entropy_gain_over_ptq_best"]  # 0.10 - 0.09 = +0.01, 0.20 - 0.23 = -0.03
    assert gain["mean"] == pytest.approx(-0.01)
    assert (gain["wins"], gain["ties"], gain["losses"]) == (1, 0, 1)
    assert out["edgeqat_no_entropy_gain_over_plain_qat"]["mean"] == pytest.approx((0.06 + 0.07) / 2)
    assert out["edgeqat_no_entropy_gain_over_fp32"]["mean"] == pytest.approx((0.01 - 0.03) / 2)
    assert "fp_finetune" not in out and "edgeqat_no_entropy_gain_over_fp_finetune" not in out  # no control ran
    assert bench._nll_summary({s: {"rows": {"qat-w8a8": {"value": 1.0}}} for s in range(2)}, "w8a8") == {}


def test_augment_rows_and_their_paired_summary(bench):
    assert bench._augment_specs("w8a8:2,w4a8:1") == [("w8a8", 2), ("w4a8", 1)]
    for bad in ("w8a8", "w8a8:0", "w8a8:two"):
        with pytest.raises(SystemExit, match="bits:shift"):
            bench._augment_specs(bad)
    rows = bench.augment_rows("w8a8", 2, lr=1e-4)
    names = ["edgeqat-no-entropy-augment-w8a8", "qat-augment-w8a8", "fp-finetune-augment-w8a8"]
    assert [r["name"] for r in rows] == names
    assert all(r["augment_shift"] == 2 and r["lr"] == 1e-4 and r["bits"] == "w8a8" for r in rows)
    assert rows[0]["losses"] == bench.EDGEQAT_DEFAULT and rows[1]["losses"] == bench.PLAIN
    assert rows[2]["quant"] == bench.FLOAT_EVERYTHING and rows[2]["losses"] == bench.PLAIN
    cfg = bench._row_config({"model": "vit_tiny", "epochs": 1}, rows[0], "fp.pt", "out", None)
    assert cfg.augment_shift == 2 and not cfg.losses.entropy and cfg.lr == 1e-4
    # two seeds, paired against the better PTQ of each seed: (98.6 - 98.3), (98.0 - 98.3)
    sections = {
        s: {
            "fp32": 98.0,
            "config": {"fp_epochs": 20, "seed": s},
            "rows": {
                "ptq-minmax-w8a8": {"value": 98.3},
                "ptq-percentile-w8a8": {"value": 97.9 + 0.4 * s},
                "edgeqat-no-entropy-augment-w8a8": {"value": [98.6, 98.0][s]},
                "fp-finetune-augment-w8a8": {"value": 98.5},
            },
        }
        for s in range(2)
    }
    payload = {f"vision_fp20_seed{s}": sec for s, sec in sections.items()}
    bench._seed_summary(payload, {"fp_epochs": 20, "seed": 0})
    entry = payload["seed_summary"]["fp_epochs_20"]["w8a8"]
    gain = entry["edgeqat_augment_minus_ptq_best"]
    assert gain["mean"] == pytest.approx(0.0) and (gain["wins"], gain["losses"]) == (1, 1)
    assert entry["edgeqat_augment_minus_fp_finetune_augment"]["mean"] == pytest.approx(-0.2)
    assert entry["fp_finetune_augment_minus_fp32"]["mean"] == pytest.approx(0.5)


def test_a_diverged_row_is_recorded_beside_the_table_and_the_suite_goes_on(bench, tmp_path, capsys):
    """A sweep row at lr 1e30 diverges: before, TrainingDiverged ended the whole benchmark. Now the row lands in the
    section's 'diverged' (stage, reason, lr), the next row still runs and enters the table, and a rerun skips both."""
    from _tiny_runs import tiny_cfg

    base = {k: v for k, v in tiny_cfg(tmp_path / "unused").items() if k != "output_dir"}
    rows = [
        {"name": "qat-w8a8-lr1e+30", "method": "plain QAT", "bits": "w8a8", "losses": bench.PLAIN, "lr": 1e30},
        {"name": "qat-w8a8", "method": "plain QAT", "bits": "w8a8", "losses": bench.PLAIN},
    ]
    payload: dict = {}
    out, work = tmp_path / "qat.json", tmp_path / "work"
    bench.run_suite("vision", base, rows, payload, out, work)
    section = json.loads(out.read_text())["vision"]
    bad = section["diverged"]["qat-w8a8-lr1e+30"]
    assert bad["stage"] == "QAT" and bad["lr"] == 1e30 and ("nan" in bad["reason"] or "inf" in bad["reason"])
    assert "qat-w8a8-lr1e+30" not in section["rows"]
    good = section["rows"]["qat-w8a8"]
    assert 0.0 <= good["value"] <= 100.0 and good["lr"] != 1e30
    assert "diverged" in capsys.readouterr().out
    # a rerun (--resume) keeps both: nothing is trained again, so no row's seconds change
    seconds = good["seconds"]
    bench.run_suite("vision", base, rows, payload, out, work)
    assert json.loads(out.read_text())["vision"]["rows"]["qat-w8a8"]["seconds"] == seconds
