"""export_model on a user's own module: torch's nn.MultiheadAttention exports (its fused fast path does not
reach the exporter), and the caller's module is not changed (its training flag included).

Reference: ONNX Runtime on the exported graph against the PyTorch module run by the test itself."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import torch
from edgeattn.export import export_model
from torch import nn


class MHAViT(nn.Module):
    """A small ViT written with torch's own nn.MultiheadAttention, as a user would."""

    def __init__(self, dim: int = 32, heads: int = 4, img: int = 16, patch: int = 4) -> None:
        super().__init__()
        self.input_size = (3, img, img)
        self.patch = nn.Conv2d(3, dim, patch, patch)
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.head = nn.Linear(dim, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch(x).flatten(2).transpose(1, 2)
        h = self.norm1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        x = x + self.mlp(self.norm2(x))
        return self.head(x.mean(1))


def test_multihead_attention_exports_and_matches(tmp_path):
    """In eval mode without grad torch runs nn.MultiheadAttention as one fused op that no ONNX exporter converts
    (the export failed with 'aten::_native_multi_head_attention ... not supported'); it now traces the plain ops."""
    torch.manual_seed(0)
    model = MHAViT().train()  # the user's model, left in training mode
    rep = export_model(model, "onnx", "host-cpu", tmp_path / "o", precision="fp32", n_inputs=8)
    assert rep.passed
    assert model.training  # not flipped to eval in place
    assert torch.backends.mha.get_fastpath_enabled()  # restored after the export
    x = np.random.default_rng(0).standard_normal((1, 3, 16, 16)).astype(np.float32)
    sess = ort.InferenceSession(str(tmp_path / "o" / "model.onnx"), providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    with torch.no_grad():
        want = model.eval()(torch.from_numpy(x)).numpy()
    assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()
