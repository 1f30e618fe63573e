"""The accelerator's DDR weight image: every linear layer's weight matrix, packed in the order the MAC unit reads.

The MAC unit (``templates/firmware/ea/ea_mac.h``) is a ``rows x cols`` array; it reads one weight tile (``cols``
output rows by ``rows`` input columns) per step, one word per cycle, a word holding ``rows`` weights (lane ``k``
in bits ``[k * W, (k + 1) * W)``). A matrix ``W[out][in]`` is stored from its word offset as tiles in the order
the unit visits them: output tile ``o``, then input tile ``i``, then the tile's row ``c``; word
``offset + (o * ceil(in / rows) + i) * cols + c`` holds ``W[o * cols + c][i * rows + k]`` in lane ``k``, zero
outside the matrix. The biases are one flat on-chip ROM (``bias_rom``) in the same layer order, each layer's
``out`` values from its own offset. docs/hls.md ("Weights in DDR") has the same layout for a host driver.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from edgeattn.fpga_hls import golden as G

__all__ = ["WeightImage", "build_weight_image", "pack_matrix"]


def pack_matrix(w: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """``w`` (out, in) raw ints as ``(ceil(out/cols) * ceil(in/rows) * cols, rows)`` words in tile order."""
    n_out, n_in = w.shape
    o_tiles, i_tiles = math.ceil(n_out / cols), math.ceil(n_in / rows)
    padded = np.zeros((o_tiles * cols, i_tiles * rows), dtype=np.int64)
    padded[:n_out, :n_in] = w
    # padded[o*cols + c, i*rows + k] -> [o, i, c, k]: the unit's loop order (output tile, input tile, row)
    return padded.reshape(o_tiles, cols, i_tiles, rows).transpose(0, 2, 1, 3).reshape(-1, rows)


@dataclass
class WeightImage:
    """``words``: (n_words, rows) raw weight ints, the DDR contents. ``bias``: the flat bias ROM. ``w_off`` /
    ``b_off``: name -> word offset / bias offset, per layer (lists) or per expert (lists of lists)."""

    words: np.ndarray
    bias: np.ndarray
    w_off: dict[str, Any] = field(default_factory=dict)
    b_off: dict[str, Any] = field(default_factory=dict)

    @property
    def n_words(self) -> int:
        return int(self.words.shape[0])


def build_weight_image(
    lps: list[G.LayerParams], mp: G.ModelParams | None, rows: int, cols: int
) -> WeightImage:
    """Pack every linear layer of ``lps`` (and ``mp``'s patch embedding and head) for a ``rows x cols`` MAC
    unit. Order: each layer's qkv and proj, then each dense MLP's fc1 and fc2, each MoE MLP's gate and its
    experts' fc1 and fc2, then the patch embedding and the head."""
    words: list[np.ndarray] = []
    biases: list[np.ndarray] = []
    img = WeightImage(words=np.zeros((0, rows), dtype=np.int64), bias=np.zeros(0, dtype=np.int64))

    def add(w: np.ndarray, b: np.ndarray) -> tuple[int, int]:
        """Append one layer; its (word offset, bias offset)."""
        offsets = sum(len(x) for x in words), sum(len(x) for x in biases)
        words.append(pack_matrix(np.asarray(w), rows, cols))
        biases.append(np.asarray(b, dtype=np.int64).ravel())
        return offsets

    def record(name: str, offsets: tuple[int, int]) -> None:
        img.w_off.setdefault(name, []).append(offsets[0])
        img.b_off.setdefault(name, []).append(offsets[1])

    for lp in lps:
        record("qkv", add(lp.qkv_w, lp.qkv_b))
        record("proj", add(lp.proj_w, lp.proj_b))
    for lp in lps:
        if not lp.is_moe:
            record("fc1", add(lp.fc1_w, lp.fc1_b))
            record("fc2", add(lp.fc2_w, lp.fc2_b))
    for lp in lps:
        if lp.is_moe:
            record("gate", add(lp.gate_w, lp.gate_b))
            experts = range(lp.efc1_w.shape[0])
            fc1 = [add(lp.efc1_w[e], lp.efc1_b[e]) for e in experts]
            fc2 = [add(lp.efc2_w[e], lp.efc2_b[e]) for e in experts]
            for name, offsets in (("efc1", fc1), ("efc2", fc2)):  # [moe layer][expert]
                img.w_off.setdefault(name, []).append([o[0] for o in offsets])
                img.b_off.setdefault(name, []).append([o[1] for o in offsets])
    if mp is not None:
        record("patch", add(mp.patch_w, mp.patch_b))
        record("head", add(mp.head_w, mp.head_b))
    if words:
        img.words = np.concatenate(words)
        img.bias = np.concatenate(biases)
    return img
