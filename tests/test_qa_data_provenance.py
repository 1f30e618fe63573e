"""A checkpoint's data must be the data it was trained on: a content fingerprint of a user's folder or text file is
recorded at training time and compared wherever the data is read again as the checkpoint's own (export's parity
inputs, hls vectors, ``--resume``, ``--fp-checkpoint``). And ``edgeattn demo``'s published folder names itself, not
the hidden staging folder it was written in, in every file, the checkpoints' metadata included."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from edgeattn.export.api import _own_data_notes, _parity_inputs
from edgeattn.quant import train as T
from edgeattn.quant.checkpoint import atomic_torch_save, load_checkpoint, save_checkpoint
from PIL import Image
from rich.console import Console

from edgeattn.cli import main as cli_main
from edgeattn.data import (
    checkpoint_data_problem,
    checkpoint_samples,
    data_fingerprint,
    digits_dataset,
    image_folder,
)
from edgeattn.demo import Demo, DemoInterrupted, DemoSettings, run_demo

TINY = {"depth": 1, "embed_dim": 32, "num_heads": 2, "patch_size": 4}


def _grey_png(path: Path, value: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((6, 6, 3), value, dtype=np.uint8)).save(path)


def _folder(root: Path) -> Path:
    """Two classes of five constant-grey PNGs: cat/i.png has grey 10 + i, dog/i.png grey 100 + i."""
    for base, cname in ((10, "cat"), (100, "dog")):
        for i in range(5):
            _grey_png(root / cname / f"{i}.png", base + i)
    return root


def _meta(root: Path, **kw: Any) -> dict[str, Any]:
    """A checkpoint meta as ``edgeattn qat`` writes it for an image folder (8 px, 3 channels, seed 0)."""
    return {"data": str(root), "data_path": str(root), "classes": ["cat", "dog"], "resize": "crop",
            "split": {"seed": 0, "img_size": 8, "in_chans": 3}, "model_kwargs": {"img_size": 8, "in_chans": 3}, **kw}


def _val(root: Path) -> torch.Tensor:
    return image_folder(root, 8, 3, "val", 0, resize="crop")[0].tensors[0]


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------------------------------------- the fingerprint
def test_a_replaced_image_or_a_renamed_class_is_not_the_checkpoints_data(tmp_path):
    root = _folder(tmp_path / "pets")
    meta = _meta(root, data_fingerprint=data_fingerprint(root))
    before = _val(root)
    assert checkpoint_data_problem(meta) is None and torch.equal(checkpoint_samples(meta), before)
    # files the loader does not read (hidden, not an image) change nothing, as the loaded tensors show
    (root / "cat" / ".DS_Store").write_bytes(b"junk")
    (root / "dog" / "notes.txt").write_text("a note")
    assert torch.equal(_val(root), before) and data_fingerprint(root) == meta["data_fingerprint"]
    assert torch.equal(checkpoint_samples(meta), before)

    # one image's bytes replaced (same name, same classes): other data, so no samples (old code: returned them)
    original = (root / "dog" / "3.png").read_bytes()
    _grey_png(root / "dog" / "3.png", 250)
    all_now = image_folder(root, 8, 3, "all")[0].tensors[0]
    assert round((float(all_now[8, 0, 0, 0]) + 1) / 2 * 255) == 250  # dog/3.png is sample 8 in file order
    assert checkpoint_data_problem(meta).startswith("has changed since training: its content is not")
    assert checkpoint_samples(meta) is None and checkpoint_samples(meta, "train") is None
    # a checkpoint from before the fingerprint was recorded: the classes still match, so it is accepted
    old = {k: v for k, v in meta.items() if k != "data_fingerprint"}
    assert checkpoint_data_problem(old) is None and torch.equal(checkpoint_samples(old), _val(root))
    (root / "dog" / "3.png").write_bytes(original)  # the same bytes again: the same data
    assert checkpoint_data_problem(meta) is None and torch.equal(checkpoint_samples(meta), before)

    # a class renamed: same count, same images, other labels; refused with and without a fingerprint
    (root / "dog").rename(root / "emu")
    for m in (meta, old):
        assert checkpoint_data_problem(m) == (
            "has changed since training: its classes are now ['cat', 'emu'], the checkpoint's are ['cat', 'dog']"
        )
        assert checkpoint_samples(m) is None
    # an image added to a class: same classes, one more file
    (root / "emu").rename(root / "dog")
    _grey_png(root / "cat" / "5.png", 15)
    assert checkpoint_samples(meta) is None and checkpoint_samples(old) is not None


def test_a_text_files_fingerprint_is_the_sha256_of_its_bytes(tmp_path):
    text = tmp_path / "corpus.txt"
    data = bytes(range(256)) * 4
    text.write_bytes(data)
    assert data_fingerprint(text) == "sha256:" + hashlib.sha256(data).hexdigest()  # hashlib, independently
    meta = {"data": str(text), "data_path": str(text), "split": {"seed": 0}, "model_kwargs": {"seq_len": 16},
            "data_fingerprint": data_fingerprint(text)}
    windows = checkpoint_samples(meta)
    # 63 windows of 16 bytes, the last 6 (10 %) validation: the first starts at byte 57 * 16 = 912
    assert windows is not None and windows.shape == (6, 16)
    assert torch.equal(windows[0], torch.tensor(list(data[912:928])))
    text.write_bytes(data[:-1] + b"x")  # one byte
    assert checkpoint_samples(meta) is None and "has changed since training" in checkpoint_data_problem(meta)
    assert checkpoint_samples({k: v for k, v in meta.items() if k != "data_fingerprint"}) is not None  # old meta


def test_built_in_data_needs_no_fingerprint():
    meta = {"data": "digits", "split": {"seed": 0}, "model_kwargs": {"img_size": 8, "in_chans": 1}}
    assert checkpoint_data_problem(meta) is None
    assert torch.equal(checkpoint_samples(meta), digits_dataset(8, 1, "val", 0).tensors[0])


# ---------------------------------------------------------------------------------------------- runs
def _cfg(out: Path, data: Path, **kw: Any) -> dict[str, Any]:
    return {"model": "vit_tiny", "model_kwargs": TINY, "data": str(data), "img_size": 8, "in_chans": 3,
            "fp_epochs": 1, "epochs": 1, "batch_size": 8, "calib_samples": 8, "output_dir": str(out),
            "num_threads": 1, **kw}


@pytest.fixture(scope="module")
def run_on_folder(tmp_path_factory) -> tuple[Path, Path]:
    """(an image folder, a finished tiny run on it)."""
    base = tmp_path_factory.mktemp("prov")
    root = _folder(base / "pets")
    T.run(_cfg(base / "run", root), progress=False)
    return root, base / "run"


def _cli_qat(cfg: dict[str, Any], path: Path, *flags: str) -> int:
    path.write_text(yaml.safe_dump(cfg))
    return cli_main(["qat", "-c", str(path), "--no-progress", *flags])


def test_every_record_of_a_run_holds_the_fingerprint_of_its_data(run_on_folder):
    root, run = run_on_folder
    fingerprint = data_fingerprint(root)
    assert fingerprint.startswith("sha256:") and len(fingerprint) == 7 + 64
    assert json.loads((run / "result.json").read_text())["data_fingerprint"] == fingerprint
    for name in ("fp.pt", "ptq.pt", "model.pt", "qat_last.pt"):
        assert torch.load(run / name, weights_only=True)["meta"]["data_fingerprint"] == fingerprint
    assert torch.load(run / "state.pt", weights_only=True)["data_fingerprint"] == fingerprint


def test_resume_and_fp_checkpoint_refuse_changed_data_in_one_line(run_on_folder, tmp_path, capsys):
    root, run = run_on_folder
    meta = torch.load(run / "model.pt", weights_only=True)["meta"]
    before = _snapshot(run)
    original = (root / "cat" / "1.png").read_bytes()
    _grey_png(root / "cat" / "1.png", 200)  # same name, same classes, same count: other pixels
    try:
        assert _cli_qat(_cfg(run, root), tmp_path / "resume.yaml", "--resume") == 2  # old code: resumed (0)
        err = capsys.readouterr().err.strip().splitlines()
        assert err == [
            f"error: --resume: the run in '{run}' was trained on other content of this data: files were replaced, "
            "added, removed or renamed since (its data fingerprint differs); restore the data, or train a new "
            "model on it (a new run without that checkpoint)"
        ]
        assert _snapshot(run) == before  # byte for byte
        # starting a new run from its FP model: refused before anything is written
        new = tmp_path / "new"
        assert _cli_qat(_cfg(new, root, fp_checkpoint=str(run / "fp.pt")), tmp_path / "new.yaml") == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"error: fp_checkpoint '{run / 'fp.pt'}' was trained on other")
        assert not new.exists()
        # export: parity and calibration do not take the changed folder for the checkpoint's images, and say why
        x, counts = _parity_inputs((1, 3, 8, 8), 4, meta, 0, None)
        assert counts == {"random": 4, "real": 0}
        assert _own_data_notes(meta, counts, (1, 3, 8, 8), None, False) == [
            f"the checkpoint's data '{root}' has changed since training: its content is not what the checkpoint "
            "was trained on (files replaced, added, removed or renamed): parity ran on 4 random inputs instead of "
            "its own samples"
        ]
    finally:
        (root / "cat" / "1.png").write_bytes(original)
    # the same bytes again: accepted
    assert T.run(_cfg(run, root), resume=True, progress=False)["status"] == "done"
    assert _parity_inputs((1, 3, 8, 8), 4, meta, 0, None)[1] == {"random": 2, "real": 2}


# ---------------------------------------------------------------------------------------------- demo
def _staged_steps(monkeypatch: pytest.MonkeyPatch, seen: dict[str, Any], stop_in_hls: bool) -> None:
    """Steps that write what the real ones do: checkpoints whose meta names their output folder and the FP
    checkpoint (train, qat), a state.pt, a JSON record, and a failing step whose traceback goes to demo.log."""
    from edgeattn.models import create_model

    kwargs = {**TINY, "img_size": 8, "num_classes": 10}

    def train(self: Demo) -> dict[str, Any]:
        seen["staging"] = self.out.name
        fp = self.out / "train" / "fp.pt"
        seen["weights"] = create_model("vit_tiny", **kwargs)
        config = {"output_dir": str(fp.parent), "fp_checkpoint": None}
        save_checkpoint(fp, seen["weights"], {"model": "vit_tiny", "model_kwargs": kwargs, "config": config})
        (fp.parent / "result.json").write_text(json.dumps({"fp_checkpoint": str(fp)}))
        return {"fp_checkpoint": str(fp)}

    def qat(self: Demo) -> dict[str, Any]:
        out = self.out / "qat"
        config = {"output_dir": str(out), "fp_checkpoint": self.results["train"].data["fp_checkpoint"]}
        save_checkpoint(out / "model.pt", seen["weights"], {"model": "vit_tiny", "model_kwargs": kwargs,
                                                             "config": config, "paths": (str(out), 1)})
        atomic_torch_save({"config": config, "epoch": 1, "model": {"w": torch.arange(3.0)}}, out / "state.pt")
        return {"checkpoint": str(out / "model.pt")}

    def export(self: Demo) -> dict[str, Any]:
        raise RuntimeError(f"cannot write '{self.out / 'export' / 'x.onnx'}'")  # logged with its traceback

    def hls(self: Demo) -> dict[str, Any]:
        if stop_in_hls:
            raise KeyboardInterrupt
        return {}

    for name, fn in (("train", train), ("qat", qat), ("export", export), ("hls", hls)):
        monkeypatch.setattr(Demo, name, fn)
    monkeypatch.setattr(Demo, "_approx_plot", lambda self: setattr(self, "approx", None))
    monkeypatch.setattr("edgeattn.demo._accuracy_section", lambda rep, r: None)


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, (list, tuple)):
        return [s for v in value for s in _strings(v)]
    return []


@pytest.mark.parametrize("stop_in_hls", [False, True], ids=["published", "interrupted-kept-aside"])
def test_no_file_of_the_published_demo_names_the_staging_folder(tmp_path, monkeypatch, stop_in_hls):
    seen: dict[str, Any] = {}
    _staged_steps(monkeypatch, seen, stop_in_hls)
    out = tmp_path / "d"
    out.mkdir()
    (out / "old.txt").write_text("a previous run")
    quiet = Console(file=io.StringIO())
    if stop_in_hls:  # Ctrl-C: the previous output stays, the partial run is kept beside it
        with pytest.raises(DemoInterrupted) as info:
            run_demo(out, DemoSettings.fast(), force=True, console=quiet)
        where = info.value.where
        assert where != out and (out / "old.txt").is_file()
    else:
        run_demo(out, DemoSettings.fast(), force=True, console=quiet)
        where = out
    staging = seen["staging"]
    assert staging.startswith(".d.tmp-")
    files = _snapshot(where)
    assert {"demo.log", "train/fp.pt", "qat/model.pt", "qat/state.pt", "train/result.json"} <= set(files)
    assert [name for name, data in files.items() if staging.encode() in data] == []  # old code: the .pt, demo.log
    assert str(where / "export" / "x.onnx") in files["demo.log"].decode()
    for name in ("train/fp.pt", "qat/model.pt", "qat/state.pt"):
        saved = torch.load(where / name, weights_only=True)
        assert not [s for s in _strings(saved) if staging in s]
    # what a later command reads from them: the FP checkpoint of the QAT run, its output folder, the weights
    model, meta = load_checkpoint(where / "qat" / "model.pt")
    assert meta["config"] == {"output_dir": str(where / "qat"), "fp_checkpoint": str(where / "train" / "fp.pt")}
    assert meta["paths"] == (str(where / "qat"), 1)  # a tuple stays a tuple
    fp_model, fp_meta = load_checkpoint(meta["config"]["fp_checkpoint"])
    assert fp_meta["config"]["output_dir"] == str(where / "train")
    for a, b in zip(fp_model.state_dict().values(), seen["weights"].state_dict().values(), strict=True):
        assert torch.equal(a, b)
    state = torch.load(where / "qat" / "state.pt", weights_only=True)
    assert state["config"]["fp_checkpoint"] == str(where / "train" / "fp.pt") and state["epoch"] == 1
    assert torch.equal(state["model"]["w"], torch.tensor([0.0, 1.0, 2.0]))
    assert json.loads(files["train/result.json"]) == {"fp_checkpoint": str(where / "train" / "fp.pt")}
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging folder left
