"""A QAT run's output folder: the files a run writes (:data:`RUN_FILES`) and what ``--resume`` can continue
(:func:`resumable`); the checks, before any work, that ``--resume`` has the same settings and data as the run it
continues and that an ``fp_checkpoint`` holds this run's model, data and train/val split; ``--force``'s removal of
the previous run's files, and the lock that keeps a second run out of the folder while one lasts.

Part of the QAT trainer; :mod:`edgeattn.quant.train` re-exports its public names.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from edgeattn.quant.checkpoint import read_checkpoint_file
from edgeattn.quant.train_config import BUILTIN_DATA, TrainConfig

from edgeattn.data import LEGACY_RESIZE
from edgeattn.errors import EdgeAttnError

# Every file a run writes into its output directory: what --force removes and what marks a directory as holding a
# run. Nothing else in the directory is touched.
RUN_FILES = ("fp.pt", "ptq.pt", "qat_last.pt", "model.pt", "state.pt", "metrics.json", "result.json")
# Settings that --resume may change: they do not change a single number of the run (where it is written, how many
# threads compute it). Everything else, ``epochs`` included, must match: the lr schedule spans all the epochs, so a
# run extended by --epochs is not the run it would have been uninterrupted.
RESUME_FREE_KEYS = frozenset({"num_threads", "output_dir"})
STATE_KEYS = ("model", "optimizer", "scheduler", "rng", "history", "epoch", "config")


def resumable(out_dir: str | Path) -> bool:
    """Whether ``--resume`` can continue the run in ``out_dir``: it needs ``state.pt`` (a complete QAT epoch) or
    ``fp.pt`` (a finished FP training). A run stopped during FP training has neither and starts over with --force."""
    out_dir = Path(out_dir)
    return (out_dir / "state.pt").is_file() or (out_dir / "fp.pt").is_file()


def _dotted(d: dict[str, Any], key: str = "") -> dict[str, Any]:
    """Nested dicts as one level with dotted keys: {"a": {"b": 1}} -> {"a.b": 1}."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(_dotted(v, f"{key}{k}."))
        else:
            out[f"{key}{k}"] = v
    return out


def _difference(
    saved: dict[str, Any], current: dict[str, Any], ignore: frozenset[str] = frozenset()
) -> tuple[str, Any, Any] | None:
    """The first setting (a dotted key for nested ones) that differs between two settings mappings, as
    ``(key, saved value, current value)`` (``'<unset>'`` where one lacks it); ``None`` when they agree."""
    a = {k: v for k, v in _dotted(saved).items() if k.split(".")[0] not in ignore}
    b = {k: v for k, v in _dotted(current).items() if k.split(".")[0] not in ignore}
    for k in list(b) + [k for k in a if k not in b]:
        if a.get(k, "<unset>") != b.get(k, "<unset>"):
            return k, a.get(k, "<unset>"), b.get(k, "<unset>")
    return None


def teacher_fingerprint(state_dict: Any) -> str:
    """SHA-256 over an FP model's tensors (names, dtypes, shapes, bytes): the teacher a QAT run distils from.
    ``state.pt`` records it, so that ``--resume`` can refuse another FP model under the same path (or accept the
    same one under another spelling of it)."""
    import hashlib

    digest = hashlib.sha256()
    for name in sorted(state_dict):
        t = state_dict[name].detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def check_teacher(state: dict[str, Any] | None, fp_payload: dict[str, Any], fp_source: Path, out_dir: Path) -> None:
    """Refuse, in one line, to resume the QAT epochs of ``state`` with an FP teacher other than the one they were
    distilled from (``state["teacher_fingerprint"]``; a state from an older edgeattn records none). ``fp_payload``:
    the checkpoint file at ``fp_source`` as :func:`read_checkpoint_file` returned it."""
    recorded = (state or {}).get("teacher_fingerprint")
    if not recorded:
        return
    if teacher_fingerprint(fp_payload["state_dict"]) != recorded:
        raise EdgeAttnError(
            f"--resume: '{fp_source}' is not the FP model the run in '{out_dir}' distilled its QAT epochs from "
            "(its weights differ); resume with that FP model, or start a new run (--force or another --output)"
        )


def _check_resume_config(
    saved: Any, cfg: TrainConfig, source: Path, data_path: str | None = None, teacher_recorded: bool = False
) -> None:
    """Refuse to resume a run whose recorded settings differ from ``cfg`` (naming the first differing key).

    ``data_path``: the absolute path of the run's own data as recorded then (``data_meta``). With it, a folder or
    file is the same data when ``cfg.data`` resolves to that path, from whatever working directory and however
    spelled; a relative ``data`` that names another folder from here is refused. Without it (a file from an older
    edgeattn) the two ``data`` settings are compared as paths from the current working directory.
    ``teacher_recorded``: the state records its FP teacher's fingerprint (:func:`check_teacher` compares the
    content), so ``fp_checkpoint`` may be spelled another way (absolute, from another working directory)."""
    if not isinstance(saved, dict):
        raise EdgeAttnError(f"--resume: '{source}' records no run settings; rerun with --force to start over")
    # a setting added to TrainConfig after the run was written: the run had its default (e.g. augment_shift 0),
    # except resize, whose default is not what came before it: those runs stretched their images
    defaults = {**TrainConfig.model_construct().model_dump(mode="json"), "resize": LEGACY_RESIZE}
    saved = {**{k: v for k, v in defaults.items() if k not in saved}, **saved}
    ignore = RESUME_FREE_KEYS if _is_image_folder(cfg) else RESUME_FREE_KEYS | {"resize"}  # it changes no number
    if teacher_recorded and bool(saved.get("fp_checkpoint")) == bool(cfg.fp_checkpoint):
        ignore = ignore | {"fp_checkpoint"}  # the path's spelling: its content is checked by check_teacher
    if data_path is not None and cfg.data not in BUILTIN_DATA and saved.get("data") not in BUILTIN_DATA:
        now = str(Path(cfg.data).resolve())
        if now != data_path:
            raise EdgeAttnError(
                f"--resume: the run in '{source.parent}' was made with data={data_path!r}, not {now!r}; resume it "
                "with the same settings, or start a new run (--force or another --output)"
            )
        saved["data"] = cfg.data
    elif _same_data(saved.get("data"), cfg.data):  # the same folder or file, however spelled
        saved["data"] = cfg.data
    diff = _difference(saved, cfg.model_dump(mode="json"), ignore)
    if diff is not None:
        key, was, now = diff
        hint = " (more epochs are a new lr schedule: start a new run from its fp.pt)" if key == "epochs" else ""
        raise EdgeAttnError(
            f"--resume: the run in '{source.parent}' was made with {key}={was!r}, not {now!r}{hint}; resume it "
            "with the same settings, or start a new run (--force or another --output)"
        )


def _load_state(path: Path, cfg: TrainConfig) -> dict[str, Any]:
    """``state.pt`` for --resume, loaded with ``weights_only=True`` and checked against ``cfg``; a corrupt file, one
    from an older edgeattn (pickled numpy RNG state) or a run with other settings is one clear error."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for a bad file; every one means "cannot resume"
        raise EdgeAttnError(
            f"--resume: '{path}' cannot be read ({type(err).__name__}: corrupt, or written by an older edgeattn); "
            "rerun with --force to start over"
        ) from None
    if not isinstance(state, dict) or any(k not in state for k in STATE_KEYS):
        raise EdgeAttnError(f"--resume: '{path}' is not a QAT state file; rerun with --force to start over")
    # a state.pt from before it recorded data_path: the run's checkpoint of the same epoch has it
    data_path = state.get("data_path") or _checkpoint_data_path(path.parent / "qat_last.pt")
    _check_resume_config(state["config"], cfg, path, data_path, bool(state.get("teacher_fingerprint")))
    return state


def _checkpoint_data_path(path: Path) -> str | None:
    """The ``data_path`` a run's checkpoint records; ``None`` where it records none or cannot be read."""
    try:
        return read_checkpoint_file(path)["meta"].get("data_path")
    except EdgeAttnError:
        return None


def _state_fingerprint(state: dict[str, Any], out_dir: Path) -> str | None:
    """The data fingerprint a run's ``state.pt`` records, else its ``qat_last.pt`` of the same epoch (a state.pt
    from before it recorded one); ``None`` where neither does."""
    if state.get("data_fingerprint"):
        return state["data_fingerprint"]
    try:
        return read_checkpoint_file(out_dir / "qat_last.pt")["meta"].get("data_fingerprint")
    except EdgeAttnError:
        return None


def _check_same_content(recorded: str | None, info: dict[str, Any], what: str) -> None:
    """Refuse data whose content is not what a run or checkpoint was trained on: ``recorded`` (its
    ``data_fingerprint``) against this data's (``info``). Nothing to compare for built-in data or a record from
    before fingerprints (its classes are compared in :func:`_check_fp_meta`)."""
    now = info.get("data_fingerprint")
    if recorded is not None and now is not None and recorded != now:
        raise EdgeAttnError(
            f"{what} was trained on other content of this data: files were replaced, added, removed or renamed "
            "since (its data fingerprint differs); restore the data, or train a new model on it (a new run "
            "without that checkpoint)"
        )


def _is_image_folder(cfg: TrainConfig) -> bool:
    """Whether ``cfg.data`` is a user's image folder (the data that ``resize`` applies to)."""
    return cfg.data not in BUILTIN_DATA and Path(cfg.data).is_dir()


def _same_data(a: Any, b: str) -> bool:
    """Whether two ``data`` settings name the same data ('digits', 'stdlib', or the same path however spelled)."""
    if a == b:
        return True
    if not isinstance(a, str) or a in BUILTIN_DATA or b in BUILTIN_DATA:
        return False
    return Path(a).resolve() == Path(b).resolve()


def _check_fp_meta(
    meta: dict[str, Any],
    source: str,
    cfg: TrainConfig,
    kwargs: dict[str, Any],
    split: dict[str, Any],
    warn: bool,
    info: dict[str, Any] | None = None,
) -> None:
    """Refuse an FP checkpoint that is not the model this run describes, that was trained on another train/val
    split or whose class names (``meta["classes"]``, where recorded) are not the data's (``info["classes"]``): the
    same folder with a class renamed has the same count, so labels would silently mean other classes. Warn about
    one from an older edgeattn that does not record its split."""
    if meta.get("quant"):
        raise EdgeAttnError(f"fp_checkpoint '{source}' is quantized; give a float checkpoint")
    if meta.get("model") != cfg.model:
        raise EdgeAttnError(
            f"fp_checkpoint '{source}' holds a '{meta.get('model')}' model, this run is for '{cfg.model}'; "
            f"set model: {meta.get('model')} (and its model_kwargs) or use another checkpoint"
        )
    # compared in JSON form: a checkpoint keeps tuples where a YAML config gives lists. An approximation left out
    # is the factories' default, 'exact' (model_kwargs_for names only the others)
    saved_kwargs, run_kwargs = dict(meta.get("model_kwargs") or {}), dict(kwargs)
    for key in ("softmax", "gelu"):
        if (key in saved_kwargs) != (key in run_kwargs):
            saved_kwargs.setdefault(key, "exact")
            run_kwargs.setdefault(key, "exact")
    diff = _difference(_as_json({"model_kwargs": saved_kwargs}), _as_json({"model_kwargs": run_kwargs}))
    if diff is not None:
        key, was, now = diff
        raise EdgeAttnError(
            f"fp_checkpoint '{source}' was built with {key}={was!r}, this run has {now!r} (model_kwargs, "
            "the profile's approx, img_size, in_chans, seq_len and the data's classes must match)"
        )
    for op in ("softmax", "gelu"):  # methods set after construction, which save_checkpoint records
        saved_methods = (meta.get("approximations") or {}).get(op)
        if saved_methods and saved_methods != [run_kwargs.get(op, "exact")]:
            raise EdgeAttnError(
                f"fp_checkpoint '{source}' computes {op} {', '.join(saved_methods)}, this run builds "
                f"{run_kwargs.get(op, 'exact')!r} (the profile's approx and model_kwargs must match)"
            )
    # "data" as given (relative to the folder that run started in) or "data_path" (made absolute then): either
    # naming this run's data will do; the classes and split checks below still apply
    saved_data = [d for d in (meta.get("data"), meta.get("data_path")) if d is not None]
    if saved_data and not any(_same_data(d, cfg.data) for d in saved_data):  # none: an older edgeattn
        raise EdgeAttnError(
            f"fp_checkpoint '{source}' was trained on data '{saved_data[-1]}', this run uses '{cfg.data}'"
        )
    # a checkpoint that names its data was written by edgeattn qat, which stretched images before resize existed; one
    # that names none (saved from the Python API) says nothing about how its images were prepared
    was = meta.get("resize", LEGACY_RESIZE)
    if saved_data and _is_image_folder(cfg) and was != cfg.resize:
        raise EdgeAttnError(
            f"fp_checkpoint '{source}' was trained on images brought to img_size by resize={was!r}, this run has "
            f"resize={cfg.resize!r}; run with resize={was!r} or train a new FP model (no fp_checkpoint)"
        )
    saved_classes, run_classes = meta.get("classes"), (info or {}).get("classes")
    if saved_classes is not None and run_classes is not None and list(saved_classes) != list(run_classes):
        pairs = zip(list(saved_classes) + [None], list(run_classes) + [None], strict=False)
        label, (was, now) = next((i, ab) for i, ab in enumerate(pairs) if ab[0] != ab[1])
        raise EdgeAttnError(
            f"fp_checkpoint '{source}' was trained on other classes: label {label} is {was!r} there and "
            f"{now!r} in this data"
        )
    saved = meta.get("split")
    if saved is None:
        if warn:  # older checkpoints: still usable, but nothing says which samples the teacher saw
            print(
                f"warning: fp_checkpoint '{source}' does not record its train/val split (an older edgeattn wrote "
                f"it); its validation scores are only honest if it was trained with {split}",
                file=sys.stderr,
            )
        return
    diff = _difference(_as_json(saved), _as_json(split))
    if diff is not None:
        key, was, now = diff
        raise EdgeAttnError(
            f"fp_checkpoint '{source}' was trained with {key}={was!r}, this run has {key}={now!r}: another "
            f"train/val split, so the teacher would be evaluated on samples it was trained on; run with "
            f"{key}={was!r} or train a new FP model (no fp_checkpoint)"
        )


def _as_json(value: Any) -> Any:
    """``value`` as JSON would hold it (tuples become lists), for comparing settings saved in different forms."""
    return json.loads(json.dumps(value, default=str))


def _clear_run(out_dir: Path, keep: Path | None) -> None:
    """--force: remove the previous run's files (:data:`RUN_FILES` and their leftover temp files) from ``out_dir``,
    except ``keep`` (an --fp-checkpoint that lives there). Other files in the folder are left alone."""
    keep = keep.resolve() if keep is not None else None
    for name in RUN_FILES:
        # temp files of atomic writes: ".NAME.<random>.tmp" (checkpoints), ".NAME.<random><suffix>" (JSON)
        temps = [*out_dir.glob(f".{name}.*.tmp"), *out_dir.glob(f".{name}.*{Path(name).suffix}")]
        for path in [out_dir / name, *temps]:
            if path.is_file() and path.resolve() != keep:
                path.unlink()


@contextlib.contextmanager
def _output_lock(out_dir: Path, main: bool) -> Iterator[None]:
    """One ``edgeattn qat`` run per output folder at a time: the main process holds an exclusive ``flock`` on the
    folder while the run lasts, so a second run there (with --force, or started at the same moment) is refused in
    one line instead of mixing its files with the first's. A folder created here and left empty is removed."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no advisory locks
        fcntl = None
    if not main or fcntl is None:
        yield
        return
    created = False
    try:
        if not out_dir.exists():
            out_dir.mkdir(parents=True)
            created = True
        fd = os.open(out_dir, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:  # a file, or a folder that cannot be made: _run says so in one line
        yield
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise EdgeAttnError(
                f"output directory '{out_dir}' is in use by another edgeattn qat run; wait for it to finish or "
                "use another --output"
            ) from None
        yield
    finally:
        os.close(fd)
        if created:
            with contextlib.suppress(OSError):  # only while still empty
                out_dir.rmdir()
