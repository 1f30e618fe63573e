"""QA sweep of `edgeattn models`, `edgeattn profiles` and `edgeattn demo` (and the APIs behind them): each test here
failed before its fix.

- No output path may land on the running package or environment: a `--json --force` over a shipped profile YAML
  replaced it (every later profile command then failed), and `demo --force -o` a folder holding (or inside) the
  package or the environment's libraries deleted them.
- `demo` turns SIGTERM into Ctrl-C (exit 130, no staging folder left), and its own interrupt message (where the
  partial report is) survives the CLI's generic "interrupted".
- `count_macs` restores every module's training flag, not only the top module's.
- A profile's `hls.clock_mhz` must be finite (`.inf` made `--json` write the non-JSON `Infinity`);
  `tolerance_for` names an unknown precision; `edge_moe_vit` refuses a `moe_every` that leaves no MoE layer.
- `models info/list --img-size` too large to count here is one line, not a traceback.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import pytest
import torch
import yaml

from edgeattn.atomic import package_folders, protected_folders, refuse_protected, replaceable_dir
from edgeattn.cli import main
from edgeattn.device_profile import load_profile, profile_from_mapping
from edgeattn.errors import EdgeAttnError, ProfileError
from edgeattn.models import count_macs, create_model, example_input


def _shipped(name: str) -> Path:
    folder = next(f for f in package_folders() if (f / f"{name}.yaml").is_file())
    return folder / f"{name}.yaml"


# ------------------------------------------------------------------------------- outputs over the running package
@pytest.mark.parametrize("command", [["profiles", "show", "host-cpu"], ["profiles", "list"]])
def test_json_never_replaces_a_shipped_profile(command, capsys):
    target = _shipped("host-cpu")
    before = target.read_bytes()
    assert main([*command, "--json", str(target), "--force"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: --json '{target}' is inside the installed edgeattn package (")
    assert err.endswith("); write it elsewhere") and len(err.splitlines()) == 1
    assert target.read_bytes() == before


def test_no_output_folder_holds_or_lies_in_the_running_software(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # not the working directory's rule
    pkg = package_folders()[0]  # .../edgeattn
    with pytest.raises(EdgeAttnError, match=r"holds the installed edgeattn package"):
        replaceable_dir(pkg.parent)  # an editable install's repository, or site-packages
    with pytest.raises(EdgeAttnError, match=r"is inside the installed edgeattn package"):
        replaceable_dir(pkg / "blocks")
    purelib = Path(sysconfig.get_paths()["purelib"]).resolve()
    with pytest.raises(EdgeAttnError, match=r"is inside this Python environment"):
        replaceable_dir(purelib.parent.parent)  # .venv/lib: what `demo --force -o .venv/lib` deleted
    with pytest.raises(EdgeAttnError, match=r"holds this Python environment"):
        replaceable_dir(Path(sys.prefix))  # the whole environment
    labels = {what for what, _ in protected_folders()}
    assert labels == {"the installed edgeattn package", "this Python environment"}


def test_a_written_path_is_judged_where_it_is_written(tmp_path, monkeypatch):
    """`--json` replaces a link, it does not write through it: the link's own folder counts, not its target."""
    shipped = _shipped("host-cpu")
    (tmp_path / "flink.yaml").symlink_to(shipped)
    refuse_protected(tmp_path / "flink.yaml", "--json")  # only the link would be replaced: allowed
    (tmp_path / "pkg").symlink_to(shipped.parent)
    with pytest.raises(EdgeAttnError, match=r"is inside the installed edgeattn package"):
        refuse_protected(tmp_path / "pkg" / "host-cpu.yaml", "--json")  # through a linked folder: refused
    env = tmp_path / "env"
    (env / "bin").mkdir(parents=True)
    (env / "bin" / "python").symlink_to(sys.executable)  # a venv's interpreter is a link out of the venv
    monkeypatch.setattr(sys, "prefix", str(env))
    monkeypatch.setattr(sysconfig, "get_paths", lambda: {"scripts": str(env / "bin")})
    for name in ("pyvenv.cfg", "bin/python"):  # old code: both passed, and --force replaced them
        with pytest.raises(EdgeAttnError, match=r"is inside this Python environment"):
            refuse_protected(env / name, "--json")


def test_qat_refuses_an_output_folder_in_the_package(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    run = package_folders()[-1] / "qat-run-refused"
    assert main(["qat", "-m", "vit_tiny", "-o", str(run), "--epochs", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: output directory '{run}' is inside the installed edgeattn package"), err
    assert not run.exists()


def test_demo_refuses_the_environment_before_any_work(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    lib = Path(sysconfig.get_paths()["purelib"]).resolve().parent
    t0 = time.perf_counter()
    assert main(["demo", "--fast", "--force", "-o", str(lib)]) == 2
    assert time.perf_counter() - t0 < 30  # refused before the training
    err = capsys.readouterr().err.strip()
    assert "is inside this Python environment" in err and len(err.splitlines()) == 1
    assert Path(sysconfig.get_paths()["purelib"]).is_dir()


# ------------------------------------------------------------------------------- demo: SIGTERM and its message
def test_sigterm_during_demo_exits_130_and_leaves_no_staging_folder(tmp_path):
    """SIGTERM outside the trainer (whose own handler turns it into a stop): here as the first step starts."""
    script = (
        "import os, signal, sys, time\n"
        "from edgeattn.demo import Demo\n"
        "def run(self):\n"
        "    os.kill(os.getpid(), signal.SIGTERM)\n"
        "    time.sleep(30)\n"
        "Demo.run = run\n"
        "from edgeattn.cli import main\n"
        f"sys.exit(main(['demo', '--fast', '-o', {str(tmp_path / 'd')!r}]))\n"
    )
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 130, proc.stderr  # old code: -15, killed by the signal, the staging folder left
    assert len(proc.stderr.strip().splitlines()) == 1 and proc.stderr.startswith("error: interrupted"), proc.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["d"]  # the partial run published (docs); no hidden .d.tmp-*


def test_a_demo_stopped_while_it_sets_up_leaves_nothing(tmp_path, monkeypatch):
    from edgeattn.demo import Demo, DemoInterrupted, run_demo

    def stopped(self, *args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(Demo, "__init__", stopped)
    with pytest.raises(DemoInterrupted):
        run_demo(tmp_path / "d")
    assert list(tmp_path.iterdir()) == []  # old code: the staging folder was left (the stop came before its try)


def test_the_demos_interrupt_message_is_kept(tmp_path, monkeypatch, capsys):
    """A Ctrl-C the CLI's handler saw (outside the trainer): the demo's line says where the partial report is."""

    def interrupted_run(output, settings, force, console):
        Path(output).mkdir()
        (Path(output) / "summary.json").write_text("{}")
        signal.raise_signal(signal.SIGINT)  # through the CLI's handler, which notes it and raises

    monkeypatch.setattr("edgeattn.demo.run_demo", interrupted_run)
    out = tmp_path / "d"
    before = signal.signal(signal.SIGINT, signal.default_int_handler)  # the CLI installs its own over Python's only
    try:
        assert main(["demo", "--fast", "-o", str(out)]) == 130
    finally:
        signal.signal(signal.SIGINT, before)
    err = capsys.readouterr().err.strip()
    assert err == f"error: interrupted; {out / 'report.md'} and summary.json say which steps ran"  # old: "interrupted"


# ------------------------------------------------------------------------------- count_macs and the models CLI
def test_count_macs_restores_every_modules_training_flag():
    model = create_model("mobilenetv2", img_size=32).train()
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for bn in bns:
        bn.eval()  # frozen statistics while the rest trains
    before = [m.training for m in model.modules()]
    count_macs(model, example_input(model))
    assert [m.training for m in model.modules()] == before
    assert model.training and not any(bn.training for bn in bns)  # old code: all 52 BatchNorms back in training


def test_an_img_size_too_large_to_count_here_is_one_line(capsys, monkeypatch):
    def no_memory(*args, **kwargs):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:127] DefaultCPUAllocator: can't allocate memory: you "
                           "tried to allocate 51541180428 bytes. Error code 12 (Cannot allocate memory)")

    monkeypatch.setattr("edgeattn.models.count_macs", no_memory)
    assert main(["models", "info", "vit_tiny", "--img-size", "4096"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        "error: --img-size 4096: counting vit_tiny at 4096x4096 needs more memory than this machine has free "
        "(torch tried to allocate 51.5 GB); try a smaller size"
    )
    assert main(["models", "info", "vit_tiny", "--img-size", "99999"]) == 2  # over the bound: click's own message
    assert "less than or equal to 8192" in capsys.readouterr().err


# ------------------------------------------------------------------------------- profiles and edge_moe_vit
def test_an_infinite_clock_is_refused():
    data = yaml.safe_load(_shipped("zcu102-hls").read_text())
    data["hls"]["clock_mhz"] = float("inf")
    with pytest.raises(ProfileError, match=r"hls\.clock_mhz"):
        profile_from_mapping(data, "zcu.yaml")
    data["hls"]["clock_mhz"] = 250  # a whole number is still a clock
    assert profile_from_mapping(data, "zcu.yaml").hls.clock_mhz == 250.0
    json.dumps(load_profile("zcu102-hls").model_dump(mode="json"), allow_nan=False)  # the shipped one is plain JSON


def test_tolerance_for_names_an_unknown_precision():
    prof = load_profile("zcu102-hls")
    with pytest.raises(ProfileError) as err:
        prof.tolerance_for("fixed")
    assert str(err.value) == (
        "no parity tolerance for precision 'fixed': it must be one of fp32, fp16, int8 (profile 'zcu102-hls')"
    )
    assert prof.tolerance_for("int8").min_cosine == 0.995


def test_edge_moe_vit_refuses_a_moe_every_that_leaves_no_moe_layer():
    with pytest.raises(ValueError, match=r"^edge_moe_vit: moe_every=5 leaves no MoE layer in 4 blocks; use 1\.\.4$"):
        create_model("edge_moe_vit", moe_every=5)
    model = create_model("edge_moe_vit", moe_every=4)  # the last block only
    assert sum(type(b.mlp).__name__ == "MoEMlp" for b in model.blocks) == 1


def test_profile_errors_read_without_pydantics_wording(tmp_path):
    data = yaml.safe_load(_shipped("rtx-trt11").read_text())
    del data["tensorrt"]
    with pytest.raises(ProfileError) as err:
        profile_from_mapping(data, "p.yaml")
    assert str(err.value) == "p.yaml: targets lists 'tensorrt' but the 'tensorrt' section is missing"
    data = yaml.safe_load(_shipped("rtx-trt11").read_text())
    data["tolerance"] = {"int4": {"max_abs": 0.1, "min_cosine": 0.9, "min_top1_agreement": 0.9}}
    with pytest.raises(ProfileError) as err:
        profile_from_mapping(data, "p.yaml")
    assert str(err.value) == "p.yaml: field 'tolerance' has the key 'int4': input should be 'fp32', 'fp16' or 'int8'"
    empty = tmp_path / "empty.yaml"
    empty.write_text("# nothing yet\n")
    with pytest.raises(ProfileError) as err:
        load_profile(empty)
    assert str(err.value) == f"{empty}: the file is empty; a profile is a mapping of fields (edgeattn profiles fields)"


def test_profiles_show_keeps_each_value_on_one_line_in_a_pipe(capsys, monkeypatch):
    monkeypatch.delenv("COLUMNS", raising=False)
    assert main(["profiles", "show", "apple-a17-coreml"]) == 0
    out = capsys.readouterr().out.splitlines()
    description = load_profile("apple-a17-coreml").description
    assert len(description) > 80 - len("description: ")  # long enough that rich wrapped it at 80 columns
    assert f"description: {description}" in out


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (["models", "info", "fmvit_tt"], "error: unknown model 'fmvit_tt' (did you mean 'fmvit_t'?); valid models: "),
        (["profiles", "show", "jetson-orin"], "error: unknown profile 'jetson-orin' (did you mean 'jetson-orin-trt10'"),
        (["models", "info", "resnet9"], "error: unknown model 'resnet9'; valid models: "),  # nothing close: no guess
    ],
)
def test_a_mistyped_name_gets_the_closest_one(args, line, capsys):
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(line) and len(err.splitlines()) == 1, err


@pytest.mark.parametrize(
    ("typed", "hint"),
    [
        ("vit", " (did you mean 'vit_tiny'?)"),  # a start of one name (difflib preferred 'fmvit_t')
        ("fmvit", " (did you mean one of 'fmvit_b', 'fmvit_s', 'fmvit_t'?)"),  # a start of three: all of them
        ("VIT_TINY", " (did you mean 'vit_tiny'?)"),  # another case
        ("edge-moe-vit", " (did you mean 'edge_moe_vit'?)"),
        ("resnet9", ""),
    ],
)
def test_did_you_mean_prefers_what_the_name_starts(typed, hint):
    from edgeattn.errors import did_you_mean
    from edgeattn.models import list_models

    assert did_you_mean(typed, list_models()) == hint
