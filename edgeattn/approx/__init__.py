"""Hardware-friendly softmax and GELU approximations, one specification implemented three ways.

- float (torch, differentiable, exports to standard ONNX ops): :func:`softmax`, :func:`gelu`,
  :class:`ApproxSoftmax`, :class:`ApproxGELU`, streaming :class:`OnlineSoftmaxStream`;
- fixed point (numpy int64, bit-accurate golden model that the HLS C++ follows): :mod:`edgeattn.approx.fixed`,
  documented step by step in ``docs/fixed_point.md``;
- the ONNX lowering is the float version itself exported by ``torch.onnx.export`` (see
  :mod:`edgeattn.approx.onnx_lowering`).

:func:`set_approximations` switches a whole model (yours too) to other methods; :func:`approximations_in` reads
which it uses.
"""

from __future__ import annotations

from edgeattn.approx.float_ops import (
    GELU_METHODS,
    SOFTMAX_METHODS,
    ApproxGELU,
    ApproxSoftmax,
    OnlineSoftmaxStream,
    deferred_weights,
    gelu,
    online_softmax_chunked,
    softmax,
)
from edgeattn.approx.swap import approximations_in, set_approximations

__all__ = [
    "GELU_METHODS",
    "SOFTMAX_METHODS",
    "ApproxGELU",
    "ApproxSoftmax",
    "OnlineSoftmaxStream",
    "deferred_weights",
    "gelu",
    "approximations_in",
    "online_softmax_chunked",
    "set_approximations",
    "softmax",
]
