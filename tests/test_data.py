"""edgeattn.data: digits, the stdlib byte corpus, a user's image folder and text file."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edgeattn.data import digits_dataset, image_folder, random_shift, stdlib_corpus, text_file
from edgeattn.errors import EdgeAttnError


def test_digits_shapes_range_and_upsampling():
    from sklearn.datasets import load_digits

    train = digits_dataset(img_size=16, in_chans=3, split="train", seed=0)
    val = digits_dataset(img_size=16, in_chans=3, split="val", seed=0)
    x, y = train.tensors
    assert x.shape[1:] == (3, 16, 16) and x.dtype == torch.float32
    assert len(train) + len(val) == 1797
    assert float(x.min()) >= -1.0 and float(x.max()) <= 1.0
    # every class is in both splits, about 20% of each class in val
    counts = np.bincount(val.tensors[1].numpy(), minlength=10)
    total = np.bincount(load_digits().target, minlength=10)
    np.testing.assert_allclose(counts / total, 0.2, atol=0.02)
    # channels are copies; at img_size 8 the image is the original scaled to [-1, 1]
    torch.testing.assert_close(x[:, 0], x[:, 1])
    raw = digits_dataset(img_size=8, in_chans=1, split="all")
    np.testing.assert_allclose(raw.tensors[0][:, 0].numpy(), load_digits().images / 8.0 - 1.0, atol=1e-6)


def test_digits_split_is_deterministic_and_disjoint():
    a = digits_dataset(8, 1, "train", seed=3).tensors[0]
    b = digits_dataset(8, 1, "train", seed=3).tensors[0]
    torch.testing.assert_close(a, b)
    val = digits_dataset(8, 1, "val", seed=3).tensors[0]
    flat_train = {tuple(r) for r in a.reshape(len(a), -1).numpy().round(4).tolist()}
    overlap = sum(tuple(r) in flat_train for r in val.reshape(len(val), -1).numpy().round(4).tolist())
    assert overlap <= 2  # digits has a couple of duplicate images, nothing more


def test_stdlib_corpus_targets_are_next_bytes_and_splits_do_not_overlap():
    train = stdlib_corpus(seq_len=32, split="train", max_bytes=50_000)
    val = stdlib_corpus(seq_len=32, split="val", max_bytes=50_000)
    x, y = train.tensors
    assert x.shape[1] == 32 and int(x.max()) < 256
    torch.testing.assert_close(x[:, 1:], y[:, :-1])
    # windows are consecutive slices of one byte stream: window i's last target is window i+1's first input
    torch.testing.assert_close(y[:-1, -1], x[1:, 0])
    assert len(val) >= 1 and len(train) > 5 * len(val)
    allx = stdlib_corpus(seq_len=32, split="all", max_bytes=50_000).tensors[0]
    torch.testing.assert_close(allx[-len(val) :], val.tensors[0])


def test_text_file_and_errors(tmp_path):
    f = tmp_path / "t.txt"
    f.write_bytes(bytes(range(256)) * 4)
    ds = text_file(f, seq_len=16, split="all")
    assert ds.tensors[0][0].tolist() == list(range(16))
    with pytest.raises(EdgeAttnError, match="does not exist"):
        text_file(tmp_path / "missing.txt")
    short = tmp_path / "short.txt"
    short.write_bytes(b"abc")
    with pytest.raises(EdgeAttnError, match="too short"):
        text_file(short, seq_len=16)


def test_image_folder(tmp_path):
    from PIL import Image

    for ci, cname in enumerate(["cat", "dog"]):
        (tmp_path / cname).mkdir()
        for i in range(5):
            arr = np.full((10, 10, 3), 50 * ci + 10 * i, dtype=np.uint8)
            Image.fromarray(arr).save(tmp_path / cname / f"{i}.png")
    ds, classes = image_folder(tmp_path, img_size=8, in_chans=3, split="all")
    assert classes == ["cat", "dog"]
    x, y = ds.tensors
    assert x.shape == (10, 3, 8, 8) and sorted(y.tolist()) == [0] * 5 + [1] * 5
    # a constant image stays constant: value v/255 mapped to [-1, 1]
    first_dog = x[y == 1][0]
    assert float(first_dog.std()) < 1e-6
    assert float(first_dog.mean()) == pytest.approx(50 / 255 * 2 - 1, abs=1e-3)
    with pytest.raises(EdgeAttnError, match="does not exist"):
        image_folder(tmp_path / "nope")


def _folder(root, n_per_class: dict[str, int]):
    """Tiny constant-colour PNGs, ``n`` per class; image i of class c has grey level 20 * c + i (distinct)."""
    from PIL import Image

    for ci, (cname, n) in enumerate(n_per_class.items()):
        (root / cname).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(np.full((4, 4, 3), 20 * ci + i, dtype=np.uint8)).save(root / cname / f"{i}.png")
    return root


def test_image_folder_splits_are_shuffled_but_hold_the_same_images(tmp_path):
    """Images are read class by class; the train and val splits come in a seeded order so that a sample cap or the
    first calibration samples see every class, while which images are train and which val is unchanged."""
    from edgeattn.data import _split_indices

    root = _folder(tmp_path, {"a": 10, "b": 10, "c": 10})
    everything, _ = image_folder(root, img_size=4, in_chans=1, split="all")
    for split in ("train", "val"):
        ds, _ = image_folder(root, img_size=4, in_chans=1, split=split, seed=5)
        y = ds.tensors[1]
        expected = everything.tensors[0][_split_indices(everything.tensors[1].numpy(), split, 5)]
        # the same images as the stratified split always chose, in another order
        assert sorted(ds.tensors[0].flatten(1)[:, 0].tolist()) == sorted(expected.flatten(1)[:, 0].tolist())
        assert y.tolist() != sorted(y.tolist())
        n = len(y) // 3
        assert len(set(y[:n].tolist())) >= 2  # in class order the first third would be class 'a' alone
        again, _ = image_folder(root, img_size=4, in_chans=1, split=split, seed=5)
        torch.testing.assert_close(again.tensors[0], ds.tensors[0])  # deterministic given the seed


def test_image_folder_caps_and_calibration_see_every_class(tmp_path):
    from edgeattn.quant.train import TrainConfig, load_data

    root = _folder(tmp_path, {"a": 10, "b": 10, "c": 10})
    cfg = TrainConfig.parse(
        {"model": "vit_tiny", "data": str(root), "img_size": 8, "in_chans": 1, "max_train_samples": 12,
         "max_val_samples": 3}
    )
    train, val, _ = load_data(cfg)
    # in class order these caps would keep classes a, b (train) and a (val); PTQ calibrates on the front of train
    assert set(train.tensors[1].tolist()) == {0, 1, 2}
    assert len(set(val.tensors[1].tolist())) >= 2


def test_image_folder_refuses_a_class_too_small_to_split(tmp_path):
    root = _folder(tmp_path, {"a": 3, "b": 1})
    with pytest.raises(EdgeAttnError, match="class 'b' has 1 image"):
        image_folder(root, img_size=4, split="train")
    assert len(image_folder(root, img_size=4, split="all")[0]) == 4  # no split, nothing to refuse


def test_digits_order_is_the_natural_one():
    """Digits runs keep their sample order (the benchmarks' caps and calibration take from the front): the split
    is the original images at ascending indices."""
    from sklearn.datasets import load_digits

    from edgeattn.data import _split_indices

    labels = load_digits().target
    for seed in (0, 1):
        idx = _split_indices(labels, "train", seed)
        assert (np.diff(idx) > 0).all()
        x = digits_dataset(img_size=8, in_chans=1, split="train", seed=seed).tensors[0][:, 0]
        np.testing.assert_allclose(x.numpy(), load_digits().images[idx] / 8.0 - 1.0, atol=1e-6)


def test_empty_text_file_is_named(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    with pytest.raises(EdgeAttnError, match=r"data file '.*empty\.txt' is empty"):
        text_file(empty)


def _shifted_by_hand(img: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """``img`` (C, H, W) moved down by dy and right by dx, each output pixel taking the nearest source pixel."""
    _, h, w = img.shape
    rows = np.clip(np.arange(h) - dy, 0, h - 1)
    cols = np.clip(np.arange(w) - dx, 0, w - 1)
    return img[:, rows][:, :, cols]


def test_random_shift_moves_each_image_by_a_whole_pixel_offset_with_edge_fill():
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(16, 2, 7, 9, generator=gen)
    y = random_shift(x, 2, torch.Generator().manual_seed(11))
    assert y.shape == x.shape
    offsets = set()
    for img, out in zip(x.numpy(), y.numpy(), strict=True):
        # exactly one offset in [-2, 2]^2 reproduces each output image
        hits = [
            (dy, dx)
            for dy in range(-2, 3)
            for dx in range(-2, 3)
            if np.array_equal(out, _shifted_by_hand(img, dy, dx))
        ]
        assert len(hits) == 1, hits
        offsets.add(hits[0])
    assert len(offsets) > 4  # per-image offsets, not one for the batch
    # the draws come from the generator alone
    torch.testing.assert_close(random_shift(x, 2, torch.Generator().manual_seed(11)), y, rtol=0, atol=0)
    assert not torch.equal(random_shift(x, 2, torch.Generator().manual_seed(12)), y)
    assert random_shift(x, 0, gen) is x


def test_random_shift_on_a_hand_made_image():
    # the nine moves of a 3x3 image by up to 1 pixel, written out by hand (down/right positive, edge pixels repeat)
    moves = {
        (0, 0): [[0, 1, 2], [3, 4, 5], [6, 7, 8]],
        (1, 0): [[0, 1, 2], [0, 1, 2], [3, 4, 5]],
        (-1, 0): [[3, 4, 5], [6, 7, 8], [6, 7, 8]],
        (0, 1): [[0, 0, 1], [3, 3, 4], [6, 6, 7]],
        (0, -1): [[1, 2, 2], [4, 5, 5], [7, 8, 8]],
        (1, 1): [[0, 0, 1], [0, 0, 1], [3, 3, 4]],
        (-1, -1): [[4, 5, 5], [7, 8, 8], [7, 8, 8]],
        (1, -1): [[1, 2, 2], [1, 2, 2], [4, 5, 5]],
        (-1, 1): [[3, 3, 4], [6, 6, 7], [6, 6, 7]],
    }
    batch = torch.arange(9.0).reshape(1, 1, 3, 3).repeat(200, 1, 1, 1)
    out = random_shift(batch, 1, torch.Generator().manual_seed(0))[:, 0].tolist()
    expected = list(moves.values())
    assert all(img in expected for img in out)
    assert all(img in out for img in expected)  # every move is drawn (200 draws of 9 equally likely moves)


@pytest.mark.parametrize(("shift", "match"), [(-1, "max_shift must be >= 0"), (7, "smaller than the 7x9 image")])
def test_random_shift_refuses_a_bad_shift(shift, match):
    with pytest.raises(ValueError, match=match):
        random_shift(torch.zeros(1, 1, 7, 9), shift, torch.Generator())
