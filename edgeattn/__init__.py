"""edgeattn: take attention models from PyTorch to edge hardware.

The spine of the package (``approx``, ``blocks``, ``models``, ``reparameterize`` and the device-profile
schema) imports nothing of ``edgeattn.quant``, ``edgeattn.export``, ``edgeattn.fpga_hls`` or the CLI.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__", "reparameterize"]


def __getattr__(name: str):
    # Lazy so that `import edgeattn` (and `edgeattn --version`) does not import torch.
    if name == "reparameterize":
        from edgeattn.reparameterize import reparameterize

        return reparameterize
    raise AttributeError(f"module 'edgeattn' has no attribute {name!r}")
