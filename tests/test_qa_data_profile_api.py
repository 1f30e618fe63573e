"""edgeattn.data and edgeattn.device_profile from Python (QA sweep of the API): sizes and counts that were taken
silently (a negative max_bytes cut bytes off the end, in_chans=0 gave an empty channel axis), a bad img_size blamed
on the image, the skipped-entries warning's counts, random_shift's edge cases, and load_profile's arguments."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from edgeattn import data as D
from edgeattn.device_profile import load_profile, names_a_file
from edgeattn.errors import ProfileError


@pytest.fixture
def folder(tmp_path) -> Path:
    root = tmp_path / "imgs"
    rng = np.random.default_rng(0)
    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)).save(root / cls / f"{i}.png")
    return root


@pytest.mark.parametrize("bad", [-100, 0, 1.5, True])
def test_max_bytes_must_be_a_positive_integer(tmp_path, bad):
    text = tmp_path / "t.txt"
    text.write_bytes(bytes(range(256)) * 2)
    with pytest.raises(ValueError, match="max_bytes must be a positive integer"):
        D.text_file(text, 16, "all", max_bytes=bad)
    with pytest.raises(ValueError, match="max_bytes must be a positive integer"):
        D.stdlib_sources(bad)
    # a positive cap reads exactly that many bytes: (100 - 1) // 16 = 6 windows of the first 100
    x, y = D.text_file(text, 16, "all", max_bytes=100).tensors
    assert x.shape == (6, 16) and torch.equal(x[1], torch.arange(16, 32)) and torch.equal(y[1], torch.arange(17, 33))


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"in_chans": 0}, "in_chans must be a positive integer, got 0"),
    ({"in_chans": -1}, "in_chans must be a positive integer, got -1"),
    ({"img_size": 0}, "img_size must be a positive integer, got 0"),
    ({"img_size": 8.0}, "img_size must be a positive integer, got 8.0"),
    ({"seed": -1}, r"seed must be an integer in 0\.\.4294967295, got -1"),
])
def test_image_folder_checks_its_sizes_before_reading(folder, kwargs, match):
    """in_chans=0 returned (N, 0, H, W), -1 one channel; img_size=0 was reported as 'not a readable image'."""
    with pytest.raises(ValueError, match=match):
        D.image_folder(folder, **kwargs)
    with pytest.raises(ValueError, match=match):
        D.image_folder_splits(folder, **kwargs)


def test_the_skipped_entries_warning_counts_files_and_folders(folder, capsys):
    """'extra' folders in two classes and one text file: it said 2 files and 1 folder."""
    for cls in ("a", "b"):
        (folder / cls / "extra").mkdir()
    (folder / "a" / "notes.txt").write_text("x")
    D.image_folder(folder, 8, split="all")
    err = capsys.readouterr().err
    assert "skipped 1 file(s) that are not images (.txt) and 2 folder(s) inside class folders (extra)" in err


def test_random_shift_takes_an_empty_batch_and_names_a_wrong_rank():
    g = torch.Generator().manual_seed(0)
    empty = torch.zeros(0, 3, 8, 8)
    assert D.random_shift(empty, 2, g) is empty
    with pytest.raises(ValueError, match=r"images must be a batch \(N, C, H, W\), got shape \[3, 8, 8\]"):
        D.random_shift(torch.zeros(3, 8, 8), 2, g)
    # a shift moves the pixels: image 0 compared with its own window of the padded input
    img = torch.arange(64.0).reshape(1, 1, 8, 8)
    g = torch.Generator().manual_seed(1)
    out = D.random_shift(img, 1, g)
    dy, dx = torch.randint(0, 3, (1, 2), generator=torch.Generator().manual_seed(1))[0].tolist()
    padded = torch.nn.functional.pad(img, (1, 1, 1, 1), mode="replicate")
    assert torch.equal(out[0], padded[0, :, dy : dy + 8, dx : dx + 8])


def test_load_profile_names_a_wrong_argument_and_a_path_is_a_path(tmp_path, monkeypatch):
    with pytest.raises(ProfileError, match="got dict; for a mapping of profile fields use profile_from_mapping"):
        load_profile({"name": "x"})
    with pytest.raises(ProfileError, match="unknown profile"):  # OSError 'File name too long' before
        load_profile("x" * 300)
    # Path('./host-cpu') is Path('host-cpu'): a Path is always a file, never the shipped profile of that name
    monkeypatch.chdir(tmp_path)
    assert names_a_file(Path("./host-cpu")) and not names_a_file("host-cpu")
    with pytest.raises(ProfileError, match="host-cpu: profile file not found"):
        load_profile(Path("./host-cpu"))
    assert load_profile("host-cpu").name == "host-cpu"
