"""Model registry and the built-in models.

``create_model(name, **kwargs)`` builds a registered model; ``list_models()`` names them all. Vision models
take ``num_classes``, ``in_chans``, ``img_size`` (and ``softmax``/``gelu`` approximation names) and carry
``input_size = (C, H, W)``; ``tiny_llama`` takes ``vocab_size`` and ``seq_len``.
"""

from __future__ import annotations

import importlib

from edgeattn.models.inputs import example_input
from edgeattn.models.macs import count_macs, count_params
from edgeattn.models.modes import eval_mode
from edgeattn.models.registry import (
    approximation_kwargs,
    create_model,
    is_language_model,
    list_models,
    model_entrypoint,
    register_model,
)

# Importing a model module runs its @register_model decorators.
from edgeattn.models import fmvit, mobilenetv2, tiny_llama, vit  # noqa: E402,F401  isort: skip

try:  # written by the FPGA engineer on top of this registry; optional until it lands
    importlib.import_module("edgeattn.models.edge_moe_vit")
except ModuleNotFoundError as _exc:
    if _exc.name != "edgeattn.models.edge_moe_vit":
        raise

__all__ = [
    "approximation_kwargs",
    "is_language_model",
    "create_model",
    "list_models",
    "register_model",
    "model_entrypoint",
    "count_macs",
    "count_params",
    "eval_mode",
    "example_input",
]
