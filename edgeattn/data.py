"""Datasets that ship with the environment, plus a user's own image folder or text file.

* :func:`digits_dataset`: scikit-learn's 8x8 handwritten digits (1797 images, 10 classes), upsampled bilinearly to
  the model's input size and repeated over ``in_chans`` channels, normalised to [-1, 1].
* :func:`stdlib_corpus`: a byte-level corpus (vocabulary 256) built from the Python standard library's ``.py``
  sources, cut into (input, next-byte target) windows for ``tiny_llama``.
* :func:`image_folder` / :func:`image_folder_splits` (``root/<class>/<image>``) and :func:`text_file` for a
  user's own data; :func:`checkpoint_samples`: inputs from the data a checkpoint was trained on, prepared as in
  training, checked against the content fingerprint training recorded (:func:`data_fingerprint`,
  :func:`checkpoint_data_problem`).
* :func:`random_shift`: the training-time augmentation of image batches (random whole-pixel translations).

A user's images are turned upright by their EXIF orientation, then brought to ``img_size`` x ``img_size`` by
``resize``: ``"crop"`` (the default, timm's and torchvision's evaluation transform: the shorter side scaled to
``img_size``, then the centre cropped, so the aspect ratio is kept) or ``"stretch"`` (both sides scaled, as edgeattn
did before the choice existed; a checkpoint that records no ``resize`` was trained that way).

Splits are deterministic given ``seed``: the same call always returns the same tensors. Which samples are train
and which are validation depends on ``seed`` for digits and image folders (a stratified split), and on the byte
count and ``seq_len`` for text (the tail is validation).
"""

from __future__ import annotations

import hashlib
import os
import sys
import sysconfig
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

from edgeattn.errors import EdgeAttnError
from edgeattn.hostinfo import check_seed
from edgeattn.models._checks import check_positive_int

Split = Literal["train", "val", "all"]
Resize = Literal["crop", "stretch"]
RESIZE_MODES: tuple[str, ...] = ("crop", "stretch")
DEFAULT_RESIZE: Resize = "crop"
LEGACY_RESIZE: Resize = "stretch"  # what a checkpoint without a recorded ``resize`` was trained with
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
    check_seed(seed)
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


DIGITS_SIZE = 8  # scikit-learn's digits are 8x8; digits_dataset upsamples them, never shrinks them


def digits_fit(height: int, width: int) -> bool:
    """Whether digits images can be a model's ``height`` x ``width`` input: square and at least 8 px."""
    return height == width and height >= DIGITS_SIZE


def digits_dataset(img_size: int = 32, in_chans: int = 3, split: Split = "train", seed: int = 0) -> TensorDataset:
    """scikit-learn digits as ``TensorDataset(images (N, in_chans, img_size, img_size), labels (N,))``."""
    from sklearn.datasets import load_digits

    _check_split(split)
    if img_size < DIGITS_SIZE or in_chans < 1:
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
    if images.dim() != 4:
        raise ValueError(f"random_shift: images must be a batch (N, C, H, W), got shape {list(images.shape)}")
    if max_shift == 0 or len(images) == 0:
        return images
    n, _, h, w = images.shape
    if max_shift >= min(h, w):
        raise ValueError(f"random_shift: max_shift {max_shift} must be smaller than the {h}x{w} image")
    offsets = torch.randint(0, 2 * max_shift + 1, (n, 2), generator=generator)
    padded = F.pad(images, (max_shift,) * 4, mode="replicate")
    # the window at padded[i, :, dy:dy+h, dx:dx+w] is the image moved by (max_shift - dy, max_shift - dx)
    return torch.stack([padded[i, :, dy : dy + h, dx : dx + w] for i, (dy, dx) in enumerate(offsets.tolist())])


def stdlib_sources(max_bytes: int = 2_000_000) -> bytes:
    """Concatenated bytes of the standard library's ``.py`` files (the top-level files sorted by name, then those one
    folder down sorted by path), at most ``max_bytes`` (a positive integer)."""
    _check_max_bytes("stdlib_sources", max_bytes)
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


def _check_max_bytes(where: str, max_bytes: int) -> None:
    # a negative count sliced bytes off the end, 0 read everything
    if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 1:
        raise ValueError(f"{where}: max_bytes must be a positive integer, got {max_bytes!r}")


def _windows(data: bytes, seq_len: int, split: str) -> TensorDataset:
    _check_split(split)
    if seq_len < 2:
        raise ValueError(f"seq_len must be >= 2, got {seq_len}")
    n_windows = (len(data) - 1) // seq_len
    if n_windows < 2:  # checked before frombuffer, which refuses an empty buffer with an obscure message
        raise EdgeAttnError(
            f"text corpus too short for seq_len={seq_len}: {len(data)} bytes, needs at least {2 * seq_len + 1} "
            "(one training and one validation window)"
        )
    arr = torch.frombuffer(bytearray(data), dtype=torch.uint8).long()
    n_val = max(1, int(round(n_windows * VAL_FRACTION / 2)))  # 10% of windows for validation
    # the last windows (a contiguous tail of the corpus) are validation, so no window is in both splits (the last
    # training target byte is the first validation input byte)
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
    """Byte-level next-token windows from a user's text file (its first ``max_bytes``, a positive integer, if given)."""
    if max_bytes is not None:
        _check_max_bytes("text_file", max_bytes)
    path = Path(path)
    if not path.is_file():
        raise EdgeAttnError(f"data path '{path}' does not exist or is not a file")
    data = path.read_bytes()
    if not data:
        raise EdgeAttnError(f"data file '{path}' is empty")
    try:
        return _windows(data[:max_bytes] if max_bytes is not None else data, seq_len, split)
    except EdgeAttnError as err:
        raise EdgeAttnError(f"data file '{path}': {err}") from None


def _hidden(path: Path) -> bool:
    """Files and folders a user did not put there as data: dot-files (``.DS_Store``, macOS ``._*`` resource forks,
    ``.ipynb_checkpoints``) and the ``__MACOSX`` folder that unzipping a macOS archive leaves."""
    return path.name.startswith(".") or path.name == "__MACOSX"


def _check_resize(resize: str) -> None:
    if resize not in RESIZE_MODES:
        raise ValueError(f"resize must be 'crop' or 'stretch', got {resize!r}")


def _source_box(width: int, height: int, resize: str) -> tuple[float, float, float, float]:
    """The region of a ``width`` x ``height`` image that becomes the square model input: all of it (stretch), or
    the centred square with the shorter side's length (crop). Resampling that box straight to ``img_size`` is the
    same as scaling the shorter side to ``img_size`` and cropping the centre, with one resampling instead of two."""
    if resize == "stretch":
        return 0.0, 0.0, float(width), float(height)
    side = min(width, height)
    left, top = (width - side) / 2, (height - side) / 2
    return left, top, left + side, top + side


def _read_image(path: Path, img_size: int, resize: Resize = DEFAULT_RESIZE) -> np.ndarray:
    """One image as an (img_size, img_size, 3) float32 array in [0, 1]: turned upright by its EXIF orientation
    (phone photos are often stored sideways with a tag saying so), then bilinearly resampled as ``resize`` says
    (module docstring), grayscale repeated over RGB, alpha (and a palette's transparency) dropped. 16-bit and 32-bit
    integer images are scaled by 1/65535 and float images clipped to [0, 1], rather than clipped to 8 bits (which
    turns a 16-bit image black and white)."""
    from PIL import Image, ImageOps

    size = (img_size, img_size)
    try:
        with Image.open(path) as im:
            im = ImageOps.exif_transpose(im)
            box = _source_box(im.width, im.height, resize)
            if im.mode in ("I", "F") or im.mode.startswith("I;16"):
                arr = np.asarray(im, dtype=np.float32)
                arr = arr / 65535.0 if im.mode != "F" else arr
                plane = Image.fromarray(np.clip(arr, 0.0, 1.0), mode="F")
                plane = plane.resize(size, Image.BILINEAR, box=box)
                return np.repeat(np.asarray(plane, dtype=np.float32)[:, :, None], 3, axis=2)
            if im.mode == "P" and "transparency" in im.info:
                # via RGBA: the same colours as a direct RGB conversion, without the UserWarning Pillow raises
                # for palette transparency given as bytes (a warning pointing into Pillow's code otherwise)
                im = im.convert("RGBA")
            rgb = im.convert("RGB").resize(size, Image.BILINEAR, box=box)
            return np.asarray(rgb, dtype=np.float32) / 255.0
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        raise EdgeAttnError(f"data path '{path}': not a readable image ({err})") from None


def _folder_classes(root: Path) -> list[str]:
    """The class names of ``root/<class>/<image>`` (its visible sub-folders, sorted): the labels in order."""
    if not root.is_dir():
        raise EdgeAttnError(f"data path '{root}' does not exist or is not a directory")
    try:
        return sorted(p.name for p in root.iterdir() if p.is_dir() and not _hidden(p))
    except OSError as err:
        raise EdgeAttnError(f"data path '{root}': cannot list it ({err.strerror or err})") from None


def _folder_files(root: Path) -> tuple[list[str], list[tuple[int, Path]], list[Path]]:
    """``(class names, [(label, image file)], skipped entries)`` of ``root/<class>/<image>``: the files
    :func:`_read_image_folder` reads, class by class in sorted file order, and what it skips (non-images by
    suffix, sub-folders of class folders). Hidden entries are neither."""
    classes = _folder_classes(root)
    files: list[tuple[int, Path]] = []
    skipped: list[Path] = []
    for ci, cname in enumerate(classes):
        try:
            entries = sorted(f for f in (root / cname).iterdir() if not _hidden(f))
        except OSError as err:
            raise EdgeAttnError(f"data path '{root / cname}': cannot list it ({err.strerror or err})") from None
        for f in entries:
            if f.is_dir() or f.suffix.lower() not in _IMAGE_SUFFIXES:
                skipped.append(f)
            else:
                files.append((ci, f))
    return classes, files, skipped


def _read_image_folder(
    root: Path, img_size: int, resize: Resize = DEFAULT_RESIZE
) -> tuple[torch.Tensor, np.ndarray, list[str]]:
    """(images (N, 3, img_size, img_size) in [0, 1], labels (N,), class names) of ``root/<class>/<image>``,
    class by class in sorted file order, each read by :func:`_read_image` with ``resize``. Hidden entries are
    ignored; other files that are not images (by suffix) and sub-folders inside a class folder are skipped with one
    warning on stderr that counts them."""
    classes, files, skipped = _folder_files(root)
    if not classes:
        raise EdgeAttnError(f"data path '{root}': expected one sub-folder per class, found none")
    images = [torch.from_numpy(_read_image(f, img_size, resize)).permute(2, 0, 1) for _, f in files]
    labels = [ci for ci, _ in files]
    if skipped:
        folders = [f for f in skipped if f.is_dir()]
        names = sorted({f.name for f in folders})  # counted one by one, named once ('extra' in two classes: 2)
        kinds = sorted({f.suffix.lower() or f.name for f in skipped if not f.is_dir()})
        print(
            f"warning: data path '{root}': skipped {len(skipped) - len(folders)} file(s) that are not images "
            f"({', '.join(kinds[:5]) or 'none'}) and {len(folders)} folder(s) inside class folders "
            f"({', '.join(names[:5]) or 'none'}); images are read from root/<class>/ only, with suffix "
            f"{', '.join(sorted(_IMAGE_SUFFIXES))}",
            file=sys.stderr,
        )
    if not images:
        raise EdgeAttnError(f"data path '{root}': no images found")
    return torch.stack(images), np.asarray(labels, dtype=np.int64), classes


def _file_digest(path: Path) -> bytes:
    try:
        with path.open("rb") as fh:
            return hashlib.file_digest(fh, "sha256").digest()
    except OSError as err:
        raise EdgeAttnError(f"data path '{path}': cannot read it ({err.strerror or err})") from None


def data_fingerprint(path: str | Path) -> str:
    """A content fingerprint of a user's data, ``"sha256:<hex>"``, recorded in every checkpoint trained on it
    (``data_fingerprint``) and compared wherever that data is read again as the checkpoint's own
    (:func:`checkpoint_data_problem`).

    An image folder: a SHA-256 over its class names and, for every image the loader reads (in its order), the
    path relative to the folder and the SHA-256 of the file's bytes; so a replaced, added, removed or moved image
    and a renamed or added class all change it, while hidden files and the non-images the loader skips do not. A
    text file: the SHA-256 of its bytes. Only bytes are read, nothing is decoded: a small cost next to training."""
    path = Path(path)
    if path.is_file():
        return "sha256:" + _file_digest(path).hex()
    classes, files, _ = _folder_files(path)
    h = hashlib.sha256(b"edgeattn image folder 1\0")
    for name in classes:
        h.update(b"class\0" + os.fsencode(name) + b"\0")
    for _, f in files:  # unambiguous: a name holds no NUL and the digest has a fixed size
        h.update(b"file\0" + os.fsencode(f.relative_to(path).as_posix()) + b"\0" + _file_digest(f))
    return "sha256:" + h.hexdigest()


def _check_splittable(root: Path, labels: np.ndarray, classes: list[str]) -> None:
    """Refuse a folder that a train/val split cannot use: one class, or a class with too few images."""
    if len(classes) < 2:
        raise EdgeAttnError(
            f"data path '{root}': found 1 class ('{classes[0]}'); a classifier needs at least 2 class sub-folders"
        )
    counts = np.bincount(labels, minlength=len(classes))
    few = [(c, int(n)) for c, n in zip(classes, counts, strict=True) if n < MIN_IMAGES_PER_CLASS]
    if few:
        name, n = few[0]
        raise EdgeAttnError(
            f"data path '{root}': class '{name}' has {n} image(s); every class needs at least "
            f"{MIN_IMAGES_PER_CLASS} (training and validation each take one or more)"
        )


def _folder_split(
    images: torch.Tensor, labels: np.ndarray, split: str, img_size: int, in_chans: int, seed: int
) -> TensorDataset:
    idx = _split_indices(labels, split, seed)
    if split != "all":
        # images were read class by class; a seeded shuffle (a stream of its own, so the split is unchanged)
        # spreads the classes over the order that sample caps and calibration take from the front
        idx = np.random.default_rng([seed, _ORDER_STREAM]).permutation(idx)
    x = _to_model_input(images[idx], img_size, in_chans).contiguous()
    return TensorDataset(x, torch.from_numpy(labels[idx]))


def image_folder(
    root: str | Path,
    img_size: int = 32,
    in_chans: int = 3,
    split: Split = "train",
    seed: int = 0,
    resize: Resize = DEFAULT_RESIZE,
) -> tuple[TensorDataset, list[str]]:
    """A user's images laid out as ``root/<class name>/<image>``; returns (dataset, class names).

    For a train or val split there must be at least 2 classes and every class needs at least
    :data:`MIN_IMAGES_PER_CLASS` images (one for training, one for validation). Both splits come in a seeded random
    order, not grouped by class, so that a sample cap or the first calibration samples see every class;
    ``split="all"`` keeps the file order. Images are read as :func:`_read_image` says (``resize``: ``"crop"`` or
    ``"stretch"``, see the module docstring)."""
    _check_split(split)
    _check_resize(resize)
    check_positive_int("image_folder", img_size=img_size, in_chans=in_chans)
    check_seed(seed)
    root = Path(root)
    images, labels, classes = _read_image_folder(root, img_size, resize)
    if split != "all":
        _check_splittable(root, labels, classes)
    return _folder_split(images, labels, split, img_size, in_chans, seed), classes


def image_folder_splits(
    root: str | Path, img_size: int = 32, in_chans: int = 3, seed: int = 0, resize: Resize = DEFAULT_RESIZE
) -> tuple[TensorDataset, TensorDataset, list[str]]:
    """``(train, val, class names)``: the same as two :func:`image_folder` calls, reading the images once."""
    _check_resize(resize)
    check_positive_int("image_folder_splits", img_size=img_size, in_chans=in_chans)
    check_seed(seed)
    root = Path(root)
    images, labels, classes = _read_image_folder(root, img_size, resize)
    _check_splittable(root, labels, classes)
    train = _folder_split(images, labels, "train", img_size, in_chans, seed)
    return train, _folder_split(images, labels, "val", img_size, in_chans, seed), classes


DATA_GONE = "is not available here (moved or renamed since training?)"


def checkpoint_data_problem(meta: dict) -> str | None:
    """Why the user's data a checkpoint records (``meta["data_path"]``) cannot be read as the data it was trained
    on, as a phrase that follows "the checkpoint's data 'PATH'": it is gone (:data:`DATA_GONE`), its classes are
    not ``meta["classes"]``, or its content is not ``meta["data_fingerprint"]`` (:func:`data_fingerprint`).
    ``None`` when it is the same data, or the meta names none (digits, stdlib). A checkpoint from before the
    fingerprint was recorded is checked by its classes alone."""
    if not meta.get("data_path"):
        return None
    path = Path(meta["data_path"])
    if not path.exists():
        return DATA_GONE
    try:
        classes = meta.get("classes")
        if classes is not None and path.is_dir() and (now := _folder_classes(path)) != list(classes):
            return f"has changed since training: its classes are now {now}, the checkpoint's are {list(classes)}"
        recorded = meta.get("data_fingerprint")
        if recorded is not None and data_fingerprint(path) != recorded:
            return (
                "has changed since training: its content is not what the checkpoint was trained on "
                "(files replaced, added, removed or renamed)"
            )
    except EdgeAttnError as err:
        return f"cannot be read ({err})"
    return None


def checkpoint_samples(meta: dict, split: Split = "val") -> torch.Tensor | None:
    """Model inputs from the data a checkpoint written by ``edgeattn qat`` was trained on, prepared exactly as that
    training prepared them (size, channels, normalisation, seeded split): images or token windows of ``split``.

    Reads ``meta["data"]`` ('digits', 'stdlib'), or ``meta["data_path"]`` (the absolute path of a user's image folder
    or text file), with ``meta["split"]`` and ``meta["model_kwargs"]``; an image folder is resampled as
    ``meta["resize"]`` says, :data:`LEGACY_RESIZE` (stretch) for a checkpoint written before that was recorded.
    ``None`` when the meta names no data, or the folder or file is no longer there or no longer holds the data the
    checkpoint was trained on (:func:`checkpoint_data_problem` says which; a caller then falls back to other
    inputs). A ``resize`` that is neither 'crop' nor 'stretch' is an :class:`EdgeAttnError`."""
    data, split_cfg = meta.get("data"), meta.get("split") or {}
    kwargs = meta.get("model_kwargs") or {}

    def setting(key: str) -> int | None:  # the model's own argument, else what the split recorded
        value = kwargs.get(key, split_cfg.get(key))
        return None if value is None else int(value)

    seed = int(split_cfg.get("seed", 0))
    img_size, in_chans, seq_len = setting("img_size"), setting("in_chans"), setting("seq_len")
    path = Path(meta["data_path"]) if meta.get("data_path") else None
    if data == "digits" and img_size and in_chans:
        return digits_dataset(img_size, in_chans, split, seed).tensors[0]
    if data == "stdlib" and seq_len:
        return stdlib_corpus(seq_len, split, max_bytes=int(split_cfg.get("corpus_bytes", 400_000))).tensors[0]
    if path is None or checkpoint_data_problem(meta) is not None:
        return None
    if path.is_dir() and img_size and in_chans:
        resize = meta.get("resize", LEGACY_RESIZE)
        if resize not in RESIZE_MODES:
            raise EdgeAttnError(f"checkpoint meta 'resize': expected 'crop' or 'stretch', got {resize!r}")
        return image_folder(path, img_size, in_chans, split, seed, resize)[0].tensors[0]
    if path.is_file() and seq_len:
        return text_file(path, seq_len, split).tensors[0]
    return None
