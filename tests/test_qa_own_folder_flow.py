"""A user's own photo folder through the whole chain: qat -> export -> hls.

The folder mixes what phones and editors write (EXIF-rotated JPEGs, CMYK JPEG, RGBA / palette-with-transparency /
LA / grayscale / 16-bit PNGs, an image smaller than ``img_size``, odd aspect ratios). Every expected tensor is
recomputed here from the files with PIL + numpy alone (no edgeattn function): decode, turn upright, centre crop
(or not, for stretch), bilinear resample, the stratified seeded split and order, [-1, 1]."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from edgeattn.export.api import export_model
from edgeattn.fpga_hls.vectors import vector_images
from edgeattn.quant import train as T
from PIL import Image

from edgeattn.cli import main as cli_main

TINY = {"depth": 1, "embed_dim": 32, "num_heads": 2, "patch_size": 4}
IMG = 8
CLASSES = ("cat", "dog", "fox")
ORIENTATION = 0x0112  # EXIF tag
# (kind, stored width, height): the shorter side scales to IMG by a factor that makes the longer one a whole number
# of pixels with a whole-pixel margin each side, so the reference can resize the whole image, then crop by slicing
KINDS = [
    ("exif6", 24, 16),  # upright 16 x 24
    ("rgba", 20, 16),
    ("i16", 24, 16),
    ("cmyk", 16, 24),
    ("palette", 12, 12),
    ("la", 28, 16),
    ("gray", 16, 20),
    ("small", 6, 4),  # smaller than img_size: upsampled
]
PER_CLASS = 6


def _write(path: Path, kind: str, rgb: np.ndarray) -> None:
    """Save ``rgb`` (H, W, 3) uint8 in the file form ``kind`` names."""
    im = Image.fromarray(rgb)
    if kind == "exif6":  # stored sideways, displayed rotated 90 degrees clockwise
        exif = Image.Exif()
        exif[ORIENTATION] = 6
        im.save(path, exif=exif, quality=95)
    elif kind == "rgba":
        alpha = (rgb[..., 0] // 2 + 64).astype(np.uint8)
        Image.fromarray(np.dstack([rgb, alpha]), "RGBA").save(path)
    elif kind == "i16":
        Image.fromarray(rgb[..., 1].astype(np.uint16) * 257 + 3).save(path)  # Pillow reads it as I;16
    elif kind == "cmyk":
        im.convert("CMYK").save(path, quality=95)
    elif kind == "palette":
        im.convert("P").save(path, transparency=0)
    elif kind == "la":
        im.convert("LA").save(path)
    elif kind == "gray":
        im.convert("L").save(path)
    else:
        im.save(path)


def _make_folder(root: Path) -> Path:
    rng = np.random.default_rng(7)
    for ci, cname in enumerate(CLASSES):
        (root / cname).mkdir(parents=True)
        for i in range(PER_CLASS):
            kind, w, h = KINDS[(ci * PER_CLASS + i) % len(KINDS)]
            rgb = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            rgb[..., ci] = rgb[..., ci] // 4 + 190  # a learnable class colour
            suffix = ".jpg" if kind in ("exif6", "cmyk") else ".png"
            _write(root / cname / f"{i:02d}_{kind}{suffix}", kind, rgb)
    return root


def _reference_image(path: Path, resize: str) -> np.ndarray:
    """(IMG, IMG, 3) float32 in [0, 1], from PIL decode + numpy geometry only."""
    with Image.open(path) as im:
        orientation = im.getexif().get(ORIENTATION, 1)
        assert orientation in (1, 6)
        # 16 bits: to [0, 1] floats before resampling, not through 8 bits
        arr = np.asarray(im).astype(np.float32) / 65535.0 if im.mode == "I;16" else np.asarray(im.convert("RGB"))
    if orientation == 6:
        arr = np.rot90(arr, -1)  # EXIF 6: stored row 0 is shown as the right column
    h, w = arr.shape[:2]
    # crop: the shorter side scaled to IMG, then the centre IMG x IMG (stretch: both sides to IMG)
    size = (w * IMG // min(h, w), h * IMG // min(h, w)) if resize == "crop" else (IMG, IMG)
    assert resize == "stretch" or (size[0] * min(h, w) == w * IMG and size[1] * min(h, w) == h * IMG)
    img = Image.fromarray(np.ascontiguousarray(arr)).resize(size, Image.BILINEAR)
    out = np.asarray(img, np.float32)
    top, left = (size[1] - IMG) // 2, (size[0] - IMG) // 2
    assert (size[1] - IMG) % 2 == 0 and (size[0] - IMG) % 2 == 0
    out = out[top : top + IMG, left : left + IMG]
    if out.ndim == 2:  # the 16-bit plane, resampled in float
        return np.repeat(out[:, :, None], 3, axis=2)
    return out / 255.0


def _reference_split(root: Path, resize: str, split: str, seed: int = 0) -> np.ndarray:
    """The model inputs (N, 3, IMG, IMG) of ``split``: 20% of each class (at least one) to val by a seeded
    shuffle, then the split in a seeded order of its own (stream [seed, 1])."""
    files = [f for c in CLASSES for f in sorted((root / c).iterdir())]
    labels = np.repeat(np.arange(len(CLASSES)), PER_CLASS)
    images = np.stack([_reference_image(f, resize) for f in files])
    rng = np.random.default_rng(seed)
    val, train = [], []
    for c in range(len(CLASSES)):
        idx = np.flatnonzero(labels == c)
        rng.shuffle(idx)
        n_val = max(1, round(len(idx) * 0.2))
        val.append(idx[:n_val])
        train.append(idx[n_val:])
    chosen = np.sort(np.concatenate(val if split == "val" else train))
    order = np.random.default_rng([seed, 1]).permutation(chosen)
    return ((images[order] - np.float32(0.5)) / np.float32(0.5)).transpose(0, 3, 1, 2)


def _train(out: Path, data: Path, resize: str, profile: str = "zcu102-hls") -> Path:
    cfg = {"model": "vit_tiny", "model_kwargs": TINY, "data": str(data), "img_size": IMG, "in_chans": 3,
           "profile": profile, "resize": resize, "fp_epochs": 1, "epochs": 1, "batch_size": 8,
           "calib_samples": 8, "output_dir": str(out), "num_threads": 1}
    T.run(cfg, progress=False)
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """The folder and tiny runs on it: zcu102-hls with resize crop (the default) and stretch, host-cpu (crop)."""
    base = tmp_path_factory.mktemp("own_flow")
    root = _make_folder(base / "photos")
    return {
        "root": root,
        "crop": _train(base / "crop", root, "crop"),
        "stretch": _train(base / "stretch", root, "stretch"),
        "host": _train(base / "host", root, "crop", "host-cpu"),
    }


def _meta(ckpt: Path) -> dict:
    return torch.load(ckpt, weights_only=True)["meta"]


def test_the_folder_holds_the_modes_a_user_has(runs):
    modes = set()
    for f in runs["root"].rglob("*.*"):
        with Image.open(f) as im:
            modes.add(im.mode)
    assert modes == {"RGB", "RGBA", "I;16", "CMYK", "P", "LA", "L"}


@pytest.mark.parametrize("resize", ["crop", "stretch"])
def test_training_and_hls_vectors_are_the_folders_own_images(runs, resize, tmp_path, monkeypatch, capsys):
    root, run = runs["root"], runs[resize]
    val = _reference_split(root, resize, "val")
    train, val_t, _ = T.load_data(T.TrainConfig(model="vit_tiny", data=str(root), img_size=IMG, resize=resize))
    assert np.array_equal(val_t.tensors[0].numpy(), val)
    assert np.array_equal(train.tensors[0].numpy(), _reference_split(root, resize, "train"))
    for name in ("model.pt", "fp.pt"):
        meta = _meta(run / name)
        assert meta["resize"] == resize and meta["data_path"] == str(root)

        class Net:  # vector_images reads the model's input size only
            input_size = (3, IMG, IMG)

        images, record = vector_images(Net(), 2, "data", meta)
        assert np.array_equal(images.numpy(), val[:2]) and record["data"] == str(root) and not record["fallback"]
    # the CLI from another working directory: the vectors' source recorded, the gate passed and sensible
    monkeypatch.chdir(tmp_path)
    assert cli_main(["hls", "vit_tiny", "--checkpoint", str(run / "model.pt"), "--vectors", "2", "-o", "prj"]) == 0
    project = json.loads((tmp_path / "prj" / "project.json").read_text())
    assert project["vectors_source"]["data"] == str(root) and project["vectors_source"]["split"] == "val"
    gate = project["gate"]
    assert gate["passed"] and 0 < gate["max_abs_rel_range"] < 0.1 and 0.99 < gate["cosine"] <= 1.0
    assert "validation images of the checkpoint's data" in capsys.readouterr().out


def test_export_says_which_data_it_used_and_when_the_folder_is_gone(runs, tmp_path, monkeypatch):
    root, run = runs["root"], runs["host"]
    monkeypatch.chdir(tmp_path)
    val = _reference_split(root, "crop", "val")
    # fp.pt to int8 ONNX: PTQ calibrates on the folder's training images, parity mixes in its validation images
    rep = _export(run / "fp.pt", tmp_path / "here")
    assert rep.parity_inputs == {"random": 3, "real": 3}
    assert f"parity: 3 of the inputs are validation images (resize crop) of the checkpoint's data '{root}'" in rep.notes
    assert f"PTQ calibrated on training images (resize crop) of the checkpoint's data '{root}'" in rep.notes
    x = _parity_x(run / "fp.pt")
    assert np.array_equal(x[:3], val[:3])
    # the folder renamed after training: the export still runs, and says in one note what stood in for it
    moved = root.with_name("photos_renamed")
    root.rename(moved)
    try:
        rep = _export(run / "fp.pt", tmp_path / "gone")
        ptq_note = [n for n in rep.notes if "not available here" in n]
        assert rep.parity_inputs == {"random": 6, "real": 0} and ptq_note == [
            f"the checkpoint's data '{root}' is not available here (moved or renamed since training?): parity ran "
            "on 6 random inputs and PTQ calibrated on digits images instead of its own samples"
        ]
        rep = _export(run / "model.pt", tmp_path / "gone_q")  # a QAT checkpoint: no PTQ
        assert [n for n in rep.notes if "not available here" in n] == [
            f"the checkpoint's data '{root}' is not available here (moved or renamed since training?): parity ran "
            "on 6 random inputs instead of its own samples"
        ]

        class Net:
            input_size = (3, IMG, IMG)

        _, record = vector_images(Net(), 2, "data", _meta(run / "model.pt"))  # hls: digits, and says why
        assert record["data"] == "digits" and record["fallback"] == (
            f"the checkpoint's data '{root}' is not available here (moved or renamed since training?)"
        )
    finally:
        moved.rename(root)


def _export(ckpt: Path, out: Path):
    return export_model(str(ckpt), "onnx", "host-cpu", out, n_inputs=6, threads=1)


def _parity_x(ckpt: Path) -> np.ndarray:
    from edgeattn.export.api import _parity_inputs

    return _parity_inputs((1, 3, IMG, IMG), 6, _meta(ckpt), 0, None)[0]


def test_a_corrupt_file_in_a_class_folder_is_one_line(runs, tmp_path, capsys):
    bad = tmp_path / "photos"
    shutil.copytree(runs["root"], bad)
    (bad / "dog" / "zz_broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    out = tmp_path / "run"
    assert cli_main(["qat", "--model", "vit_tiny", "--data", str(bad), "--img-size", str(IMG), "-o", str(out),
                     "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: data path '{bad / 'dog' / 'zz_broken.jpg'}': not a readable image")
    assert "\n" not in err and not out.exists()


def test_palette_transparency_as_bytes_reads_its_colours_without_a_warning(tmp_path, recwarn):
    """A palette PNG whose transparency is a byte string (several transparent entries, as editors write): the
    palette colours, with no Pillow UserWarning per image (old: 'Palette images with Transparency expressed in
    bytes should be converted to RGBA images' for every such file)."""
    from edgeattn.data import image_folder

    rng = np.random.default_rng(3)
    for c in ("a", "b"):
        for i in range(2):
            rgb = rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)
            (tmp_path / c).mkdir(exist_ok=True)
            alpha = bytes([0, 128] + [255] * 254)  # entries 0 and 1 (half) transparent
            Image.fromarray(rgb).convert("P").save(tmp_path / c / f"{i}.png", transparency=alpha)
    x = image_folder(tmp_path, img_size=IMG, split="all")[0].tensors[0].numpy()
    assert not [w for w in recwarn if issubclass(w.category, UserWarning)]
    for k, f in enumerate(sorted(tmp_path.glob("*/*.png"))):
        with Image.open(f) as im:
            assert isinstance(im.info["transparency"], bytes)
            palette = np.asarray(im.getpalette(), np.uint8).reshape(-1, 3)
            rgb = palette[np.asarray(im)]  # the palette colours, transparency ignored
        ref = np.asarray(Image.fromarray(rgb).resize((IMG, IMG), Image.BILINEAR), np.float32) / 255.0
        assert np.array_equal(x[k], (ref.transpose(2, 0, 1) - np.float32(0.5)) / np.float32(0.5))
