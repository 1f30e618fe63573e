"""The one OpenVINO ``Core`` of the process.

OpenVINO's CPU plugin (2026.4 measured) installs an alternate signal stack on the thread that creates it and
puts the previous one back when it is destroyed. Two plugins destroyed in the order they were created (two
``Core`` objects, or the compiled models that keep their plugins alive, released first-in first-out) leave
the thread's alternate stack pointing at freed memory, and the next signal handled on that thread (a Ctrl-C)
crashes the process with a segmentation fault. One ``Core`` kept for the life of the process creates the
plugin once and never destroys it early; it also spares reloading the plugins for every model.
"""

from __future__ import annotations

import functools
from typing import Any


@functools.cache
def openvino_core() -> Any:
    """The process-wide ``openvino.Core``. Pass settings per model to ``compile_model``, never ``set_property``:
    the ``Core`` is shared by everything that runs OpenVINO in this process."""
    import openvino as ov

    return ov.Core()
