"""edgeattn: take attention models from PyTorch to edge hardware.

The spine of the package (``approx``, ``blocks``, ``models``, ``reparameterize`` and the device-profile
schema) imports nothing of ``edgeattn.quant``, ``edgeattn.export``, ``edgeattn.fpga_hls`` or the CLI.
"""

from __future__ import annotations

__version__ = "0.1.0"

# Imported eagerly (the module needs no torch) so that the package attribute `edgeattn.reparameterize` is
# the function, not the submodule of the same name.
from edgeattn.reparameterize import reparameterize  # noqa: E402

__all__ = ["__version__", "reparameterize"]
