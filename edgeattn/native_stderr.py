"""Discard what native (C/C++) libraries write to standard error during a block.

Python-level redirects (``contextlib.redirect_stderr``) cannot catch a C++ library's writes to ``std::cerr`` or
abseil's log: those go to file descriptor 2 directly. The CLI promises one error line for bad input, so the
few calls known to log there before raising (torch's TorchScript exporter, OpenVINO's frontends probing a file)
run inside :func:`native_stderr_discarded`; their exceptions still carry the message the user sees.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from collections.abc import Iterator

__all__ = ["native_stderr_discarded"]


@contextlib.contextmanager
def native_stderr_discarded() -> Iterator[None]:
    """Send file descriptor 2 to a discarded temporary file for the block; standard output is left alone."""
    with contextlib.suppress(Exception):
        sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # no such descriptor (an embedded interpreter): nothing to silence
        yield
        return
    try:
        with tempfile.TemporaryFile() as sink:
            os.dup2(sink.fileno(), 2)
            yield
    finally:
        with contextlib.suppress(Exception):
            sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
