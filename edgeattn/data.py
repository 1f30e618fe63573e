"""Datasets that ship with the environment, plus a user's own image folder or text file.

* :func:`digits_dataset`: scikit-learn's 8x8 handwritten digits (1797 images, 10 classes), upsampled bilinearly to
  the model's input size and repeated over ``in_chans`` channels, normalised to [-1, 1].
* :func:`stdlib_corpus`: a byte-level corpus (vocabulary 256) built from the Python standard library's ``.py``
  sources, cut into (input, next-byte target) windows for ``tiny_llama``.
* :func:`image_folder` (``root/<class>/<image>``) and :func:`text_file` for a user's own data.
* :func:`random_shift`: the training-time augmentation of image batches (random whole-pixel translations).

Splits are deterministic given ``seed``: the same call always returns the same tensors. Which samples are train
and which are validation depends on ``seed`` for digits and image folders (a stratified split), and on the byte
count and ``seq_len`` for text (the tail is validation).
"""

from __future__ import annotations

import sysconfig
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

from edgeattn.errors import EdgeAttnError

Split = Literal["train", "val", "all"]
VAL_FRACTION = 0.2
_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"}
MIN_IMAGES_PER_CLASS = 2  # the stratified split puts at least one image of every class into validation
_ORDER_STREAM = 1  # second seed word of the image-folder sample order (the split uses the bare seed)


def _check_split(split: str) -> None:
    if split not in ("train", "val", "all"):
        raise ValueError(f"split must be 'train', 'val' or 'all', got {split!r}")


def _split_indices(labels: np.ndarray, split: str, seed: int) -> np.ndarray:
    """Stratified, seeded train/val split: ``VAL_FRACTION`` of every class goes to val."""
    if split == "all":
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    val: list[np.ndarray] = []
    train: list[np.ndarray] = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        rng.shuffle(idx)
        n_val = max(1, int(round(len(idx) * VAL_FRACTION)))
        val.append(idx[:n_val])
        train.append(idx[n_val:])
    chosen = np.concatenate(val if split == "val" else train)
    return np.sort(chosen)


def _to_model_input(images: torch.Tensor, img_size: int, in_chans: int) -> torch.Tensor:
    """(N, C0, H, W) in [0, 1] -> (N, in_chans, img_size, img_size) in [-1, 1]."""
    if images.shape[-1] != img_size or images.shape[-2] != img_size:
        images = F.interpolate(images, size=(img_size, img_size), mode="bilinear", align_corners=False)
    if images.shape[1] != in_chans:
        images = images.mean(dim=1, keepdim=True).expand(-1, in_chans, -1, -1)
    return (images.clamp(0, 1) - 0.5) / 0.5


def digits_dataset(img_size: int = 32, in_chans: int = 3, split: Split = "train", seed: int = 0) -> TensorDataset:
    """scikit-learn digits as ``TensorDataset(images (N, in_chans, img_size, img_size), labels (N,))``."""
    from sklearn.datasets import load_digits

    _check_split(split)
    if img_size < 8 or in_chans < 1:
        raise ValueError(f"digits_dataset: img_size must be >= 8 and in_chans >= 1, got {img_size}, {in_chans}")
    digits = load_digits()
    labels = digits.target.astype(np.int64)
    idx = _split_indices(labels, split, seed)
    images = torch.from_numpy(digits.images[idx].astype(np.float32) / 16.0).unsqueeze(1)
    x = _to_model_input(images, img_size, in_chans).contiguous()
    return TensorDataset(x, torch.from_numpy(labels[idx]))


def random_shift(images: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Translate each image of an (N, C, H, W) batch by its own random whole number of pixels in
    ``[-max_shift, max_shift]`` along each axis, filling the uncovered border with the nearest edge pixels (the
    digits' background, or an image's own border, rather than a colour that never occurs). The draws come from
    ``generator`` alone, so a seeded generator gives the same batch every time. ``max_shift`` 0 returns the batch."""
    if max_shift < 0:
        raise ValueError(f"random_shift: max_shift must be >= 0, got {max_shift}")
    if max_shift == 0:
        return images
    n, _, h, w = images.shape
    if max_shift >= min(h, w):
        raise ValueError(f"random_shift: max_shift {max_shift} must be smaller than the {h}x{w} image")
    offsets = torch.randint(0, 2 * max_shift + 1, (n, 2), generator=generator)
    padded = F.pad(images, (max_shift,) * 4, mode="replicate")
    # the window at padded[i, :, dy:dy+h, dx:dx+w] is the image moved by (max_shift - dy, max_shift - dx)
    return torch.stack([padded[i, :, dy : dy + h, dx : dx + w] for i, (dy, dx) in enumerate(offsets.tolist())])


def stdlib_sources(max_bytes: int = 2_000_000) -> bytes:
    """Concatenated bytes of the standard library's ``.py`` files (sorted by path), at most ``max_bytes``."""
    root = Path(sysconfig.get_paths()["stdlib"])
    chunks: list[bytes] = []
    total = 0
    for path in sorted(root.glob("*.py")) + sorted(root.glob("*/*.py")):
        if "site-packages" in path.parts or "test" in path.parts:
            continue
        try:
            data = path.read_bytes()
        except OSError:
            continue
        chunks.append(data)
        total += len(data)
        if total >= max_bytes:
            break
    return b"".join(chunks)[:max_bytes]


def _windows(data: bytes, seq_len: int, split: str) -> TensorDataset:
    _check_split(split)
    if seq_len < 2:
        raise ValueError(f"seq_len must be >= 2, got {seq_len}")
    n_windows = (len(data) - 1) // seq_len
    if n_windows < 2:  # checked before frombuffer, which refuses an empty buffer with an obscure message
        raise EdgeAttnError(f"text corpus too short for seq_len={seq_len}: {len(data)} bytes")
    arr = torch.frombuffer(bytearray(data), dtype=torch.uint8).long()
    n_val = max(1, int(round(n_windows * VAL_FRACTION / 2)))  # 10% of windows for validation
    # the last windows (a contiguous tail of the corpus) are validation, so no byte is in both splits
    lo, hi = {"train": (0, n_windows - n_val), "val": (n_windows - n_val, n_windows), "all": (0, n_windows)}[split]
    starts = torch.arange(lo, hi) * seq_len
    offs = torch.arange(seq_len)
    x = arr[starts[:, None] + offs]
    y = arr[starts[:, None] + offs + 1]
    return TensorDataset(x, y)


def stdlib_corpus(seq_len: int = 64, split: Split = "train", max_bytes: int = 400_000, seed: int = 0) -> TensorDataset:
    """Byte-level next-token windows from the stdlib sources: ``TensorDataset(x (N, T), y (N, T))``.

    ``seed`` is accepted for a uniform signature; the split is positional (the tail is validation).
    """
    del seed
    return _windows(stdlib_sources(max_bytes), seq_len, split)


def text_file(
    path: str | Path, seq_len: int = 64, split: Split = "train", max_bytes: int | None = None
) -> TensorDataset:
    """Byte-level next-token windows from a user's text file."""
    path = Path(path)
    if not path.is_file():
        raise EdgeAttnError(f"data path '{path}' does not exist or is not a file")
    data = path.read_bytes()
    if not data:
        raise EdgeAttnError(f"data file '{path}' is empty")
    try:
        return _windows(data[:max_bytes] if max_bytes else data, seq_len, split)
    except EdgeAttnError as err:
        raise EdgeAttnError(f"data file '{path}': {err}") from None


def image_folder(
    root: str | Path, img_size: int = 32, in_chans: int = 3, split: Split = "train", seed: int = 0
) -> tuple[TensorDataset, list[str]]:
    """A user's images laid out as ``root/<class name>/<image>``; returns (dataset, class names).

    For a train or val split every class needs at least :data:`MIN_IMAGES_PER_CLASS` images (one for training, one
    for validation). Both splits come in a seeded random order, not grouped by class, so that a sample cap or the first
    calibration samples see every class; ``split="all"`` keeps the file order."""
    from PIL import Image

    root = Path(root)
    if not root.is_dir():
        raise EdgeAttnError(f"data path '{root}' does not exist or is not a directory")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    if not classes:
        raise EdgeAttnError(f"data path '{root}': expected one sub-folder per class, found none")
    images: list[torch.Tensor] = []
    labels: list[int] = []
    for ci, cname in enumerate(classes):
        for f in sorted((root / cname).iterdir()):
            if f.suffix.lower() not in _IMAGE_SUFFIXES:
                continue
            try:
                with Image.open(f) as im:
                    im = im.convert("RGB").resize((img_size, img_size), Image.BILINEAR)
                    arr = np.asarray(im, dtype=np.float32) / 255.0
            except OSError as err:
                raise EdgeAttnError(f"data path '{f}': not a readable image ({err})") from None
            images.append(torch.from_numpy(arr).permute(2, 0, 1))
            labels.append(ci)
    if not images:
        raise EdgeAttnError(f"data path '{root}': no images found")
    lab = np.asarray(labels, dtype=np.int64)
    counts = np.bincount(lab, minlength=len(classes))
    few = [(c, int(n)) for c, n in zip(classes, counts, strict=True) if n < MIN_IMAGES_PER_CLASS]
    if few and split != "all":
        name, n = few[0]
        raise EdgeAttnError(
            f"data path '{root}': class '{name}' has {n} image(s); every class needs at least "
            f"{MIN_IMAGES_PER_CLASS} (training and validation each take one or more)"
        )
    idx = _split_indices(lab, split, seed)
    if split != "all":
        # images were read class by class; a seeded shuffle (a stream of its own, so the split is unchanged)
        # spreads the classes over the order that sample caps and calibration take from the front
        idx = np.random.default_rng([seed, _ORDER_STREAM]).permutation(idx)
    x = _to_model_input(torch.stack(images)[idx], img_size, in_chans).contiguous()
    return TensorDataset(x, torch.from_numpy(lab[idx])), classes
