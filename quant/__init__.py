"""edgeattn.quant: brevitas quantizers, EdgeQAT losses, token-adaptive bits, PTQ and the QAT trainer.

Public API::

    QuantConfig                                  # pydantic config (bits, preset, overrides, token-adaptive)
    quantize_model(model, config_or_profile)     # brevitas copy, eval mode, fake-quant
    calibrate(model, batches), ptq(model, cfg, batches)
    edgeattn.quant.checkpoint.save_checkpoint / load_checkpoint
    edgeattn.quant.train.run(config)             # FP -> PTQ -> (Edge)QAT, see docs/qat.md
"""

from __future__ import annotations

import warnings

# brevitas announces an optional CUDA kernel package on import; it is irrelevant here and would print on every
# CLI run
warnings.filterwarnings("ignore", message="fast_hadamard_transform package not found")

# brevitas imports torch._dynamo (about a second) inside a bare ``except:``, which would swallow a Ctrl-C landing
# there and leave torch half-imported, to fail later with misleading errors; importing it first, outside any
# ``except``, lets the KeyboardInterrupt through. It costs nothing: brevitas imports it anyway.
import torch._dynamo  # noqa: E402, F401
from edgeattn.quant.config import LayerOverride, QuantConfig  # noqa: E402
from edgeattn.quant.ptq import calibrate, ptq  # noqa: E402
from edgeattn.quant.quantize import quantize_model  # noqa: E402

__all__ = ["LayerOverride", "QuantConfig", "calibrate", "ptq", "quantize_model"]
