"""Shared by the qat tests that run the trainer for real: the smallest run that still trains and quantizes."""

from __future__ import annotations

from pathlib import Path

TINY = {"depth": 1, "embed_dim": 32, "num_heads": 2, "patch_size": 4}


def tiny_cfg(out: Path, **kw: object) -> dict:
    """A run of a few steps: vit_tiny at 16 px on 64 digits (2 steps of 32 per epoch), 1 FP and 1 QAT epoch, one
    thread; ``kw`` overrides any setting."""
    cfg = {
        "model": "vit_tiny",
        "model_kwargs": TINY,
        "img_size": 16,
        "in_chans": 1,
        "max_train_samples": 64,
        "max_val_samples": 32,
        "batch_size": 32,
        "fp_epochs": 1,
        "epochs": 1,
        "calib_samples": 32,
        "output_dir": str(out),
        "num_threads": 1,
    }
    cfg.update(kw)
    return cfg
