"""Atomic file and folder writes: a reader never sees a half-written artifact, and a failure leaves none.

Temporary files and folders from :mod:`tempfile` are private (0600 / 0700); the finished artifact gets the
permissions a plain ``open()`` / ``mkdir()`` would have given it under the process umask.
"""

from __future__ import annotations

import errno
import functools
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from edgeattn.errors import EdgeAttnError


def current_umask() -> int:
    """The process umask, read without changing it where /proc allows (``os.umask`` must set it to query it)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def publish_modes(path: str | Path) -> None:
    """Give ``path`` (a file, or a folder and everything under it) the modes the umask gives new files; a file that
    was executable (the C simulation's ``build/csim.exe``) stays executable."""
    mask = current_umask()
    root = Path(path)
    dir_mode = 0o777 & ~mask

    def file_mode(f: str | Path) -> int:
        return (0o777 if os.stat(f).st_mode & 0o111 else 0o666) & ~mask

    if not root.is_dir():
        os.chmod(root, file_mode(root))
        return
    os.chmod(root, dir_mode)
    for dirpath, dirnames, filenames in os.walk(root):
        for d in dirnames:
            os.chmod(os.path.join(dirpath, d), dir_mode)
        for f in filenames:
            os.chmod(os.path.join(dirpath, f), file_mode(os.path.join(dirpath, f)))


@contextmanager
def atomic_path(path: str | Path, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary file path beside ``path``; when the block succeeds, it replaces ``path``.

    ``suffix`` (default: ``path``'s own) matters to writers that pick a format from the extension.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix or path.suffix)
    except OSError as exc:  # named by the path asked for, not the temporary file's
        raise EdgeAttnError(f"cannot write '{path}': {exc.strerror or exc}") from None
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        publish_modes(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def replaceable_dir(out_dir: str | Path) -> Path:
    """``out_dir`` as an absolute path, or an :class:`EdgeAttnError` if replacing it as a whole would be unsafe.

    Refused: the working directory or a folder above it (``-o .``, ``-o ..``: replacing it would delete the
    caller's own files and the folder they stand in), a folder :func:`refuse_protected` refuses (inside the running
    edgeattn package or the Python environment's libraries, or directly in ``sys.prefix``: ``-o .venv/lib``), one
    holding one of them or ``sys.prefix`` (``-o ~/project --force`` over the repository of an editable install), and
    an existing path that is not a folder.
    Callers check this before any long work, so bad output paths fail fast.
    """
    out = Path(out_dir).resolve()
    if is_within(Path.cwd(), out):
        raise EdgeAttnError(f"output folder '{out_dir}' is the working directory or holds it; name a new folder")
    refuse_protected(out_dir, "output folder")
    prefix = Path(sys.prefix).resolve()
    held = [(what, f) for what, f in protected_folders() if is_within(f, out)]
    held += [("this Python environment", prefix)] if is_within(prefix, out) else []
    if held:
        what, folder = held[0]
        raise EdgeAttnError(
            f"output folder '{out_dir}' holds {what} ({folder}); replacing it would delete it: name a new folder"
        )
    if out.exists() and not out.is_dir():
        raise EdgeAttnError(f"output folder '{out_dir}' exists and is not a folder")
    return out


@functools.lru_cache(maxsize=1)
def package_folders() -> tuple[Path, ...]:
    """The folders the running edgeattn is imported from: the package and the folders its subpackages map to
    (in an editable install ``export/``, ``quant/``, ``fpga_hls/`` and ``profiles/`` beside it), resolved."""
    import importlib.util

    folders: list[Path] = []
    for name in ("edgeattn", "edgeattn.export", "edgeattn.quant", "edgeattn.fpga_hls", "edgeattn.profiles"):
        spec = importlib.util.find_spec(name)
        for location in (spec.submodule_search_locations or []) if spec is not None else []:
            folder = Path(location).resolve()
            if folder not in folders:
                folders.append(folder)
    return tuple(folders)


def protected_folders() -> list[tuple[str, Path]]:
    """Folders no output may replace or be written into, each with a label for messages: those of the edgeattn
    package this process runs (its shipped profiles included) and the Python environment's library and script
    folders (``sysconfig``). :func:`replaceable_dir` also refuses a folder holding ``sys.prefix``."""
    import sysconfig

    found = [("the installed edgeattn package", folder) for folder in package_folders()]
    paths = sysconfig.get_paths()
    for key in ("stdlib", "platstdlib", "purelib", "platlib", "scripts"):
        folder = Path(paths[key]).resolve() if key in paths else None
        if folder is not None and all(folder != f for _, f in found):
            found.append(("this Python environment", folder))
    return found


def refuse_protected(path: str | Path, what: str) -> None:
    """:class:`EdgeAttnError` when writing ``path`` (a file, or a folder written into) would land in one of
    :func:`protected_folders` or directly in ``sys.prefix`` (a venv's ``pyvenv.cfg``). The location written is
    checked: a link there is replaced, not followed, so only its folder is resolved."""
    written = Path(os.path.abspath(path))
    written = written.parent.resolve() / written.name
    owners = [(label, f) for label, f in protected_folders() if written == f or f in written.parents]
    prefix = Path(sys.prefix).resolve()
    owners += [("this Python environment", prefix)] if written.parent == prefix else []
    if owners:
        label, folder = owners[0]
        raise EdgeAttnError(f"{what} '{path}' is inside {label} ({folder}); write it elsewhere")


def is_within(path: str | Path, folder: str | Path) -> bool:
    """Whether ``path`` is ``folder`` or lies inside it (both resolved: links and ``..`` followed), i.e. whether
    replacing ``folder`` as a whole would take ``path`` with it."""
    path, folder = Path(path).resolve(), Path(folder).resolve()
    return path == folder or folder in path.parents


def refuse_replacing_inputs(out_dir: str | Path, inputs: dict[str, str | Path | None]) -> None:
    """:class:`EdgeAttnError` when replacing ``out_dir`` as a whole would delete a file this command reads:
    ``inputs`` maps a label (``"the checkpoint"``) to a path (``None`` or a path that does not exist is skipped),
    and one that is ``out_dir`` or lies inside it is refused (``-o run1 --force`` beside ``run1/fp.pt``)."""
    for label, path in inputs.items():
        if path is None or not Path(path).exists():
            continue
        if is_within(path, out_dir):
            raise EdgeAttnError(
                f"output folder '{out_dir}' holds {label} '{path}', which this command reads; replacing the "
                "folder would delete it: name another folder"
            )


def check_writable_folder(folder: str | Path, what: str) -> None:
    """Raise an :class:`EdgeAttnError` (its message starts with ``what``) unless files can be created in
    ``folder``, or, if it does not exist yet, in its nearest existing ancestor (where it would be created). Checked
    before long work so that a path that cannot be written fails fast; the probe is a temporary file, removed at
    once, so nothing is left behind.

    Permission bits are checked first, then a real write is tried, because the bits do not always tell: root
    passes ``os.access`` on a read-only mount or on ``/proc``.
    """
    folder = Path(os.path.abspath(folder))
    ancestor = folder
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise EdgeAttnError(f"{what}: '{ancestor}' is not a folder")
    if not os.access(ancestor, os.W_OK | os.X_OK):  # the clearer message where permission bits do tell
        raise EdgeAttnError(f"{what}: folder '{ancestor}' is not writable")
    try:
        with tempfile.TemporaryFile(dir=ancestor, prefix=".edgeattn-probe-"):
            pass
    except OSError as exc:
        raise EdgeAttnError(f"{what}: cannot write in '{ancestor}' ({exc.strerror or exc})") from None


@contextmanager
def staging_dir(out_dir: str | Path, suffix: str = "", replace: bool = True) -> Iterator[Path]:
    """Yield an empty folder beside ``out_dir``; when the block succeeds it becomes ``out_dir``.

    An existing ``out_dir`` is replaced only then (callers check ``--force`` before entering); on failure the
    staging folder is removed and ``out_dir`` is left as it was. ``out_dir`` must pass :func:`replaceable_dir`.
    ``suffix`` ends the staging folder's name, for writers that insist on one (Core ML's ``.mlpackage``).
    ``replace=False`` (no ``--force``): an ``out_dir`` that appeared while the block ran (another run's) is never
    replaced, see :func:`publish_dir`; an empty one found here on entry still is, as the callers' checks allow.
    """
    out = replaceable_dir(out_dir)
    seen = dir_id(out)
    tmp: Path | None = None
    try:  # created inside the try: a Ctrl-C or SIGTERM right after it still removes it
        tmp = _new_staging_dir(out, out_dir, suffix)
        yield tmp
        publish_dir(tmp, out, replace=replace, seen=seen)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def make_staging_dir(out_dir: str | Path) -> Path:
    """Create and return an empty hidden folder beside ``out_dir`` (same parent: one filesystem, so that
    :func:`publish_dir` is a rename), for work that must not touch ``out_dir`` until it has ended. The caller
    publishes it with :func:`publish_dir` or keeps it with :func:`keep_aside`; :func:`staging_dir` is the
    all-or-nothing form. ``out_dir`` must pass :func:`replaceable_dir`."""
    return _new_staging_dir(replaceable_dir(out_dir), out_dir)


def _new_staging_dir(out: Path, out_dir: str | Path, suffix: str = "") -> Path:
    """The hidden staging folder beside ``out`` (``out_dir`` as :func:`replaceable_dir` returned it); a parent
    that cannot take it is refused first, in the words every command uses, naming the user's path ``out_dir`` (not
    the internal temporary name)."""
    check_writable_folder(out.parent, f"output folder '{out_dir}'")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-", suffix=suffix))
    except OSError as exc:  # e.g. a race with the check above
        raise EdgeAttnError(f"output folder '{out_dir}': cannot write beside it ({exc.strerror or exc})") from None


class OutputTakenError(EdgeAttnError):
    """The output folder was made by another run while this one worked, and ``--force`` was not given."""


def dir_id(path: str | Path) -> tuple[int, int] | None:
    """``path``'s identity (device, inode), to tell later whether it is still the same folder; None if absent."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


def publish_dir(
    tmp: str | Path, out_dir: str | Path, replace: bool = True, seen: tuple[int, int] | None = None
) -> None:
    """Make ``tmp`` (a folder beside ``out_dir``) become ``out_dir``, with the modes the umask gives.

    ``replace=True`` (``--force``): a previous ``out_dir`` is first renamed aside and deleted only once ``tmp`` has
    taken its place, so an interruption never leaves a mix of both, nor the old folder half-deleted with the new
    one lost. ``replace=False``: ``out_dir`` must not exist, except as the empty folder ``seen`` (its
    :func:`dir_id` when the run started, which the caller's start check let through); anything else, even an
    empty folder made meanwhile, raises :class:`OutputTakenError` and leaves ``tmp`` and ``out_dir`` as they are.
    Each case is one rename that cannot replace a folder holding files, so two runs never both publish.
    """
    tmp, out_dir = Path(tmp), Path(out_dir)
    publish_modes(tmp)  # files staged inside with mkstemp are private too
    if not replace:
        _publish_new(tmp, out_dir, seen)
        return
    if not out_dir.exists():
        os.replace(tmp, out_dir)
        return
    old = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.old-"))
    os.replace(out_dir, old)  # onto the empty folder just made: POSIX rename allows it
    os.replace(tmp, out_dir)
    shutil.rmtree(old, ignore_errors=True)


def _publish_new(tmp: Path, out_dir: Path, seen: tuple[int, int] | None) -> None:
    """:func:`publish_dir` without replacing: see there."""
    try:
        if seen is not None and dir_id(out_dir) == seen:
            # the empty folder found at the start: a POSIX rename replaces it only while it is still empty
            os.rename(tmp, out_dir)
        else:
            _rename_noreplace(tmp, out_dir)
    except (FileExistsError, NotADirectoryError, IsADirectoryError) as exc:
        raise OutputTakenError(
            f"output folder '{out_dir}' was created by another run while this one worked; "
            "rerun with --force to replace it"
        ) from exc
    except OSError as exc:  # EEXIST arrives as FileExistsError, above
        if exc.errno != errno.ENOTEMPTY:
            raise
        raise OutputTakenError(
            f"output folder '{out_dir}' was filled by another run while this one worked; "
            "rerun with --force to replace it"
        ) from exc


def _rename_noreplace(src: Path, dst: Path) -> None:
    """Rename the folder ``src`` to ``dst``, which must not exist (``FileExistsError`` otherwise, also for an
    empty folder, which a plain POSIX rename would silently replace). ``mkdir(dst)`` claims the name exclusively,
    and the rename then replaces only that empty folder of ours (it fails if someone put files in it meanwhile);
    a reader may see ``dst`` empty for that moment."""
    os.mkdir(dst)
    try:
        os.rename(src, dst)
    except OSError as exc:
        raise FileExistsError(exc.errno, exc.strerror, str(dst)) from None


def keep_aside(tmp: str | Path, out_dir: str | Path, label: str) -> Path:
    """Rename ``tmp`` (a folder beside ``out_dir``) to a visible, new ``NAME.LABEL-YYYYmmdd-HHMMSS`` beside
    ``out_dir``, and return that path: for an unfinished run that the user may inspect, while ``out_dir`` keeps
    what it held."""
    tmp, out_dir = Path(tmp), Path(out_dir)
    base = out_dir.parent / f"{out_dir.name}.{label}-{time.strftime('%Y%m%d-%H%M%S')}"
    target, n = base, 1
    while target.exists():  # never replace an earlier kept folder
        n += 1
        target = base.with_name(f"{base.name}-{n}")
    os.rename(tmp, target)
    return target
