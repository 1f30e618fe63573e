"""A user's own image folder: EXIF orientation, crop or stretch to ``img_size``, the same tensors in training,
resume and export, and ``--resume`` that compares the data folder by its absolute path."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from edgeattn.export.api import _calibration_batches, _own_data, _parity_inputs
from edgeattn.quant import train as T
from PIL import Image

from edgeattn.cli import main as cli_main
from edgeattn.data import checkpoint_samples, image_folder
from edgeattn.errors import EdgeAttnError

TINY = {"depth": 1, "embed_dim": 32, "num_heads": 2, "patch_size": 4}
ORIENTATION = 0x0112  # the EXIF tag


def _upright(stored: np.ndarray, orientation: int) -> np.ndarray:
    """The displayed (H, W, C) image for an EXIF orientation, from the spec's definitions of where the stored
    row 0 and column 0 go (1: top/left, 2: top/right, 3: bottom/right, 4: bottom/left, 5: left/top, 6: right/top,
    7: right/bottom, 8: left/bottom)."""
    return {
        1: lambda a: a,
        2: lambda a: a[:, ::-1],
        3: lambda a: a[::-1, ::-1],
        4: lambda a: a[::-1],
        5: lambda a: a.transpose(1, 0, 2),
        6: lambda a: np.rot90(a, -1),
        7: lambda a: a[::-1, ::-1].transpose(1, 0, 2),
        8: lambda a: np.rot90(a, 1),
    }[orientation](stored)


def _save(path: Path, pixels: np.ndarray, orientation: int | None = None, **kw) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    exif = Image.Exif()
    if orientation is not None:
        exif[ORIENTATION] = orientation
    Image.fromarray(pixels).save(path, exif=exif, **kw)


def _model(arr: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 -> the model's (3, H, W) input in [-1, 1]."""
    return torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32) / 255 * 2 - 1).permute(2, 0, 1)


def _read_all(root: Path, img_size: int, **kw) -> torch.Tensor:
    return image_folder(root, img_size=img_size, in_chans=3, split="all", **kw)[0].tensors[0]


# ---------------------------------------------------------------------------------------------- EXIF orientation
def test_png_exif_orientation_gives_the_upright_image_then_its_centre(tmp_path):
    stored = np.random.default_rng(0).integers(0, 256, (4, 10, 3), dtype=np.uint8)  # 10 wide, 4 high
    for o in range(1, 9):
        _save(tmp_path / "a" / f"{o}.png", stored, o)
    assert Image.open(tmp_path / "a" / "6.png").getexif()[ORIENTATION] == 6  # the tag really is in the file
    x = _read_all(tmp_path, img_size=4)  # files in sorted order: 1.png .. 8.png
    for o in range(1, 9):
        up = _upright(stored, o)  # 4 x 10 for 1-4, 10 x 4 for 5-8 (turned on its side)
        h, w = up.shape[:2]
        want = up[(h - 4) // 2 : (h + 4) // 2, (w - 4) // 2 : (w + 4) // 2]  # the 4 x 4 centre, no resampling
        torch.testing.assert_close(x[o - 1], _model(want), atol=1e-6, rtol=0, msg=f"orientation {o}")


# where the red quadrant of a stored image whose top-left quarter is red ends up, by EXIF orientation
RED_CORNER = {1: (0, 0), 2: (0, 1), 3: (1, 1), 4: (1, 0), 5: (0, 0), 6: (0, 1), 7: (1, 1), 8: (1, 0)}


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_jpeg_exif_orientation_puts_the_red_corner_where_the_tag_says(tmp_path, orientation):
    stored = np.zeros((16, 16, 3), np.uint8)
    stored[..., 2] = 255
    stored[:8, :8] = (255, 0, 0)
    _save(tmp_path / "a" / "0.jpg", stored, orientation, quality=95)
    x = _read_all(tmp_path, img_size=16)[0]
    red = x[0] - x[2]  # about +2 in the red quadrant, -2 in the blue ones
    quads = {(r, c): float(red[r * 8 + 2 : r * 8 + 6, c * 8 + 2 : c * 8 + 6].mean()) for r in (0, 1) for c in (0, 1)}
    assert quads[RED_CORNER[orientation]] > 1.8, quads
    assert all(v < -1.8 for q, v in quads.items() if q != RED_CORNER[orientation]), quads
    # and exactly the decoded pixels turned by numpy (the same decoder, no resampling at 16 -> 16)
    decoded = np.asarray(Image.open(tmp_path / "a" / "0.jpg").convert("RGB"))
    torch.testing.assert_close(x, _model(_upright(decoded, orientation)), atol=1e-6, rtol=0)


# ---------------------------------------------------------------------------------------------- crop / stretch
def _bands(width_per_band: int, height: int, colours: list[tuple[int, int, int]]) -> np.ndarray:
    """Vertical bands of constant colour, left to right."""
    return np.concatenate([np.full((height, width_per_band, 3), c, np.uint8) for c in colours], axis=1)


def test_a_3_to_1_image_is_centre_cropped_by_default_and_stretched_on_request(tmp_path):
    wide = _bands(16, 16, [(255, 0, 0), (0, 255, 0), (0, 0, 255)])  # 48 x 16: red | green | blue
    _save(tmp_path / "a" / "0.png", wide)
    _save(tmp_path / "a" / "1.png", np.ascontiguousarray(wide.transpose(1, 0, 2)))  # 16 x 48 portrait
    crop = _read_all(tmp_path, img_size=16)
    green = _model(np.full((16, 16, 3), (0, 255, 0), np.uint8))
    torch.testing.assert_close(crop, torch.stack([green, green]), atol=1e-6, rtol=0)  # old code: all three bands
    stretch = _read_all(tmp_path, img_size=16, resize="stretch")
    squeezed = np.asarray(Image.fromarray(wide).resize((16, 16), Image.BILINEAR))  # PIL itself, whole image
    torch.testing.assert_close(stretch[0], _model(squeezed), atol=1e-6, rtol=0)
    assert float(stretch[0][0, :, 0].min()) == 1.0 and float(stretch[0][2, :, -1].min()) == 1.0  # red | .. | blue


def test_crop_that_downscales_is_resize_shorter_side_then_centre_crop(tmp_path):
    rng = np.random.default_rng(1)
    wide = rng.integers(0, 256, (32, 96, 3), dtype=np.uint8)
    tall = rng.integers(0, 256, (90, 30, 3), dtype=np.uint8)
    _save(tmp_path / "a" / "0.png", wide)
    _save(tmp_path / "a" / "1.png", tall)
    x = _read_all(tmp_path, img_size=16)
    # shorter side to 16 with PIL's bilinear resize, then the centre 16 pixels of the longer side (torchvision's
    # Resize(16) + CenterCrop(16) on a PIL image)
    w_ref = np.asarray(Image.fromarray(wide).resize((48, 16), Image.BILINEAR))[:, 16:32]
    t_ref = np.asarray(Image.fromarray(tall).resize((16, 48), Image.BILINEAR))[16:32]
    torch.testing.assert_close(x[0], _model(w_ref), atol=1e-6, rtol=0)
    torch.testing.assert_close(x[1], _model(t_ref), atol=1e-6, rtol=0)


def test_resize_setting_is_validated_in_one_line(tmp_path, capsys):
    assert T.TrainConfig().resize == "crop" and T.build_config(resize="stretch").resize == "stretch"
    with pytest.raises(EdgeAttnError, match=r"^--resize: 'resize': input should be 'crop' or 'stretch', got 'fit'$"):
        T.build_config(resize="fit")
    (tmp_path / "run.yaml").write_text("resize: Crop\n")
    with pytest.raises(EdgeAttnError, match=r"^config file '.*run.yaml': 'resize': input should be 'crop' or"):
        T.build_config(config_file=str(tmp_path / "run.yaml"))
    out = tmp_path / "out"
    assert cli_main(["qat", "--resize", "squash", "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: --resize: 'resize': input should be 'crop' or 'stretch', got 'squash'" and not out.exists()
    with pytest.raises(ValueError, match="resize must be 'crop' or 'stretch'"):
        image_folder(tmp_path, img_size=8, resize="fit")


# ---------------------------------------------------------------------------------------------- runs
# class colours in the middle third of 3:1 images; the outer thirds are another colour that only a stretch sees
CLASS_COLOURS = {"cat": (200, 40, 40), "dog": (40, 40, 200)}


def _band_folder(root: Path, n: int = 5) -> Path:
    for cname, colour in CLASS_COLOURS.items():
        for i in range(n):
            edge = (10 * i, 250, 10 * i)
            _save(root / cname / f"{i}.png", _bands(8, 8, [edge, colour, edge]))
    return root


def _cfg(out: Path, data: str, **kw) -> dict:
    return {"model": "vit_tiny", "model_kwargs": TINY, "data": data, "img_size": 8, "in_chans": 3, "fp_epochs": 1,
            "epochs": 1, "batch_size": 8, "calib_samples": 8, "output_dir": str(out), "num_threads": 1, **kw}


@pytest.fixture(scope="module")
def crop_run(tmp_path_factory) -> tuple[Path, Path]:
    """(the data folder, a finished tiny run on it started with a relative data path and the default crop)."""
    base = tmp_path_factory.mktemp("own")
    root = _band_folder(base / "start" / "imgs")
    cwd = Path.cwd()
    try:
        os.chdir(base / "start")
        T.run(_cfg(base / "start" / "run", "./imgs"), progress=False)
    finally:
        os.chdir(cwd)
    return root, base / "start" / "run"


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def test_export_of_a_crop_checkpoint_sees_the_training_tensors(crop_run, tmp_path, monkeypatch):
    root, run = crop_run
    monkeypatch.chdir(tmp_path)  # export runs from anywhere: the checkpoint records the absolute folder
    train, val, _ = T.load_data(T.TrainConfig(**_cfg(tmp_path / "x", str(root))))
    # what training saw: the class colour alone (the centre third), nothing of the green edges
    for ds in (train, val):
        colours = {tuple(round((float(v) + 1) / 2 * 255) for v in img[:, 4, 4]) for img in ds.tensors[0]}
        assert colours == set(CLASS_COLOURS.values())
        assert all(float(img.std(dim=(1, 2)).max()) < 1e-6 for img in ds.tensors[0])  # constant: no edge mixed in
    meta = torch.load(run / "model.pt", weights_only=True)["meta"]
    fp_meta = torch.load(run / "fp.pt", weights_only=True)["meta"]
    assert meta["resize"] == "crop" and fp_meta["resize"] == "crop" and meta["data_path"] == str(root)
    shape = (1, 3, 8, 8)
    assert torch.equal(checkpoint_samples(meta, "val"), val.tensors[0])
    assert torch.equal(_own_data(meta, shape, "val"), val.tensors[0])
    assert torch.equal(_calibration_batches(shape, None, 0, None, fp_meta)[0], train.tensors[0])
    x, counts = _parity_inputs(shape, 4, meta, 0, None)
    assert counts == {"random": 2, "real": 2} and np.array_equal(x[:2], val.tensors[0][:2].numpy())
    # a checkpoint from before resize was recorded was trained on stretched images: it gets those again
    old = {k: v for k, v in meta.items() if k != "resize"}
    stretched = image_folder(root, 8, 3, "val", 0, resize="stretch")[0].tensors[0]
    assert not torch.equal(stretched, val.tensors[0])
    assert torch.equal(checkpoint_samples(old, "val"), stretched)
    assert torch.equal(_own_data(old, shape, "val"), stretched)
    with pytest.raises(EdgeAttnError, match="checkpoint meta 'resize': expected 'crop' or 'stretch', got 'fit'"):
        checkpoint_samples({**meta, "resize": "fit"})
    # an FP checkpoint trained on cropped images does not start a stretch run (nothing written)
    out = tmp_path / "r2"
    with pytest.raises(EdgeAttnError, match="trained on images brought to img_size by resize='crop', this run has"):
        T.run(_cfg(out, str(root), resize="stretch", fp_checkpoint=str(run / "fp.pt")), progress=False)
    assert not out.exists()


def test_resume_compares_the_data_folder_by_its_absolute_path(crop_run, tmp_path, monkeypatch, capsys):
    root, run = crop_run
    out = tmp_path / "r"
    shutil.copytree(run, out)
    elsewhere = tmp_path / "elsewhere"
    _band_folder(elsewhere / "imgs", n=6)  # same relative name, same classes: another folder
    monkeypatch.chdir(elsewhere)
    before = _snapshot(out)
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(_cfg(out, "./imgs")))  # the run's settings, as typed
    assert cli_main(["qat", "-c", str(tmp_path / "run.yaml"), "--resume", "--no-progress"]) == 2  # old: accepted
    err = capsys.readouterr().err.strip()
    assert err == (
        f"error: --resume: the run in '{out}' was made with data='{root}', not '{elsewhere / 'imgs'}'; resume it "
        "with the same settings, or start a new run (--force or another --output)"
    )
    assert _snapshot(out) == before
    other = re.escape(str(elsewhere / "imgs"))
    # the same folder from another working directory: absolute, or relative from here (old code: refused)
    assert T.run(_cfg(out, str(root)), resume=True, progress=False)["status"] == "done"
    relative = os.path.relpath(root, elsewhere)  # ../../own0/start/imgs
    assert T.run(_cfg(out, relative), resume=True, progress=False)["status"] == "done"
    # stopped before QAT's first epoch: fp.pt alone records the settings and the path
    (out / "state.pt").unlink()
    with pytest.raises(EdgeAttnError, match=rf"made with data='{re.escape(str(root))}', not '{other}'"):
        T.run(_cfg(out, "imgs"), resume=True, progress=False)
    assert T.run(_cfg(out, str(root)), resume=True, progress=False)["status"] == "done"


def test_resume_of_a_run_from_before_resize_existed_keeps_stretch(crop_run, tmp_path):
    root, run = crop_run
    out = tmp_path / "r"
    shutil.copytree(run, out)
    # as an older edgeattn wrote them: no resize (its images were stretched), and state.pt without data_path
    # (qat_last.pt of the same epoch records it)
    state = torch.load(out / "state.pt", weights_only=True)
    del state["config"]["resize"], state["data_path"]
    torch.save(state, out / "state.pt")
    fp = torch.load(out / "fp.pt", weights_only=True)
    del fp["meta"]["resize"], fp["meta"]["config"]["resize"]
    torch.save(fp, out / "fp.pt")
    before = _snapshot(out)
    with pytest.raises(EdgeAttnError, match=r"^--resume: the run in .* was made with resize='stretch', not 'crop'"):
        T.run(_cfg(out, str(root)), resume=True, progress=False)
    assert _snapshot(out) == before
    assert T.run(_cfg(out, str(root), resize="stretch"), resume=True, progress=False)["status"] == "done"
    (out / "state.pt").unlink()  # the same from fp.pt alone, whose FP model was trained on stretched images
    with pytest.raises(EdgeAttnError, match=r"made with resize='stretch', not 'crop'"):
        T.run(_cfg(out, str(root)), resume=True, progress=False)
    result = T.run(_cfg(out, str(root), resize="stretch"), resume=True, progress=False)
    assert result["status"] == "done" and result["resize"] == "stretch"
    # resize means nothing to digits: a digits run's record without it refuses nothing
    saved = T.TrainConfig(data="digits").model_dump(mode="json")
    del saved["resize"]
    T._check_resume_config(saved, T.TrainConfig(data="digits"), tmp_path / "state.pt")
