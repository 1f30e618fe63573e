"""`edgeattn qat` on a user's own data: image folders (modes, junk, splits, class names) and text files."""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from edgeattn.quant import train as T
from PIL import Image

from edgeattn.cli import main as cli_main
from edgeattn.data import checkpoint_samples, image_folder, image_folder_splits, text_file
from edgeattn.errors import EdgeAttnError

TINY = {"depth": 1, "embed_dim": 32, "num_heads": 2, "patch_size": 4}


def _model_value(v: float) -> float:
    """A [0, 1] pixel value as the model sees it: normalised to [-1, 1]."""
    return v * 2.0 - 1.0


def _save_constant(path: Path, value: int, size: tuple[int, int] = (6, 6)) -> None:
    """A constant-grey RGB PNG/JPEG (``value`` 0..255) of ``size`` (width, height)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size[1], size[0], 3), value, dtype=np.uint8)).save(path)


def _folder(root: Path, counts: dict[str, int]) -> Path:
    """``counts[c]`` constant PNGs per class; image i of class number k has grey level 40 * k + i."""
    for k, (cname, n) in enumerate(counts.items()):
        for i in range(n):
            _save_constant(root / cname / f"{i}.png", 40 * k + i)
    return root


def _cli_fails(argv: list[str], capsys) -> str:
    """Run ``edgeattn qat`` and return its one error line (asserting exit 2 and a single line)."""
    assert cli_main(["qat", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def test_hidden_entries_are_ignored_and_other_non_images_counted_in_one_warning(tmp_path, capsys):
    root = _folder(tmp_path / "d", {"a": 3, "b": 3})
    (root / "a" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (root / "a" / "._0.png").write_bytes(b"\0\5\26\7 AppleDouble, not a PNG")  # macOS resource fork
    (root / "b" / "notes.txt").write_text("not an image")
    (root / "b" / "more").mkdir()
    _save_constant(root / "b" / "more" / "x.png", 7)
    (root / ".ipynb_checkpoints").mkdir()
    (root / "__MACOSX" / "a").mkdir(parents=True)
    ds, classes = image_folder(root, img_size=4, in_chans=1, split="all")
    assert classes == ["a", "b"]
    assert sorted(ds.tensors[1].tolist()) == [0, 0, 0, 1, 1, 1]  # nothing from the sub-folder or the junk
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("warning:")
    assert "skipped 1 file(s) that are not images (.txt)" in err[0] and "1 folder(s)" in err[0]


@pytest.mark.parametrize(
    ("mode", "suffix", "expected_rgb"),
    [
        ("L", "png", (90, 90, 90)),  # grey repeated over RGB
        ("RGBA", "png", (10, 20, 30)),  # alpha dropped, the colour kept
        ("P", "png", (200, 50, 0)),  # palette index 1 -> its palette colour
        ("RGB", "bmp", (1, 128, 254)),
    ],
)
def test_image_modes_give_the_pixel_values_pil_stores(tmp_path, mode, suffix, expected_rgb):
    for cname in ("x", "y"):
        (tmp_path / cname).mkdir()
        for i in range(2):
            if mode == "L":
                im = Image.new("L", (5, 7), 90)
            elif mode == "RGBA":
                im = Image.new("RGBA", (5, 7), (10, 20, 30, 0))
            elif mode == "P":
                im = Image.new("P", (5, 7), 1)
                im.putpalette([0, 0, 0, 200, 50, 0] + [0] * 762)
            else:
                im = Image.new("RGB", (5, 7), expected_rgb)
            im.save(tmp_path / cname / f"{i}.{suffix}")
    ds, _ = image_folder(tmp_path, img_size=4, in_chans=3, split="all")
    x = ds.tensors[0]
    assert x.shape == (4, 3, 4, 4)
    want = torch.tensor([_model_value(v / 255) for v in expected_rgb]).view(1, 3, 1, 1).expand_as(x)
    torch.testing.assert_close(x, want, atol=1e-6, rtol=0)


def test_16_bit_png_keeps_its_range_instead_of_clipping_to_8_bits(tmp_path):
    levels = np.arange(16, dtype=np.uint16).reshape(4, 4) * 4000  # up to 60000 of 65535
    for cname in ("a", "b"):
        (tmp_path / cname).mkdir()
        Image.fromarray(levels).save(tmp_path / cname / "0.png")
    assert Image.open(tmp_path / "a" / "0.png").mode.startswith("I")
    ds, _ = image_folder(tmp_path, img_size=4, in_chans=1, split="all")
    want = torch.from_numpy(levels.astype(np.float32) / 65535 * 2 - 1)
    torch.testing.assert_close(ds.tensors[0][0, 0], want, atol=1e-6, rtol=0)  # old code: -1 then +1 everywhere


def _png_header_only(path: Path, width: int, height: int) -> None:
    """A PNG whose header claims ``width`` x ``height`` grey pixels (Pillow refuses it as a decompression bomb)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    body = chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + body)


def test_unreadable_images_and_unsplittable_folders_are_one_clear_error(tmp_path):
    good = _folder(tmp_path / "good", {"a": 2, "b": 2})
    with pytest.raises(EdgeAttnError, match="found 1 class \\('only'\\); a classifier needs at least 2"):
        image_folder(_folder(tmp_path / "one", {"only": 4}), img_size=4, split="train")
    with pytest.raises(EdgeAttnError, match="class 'c' has 0 image"):
        (good / "c").mkdir()
        image_folder(good, img_size=4, split="val")
    trunc = _folder(tmp_path / "trunc", {"a": 2, "b": 2})
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(trunc / "a" / "t.jpg")
    data = (trunc / "a" / "t.jpg").read_bytes()
    (trunc / "a" / "t.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(EdgeAttnError, match="t.jpg': not a readable image \\("):
        image_folder(trunc, img_size=4)
    bomb = _folder(tmp_path / "bomb", {"a": 2, "b": 2})
    _png_header_only(bomb / "b" / "huge.png", 40000, 40000)  # 1.6e9 pixels; was a traceback (not an OSError)
    with pytest.raises(EdgeAttnError, match="huge.png': not a readable image \\(Image size \\(1600000000 pixels"):
        image_folder(bomb, img_size=4)


def test_folder_read_once_gives_the_stratified_split_by_hand(tmp_path):
    root = _folder(tmp_path, {"a": 10, "b": 5, "c": 3})
    train, val, classes = image_folder_splits(root, img_size=4, in_chans=1, seed=3)
    assert classes == ["a", "b", "c"]
    # 20% of each class, rounded, at least one: a 2 of 10, b 1 of 5, c round(0.6) = 1 of 3
    assert np.bincount(val.tensors[1].numpy()).tolist() == [2, 1, 1]
    assert np.bincount(train.tensors[1].numpy()).tolist() == [8, 4, 2]
    grey = lambda ds: sorted(round((float(v) + 1) / 2 * 255) for v in ds.tensors[0][:, 0, 0, 0])  # noqa: E731
    everything = [40 * k + i for k, n in enumerate((10, 5, 3)) for i in range(n)]
    assert sorted(grey(train) + grey(val)) == everything  # disjoint and complete
    for split, ds in (("train", train), ("val", val)):  # identical to the one-split reader, same seed
        ref, _ = image_folder(root, img_size=4, in_chans=1, split=split, seed=3)
        assert torch.equal(ds.tensors[0], ref.tensors[0]) and torch.equal(ds.tensors[1], ref.tensors[1])
    assert grey(image_folder_splits(root, 4, 1, seed=4)[1]) != grey(val)  # another seed, other val images


def test_text_file_is_byte_level_and_says_how_many_bytes_it_needs(tmp_path):
    f = tmp_path / "latin1.txt"
    raw = "café über".encode("latin-1") * 40  # 360 bytes, not valid UTF-8
    f.write_bytes(raw)
    train, val = text_file(f, seq_len=8, split="train"), text_file(f, seq_len=8, split="val")
    n_windows = (len(raw) - 1) // 8  # 44
    assert (len(train), len(val)) == (n_windows - 4, 4)  # round(44 * 0.1) = 4 tail windows for validation
    assert train.tensors[0][0].tolist() == list(raw[:8]) and train.tensors[1][0].tolist() == list(raw[1:9])
    assert int(train.tensors[0].max()) == 0xFC  # 'ü' in latin-1: one byte id below 256
    cfg = T.TrainConfig.parse({"model": "tiny_llama", "data": str(f), "seq_len": 8})
    assert T.load_data(cfg)[2]["vocab_size"] == 256
    (tmp_path / "ok.txt").write_bytes(b"x" * 17)
    assert len(text_file(tmp_path / "ok.txt", seq_len=8, split="all")) == 2
    (tmp_path / "short.txt").write_bytes(b"x" * 16)
    with pytest.raises(EdgeAttnError, match="16 bytes, needs at least 17"):
        text_file(tmp_path / "short.txt", seq_len=8)


def _run_cfg(tmp_path: Path, data: Path, out: Path, **kw) -> str:
    cfg = {"model": "vit_tiny", "model_kwargs": TINY, "data": str(data), "img_size": 8, "in_chans": 3,
           "fp_epochs": 1, "epochs": 1, "batch_size": 8, "calib_samples": 8, "output_dir": str(out),
           "num_threads": 1, **kw}
    path = tmp_path / f"{out.name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def test_cli_run_on_a_folder_records_classes_path_and_split(tmp_path, monkeypatch, capsys):
    root = _folder(tmp_path / "pets", {"cat": 5, "dog": 5})
    out = tmp_path / "run"
    monkeypatch.chdir(tmp_path)  # a relative --data, as a user types it
    assert cli_main(["qat", "-c", _run_cfg(tmp_path, Path("pets"), out), "--no-progress"]) == 0
    result = json.loads((out / "result.json").read_text())
    assert (result["classes"], result["train_samples"], result["val_samples"]) == (["cat", "dog"], 8, 2)
    assert result["data_path"] == str(root.resolve()) and result["split"] == {"seed": 0, "img_size": 8, "in_chans": 3}
    for name in ("fp.pt", "ptq.pt", "model.pt"):
        meta = torch.load(out / name, weights_only=False)["meta"]
        assert meta["classes"] == ["cat", "dog"] and meta["data_path"] == str(root.resolve())
    # what export would use for parity: this folder's validation images, prepared as in training
    monkeypatch.chdir("/")
    samples = checkpoint_samples(torch.load(out / "model.pt", weights_only=False)["meta"])
    expected_grey = sorted(round((float(v) + 1) / 2 * 255) for v in samples[:, 0, 0, 0])
    assert len(samples) == 2 and set(expected_grey) <= {0, 1, 2, 3, 4, 40, 41, 42, 43, 44}
    ref, _ = image_folder(root, img_size=8, in_chans=3, split="val", seed=0)
    assert torch.equal(samples, ref.tensors[0])
    # export checks the artifact on those images (not digits, not noise alone) and calibrates PTQ on this
    # folder's training images
    from edgeattn.export.api import _calibration_batches

    fp_meta = torch.load(out / "fp.pt", weights_only=False)["meta"]
    train_ref, _ = image_folder(root, img_size=8, in_chans=3, split="train", seed=0)
    assert torch.equal(_calibration_batches((1, 3, 8, 8), None, 0, None, fp_meta)[0], train_ref.tensors[0])
    monkeypatch.chdir(tmp_path)
    for name in ("model.pt", "fp.pt"):
        exp = tmp_path / f"exp_{name}"
        argv = ["export", str(out / name), "-t", "onnx", "-p", "host-cpu", "-o", str(exp), "--n-inputs", "8"]
        assert cli_main(argv) == 0
        report = json.loads((exp / "report.json").read_text())
        assert report["parity_inputs"] == {"random": 6, "real": 2} and report["passed"]

    # the same folder with a class renamed: same count, same path, other labels -> refused, nothing written
    (root / "dog").rename(root / "emu")
    out2 = tmp_path / "run2"
    err = _cli_fails(["-c", _run_cfg(tmp_path, root, out2, fp_checkpoint=str(out / "fp.pt"))], capsys)
    assert "label 1 is 'dog' there and 'emu' in this data" in err
    assert not out2.exists()


def test_cli_bad_data_is_one_line_exit_2_and_keeps_the_earlier_run(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "model.pt").write_bytes(b"earlier run")
    one = _folder(tmp_path / "one", {"only": 4})
    trunc = _folder(tmp_path / "trunc", {"a": 2, "b": 2})
    (trunc / "a" / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    (tmp_path / "empty.txt").write_bytes(b"")
    cases = [
        (["-m", "vit_tiny", "--data", str(tmp_path / "missing")], "does not exist"),
        (["-m", "vit_tiny", "--data", str(one)], "a classifier needs at least 2 class sub-folders"),
        (["-m", "vit_tiny", "--data", str(trunc)], "bad.png': not a readable image"),
        (["-m", "tiny_llama", "--data", str(tmp_path / "empty.txt")], "is empty"),
        (["-m", "tiny_llama", "--data", str(trunc)], "is a language model and data"),
    ]
    for argv, message in cases:
        assert message in _cli_fails([*argv, "-o", str(out), "--force"], capsys)
        assert sorted(p.name for p in out.iterdir()) == ["model.pt"]
        assert (out / "model.pt").read_bytes() == b"earlier run"
