"""Test vectors of an HLS project: random images, or real ones (the data a checkpoint was trained on, or digits).

``data`` takes the first ``vectors`` validation images of the data an ``edgeattn qat`` checkpoint records
(:func:`edgeattn.data.checkpoint_samples`, prepared as its training prepared them); when the checkpoint records
none, its data is gone or changed since training, or its images do not fit the model's input, scikit-learn's
digits validation split (seed 0, upsampled to the model's input size, ``edgeattn.data.digits_dataset``), the
default data of ``edgeattn qat``. ``random`` draws standard-normal images from ``seed``.
"""

from __future__ import annotations

from typing import Any

from edgeattn.errors import EdgeAttnError

__all__ = ["VECTOR_SOURCES", "check_source", "vector_images"]

VECTOR_SOURCES = ("data", "random")


def check_source(source: str) -> None:
    """Raise :class:`EdgeAttnError` unless ``source`` is one of :data:`VECTOR_SOURCES`."""
    if source not in VECTOR_SOURCES:
        raise EdgeAttnError(f"--vectors-from must be one of {', '.join(VECTOR_SOURCES)}, got {source!r}")


def _checkpoint_images(meta: dict | None, size: tuple[int, ...]) -> tuple[Any, str | None]:
    """(images, None) from the checkpoint's own validation data, or (None, why not) to fall back to digits."""
    if not meta:
        return None, None
    from edgeattn.data import DATA_GONE, checkpoint_data_problem, checkpoint_samples

    name = meta.get("data_path") or meta.get("data")
    if not name:
        return None, "the checkpoint records no training data"
    samples = checkpoint_samples(meta, "val")
    if samples is None:
        return None, f"the checkpoint's data '{name}' {checkpoint_data_problem(meta) or DATA_GONE}"
    if tuple(samples.shape[1:]) != tuple(size):
        return None, f"the checkpoint's data '{name}' gives {tuple(samples.shape[1:])} inputs, not {tuple(size)}"
    return samples, None


def vector_images(
    net: Any, vectors: int, source: str = "random", meta: dict | None = None, seed: int = 0
) -> tuple[Any, dict[str, Any]]:
    """``(images (vectors, C, H, W), record)``: the test images and where they come from.

    ``record`` (written to ``project.json`` as ``vectors_source``): ``source`` (``"data"`` or ``"random"``),
    ``data`` (``"digits"``, the checkpoint's data name or path; ``None`` for random), ``split``,
    ``split_seed``, ``indices`` (``"first N"``), ``seed`` (random only), ``fallback`` (why the checkpoint's
    own data was not used, or ``None``) and ``description`` (one phrase for the console).
    """
    import torch

    size = tuple(int(s) for s in net.input_size)
    check_source(source)
    if source == "random":
        gen = torch.Generator().manual_seed(seed)
        images = torch.randn(vectors, *size, generator=gen)
        return images, {
            "source": "random",
            "data": None,
            "split": None,
            "split_seed": None,
            "indices": None,
            "seed": seed,
            "fallback": None,
            "description": f"{vectors} random images, seed {seed}",
        }
    images, fallback = _checkpoint_images(meta, size)
    if images is not None:
        data = str(meta.get("data_path") or meta.get("data"))  # type: ignore[union-attr]
        split_seed = int((meta.get("split") or {}).get("seed", 0))  # type: ignore[union-attr]
        what = f"validation images of the checkpoint's data ({data})"
    else:
        from edgeattn.data import digits_dataset, digits_fit

        c, h, w = size
        if not digits_fit(h, w):
            why = f"{fallback}; " if fallback else ""
            problem = (
                f"digits images are square, the model takes {h}x{w}"
                if h != w
                else f"digits images are 8x8, larger than the model's {h}x{w} input"
            )
            raise EdgeAttnError(f"--vectors-from data: {why}{problem} (use --vectors-from random)")
        images = digits_dataset(img_size=h, in_chans=c, split="val", seed=0).tensors[0]
        data, split_seed = "digits", 0
        what = f"digits validation images, 8x8 upsampled to {h}x{w}"
    if len(images) < vectors:
        raise EdgeAttnError(f"--vectors {vectors}: the {data} validation split holds only {len(images)} images")
    return images[:vectors].clone(), {
        "source": "data",
        "data": data,
        "split": "val",
        "split_seed": split_seed,
        "indices": f"first {vectors}",
        "seed": None,
        "fallback": fallback,
        "description": f"the first {vectors} {what}" + (f"; {fallback}" if fallback else ""),
    }
