"""``export_model``: one export run (model -> deploy form -> artifact -> parity gate -> report.json).

Everything is built in a temporary directory next to ``out_dir`` and renamed into place at the end, so a
failed run leaves nothing half-written; a run whose parity gate fails still writes its artifact, under a
name containing ``FAILED_PARITY``, and its report, then raises :class:`ParityFailure` (exit code 3). A TensorRT
lint error writes the report alone (every finding in ``lint``, no artifact) and raises :class:`LintFailure` (exit 5).

This module holds the public entry points (:func:`export_model`, :func:`export_all`) and the run itself (argument
checks, the deploy form, PTQ, the reference, staging, the failure messages). The rest lives beside it:
``sources`` (model resolution: what ``model`` can be, the checks on models, checkpoints and profiles),
``inputs`` (the parity inputs, PTQ calibration data and argument checks) and ``runners`` (the per-target runners
and their parity gates). The names they held here are imported back, so ``edgeattn.export.api`` still offers them.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import math
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from edgeattn.export.inputs import (
    _calibration_batches,
    _calibration_note,
    _check_arg_types,
    _check_batch_fits,
    _check_sample_shape,
    _checked_samples,
    _own_data_notes,
    _parity_inputs,
    _refuse_coreml_flags,
)
from edgeattn.export.inputs import _own_data as _own_data
from edgeattn.export.report import ExportReport, LintFailure, ParityFailure, environment, write_report
from edgeattn.export.runners import _cached, _Job, _run_coreml, _run_onnx_based
from edgeattn.export.sources import QCDQ_MAX_BITS as QCDQ_MAX_BITS
from edgeattn.export.sources import (
    TARGETS,
    TOKEN_ID_DTYPES,
    _check_model_arg,
    _checkpoint_section,
    _gap_line,
    _input_shape,
    _is_float_source,
    _load_adaptive,
    _refuse_unsupported_input,
    _refuse_wide_model_bits,
    _refuse_wide_profile_bits,
    _token_adaptive_gap,
    is_token_model,
    resolve_model,
)
from edgeattn.export.sources import TOKEN_TARGETS as TOKEN_TARGETS

from edgeattn.atomic import OutputTakenError, refuse_replacing_inputs, replaceable_dir, staging_dir
from edgeattn.errors import EdgeAttnError
from edgeattn.hostinfo import MAX_THREADS

# the ``name as name`` imports above are not used here: they keep edgeattn.export.api offering what it held
__all__ = ["DEFAULT_PROFILES", "MAX_N_INPUTS", "MAX_THREADS", "TARGETS", "export_all", "export_model", "resolve_model"]

FAILED_TAG = "FAILED_PARITY"
# the profile each target uses in export_all unless told otherwise. ONNX Runtime and OpenVINO run their parity
# checks on this machine's CPU, so they get host-cpu: 8-bit on a VNNI CPU, 7-bit weights and K/V on one without
# (whose int8 kernels saturate with 8 bits)
DEFAULT_PROFILES = {
    "onnx": "host-cpu",
    "tensorrt": "jetson-orin-trt10",
    "openvino": "host-cpu",
    "coreml": "apple-a17-coreml",
}

# parity inputs, and every runtime's outputs for them, are held in memory at once: a gate needs tens, and
# 100 million token windows asked numpy for 47.7 GiB
MAX_N_INPUTS = 4096


def _check_counts(n_inputs: int, threads: int) -> None:
    """Refuse ``--n-inputs`` and ``--threads`` outside their bounds, before any work (exit code 2)."""
    for flag, value, top in (("--n-inputs", n_inputs, MAX_N_INPUTS), ("--threads", threads, MAX_THREADS)):
        if value < 1:
            raise EdgeAttnError(f"{flag} must be >= 1, got {value}")
        if value > top:
            raise EdgeAttnError(f"{flag} must be <= {top}, got {value}")

# ----------------------------------------------------------------------------------------------------------
# the run
# ----------------------------------------------------------------------------------------------------------
def export_model(
    model: Any,
    target: str,
    profile: Any,
    out_dir: str | Path,
    *,
    precision: str | None = None,
    checkpoint: str | None = None,
    opset: int | None = None,
    batch: int | None = None,
    dynamic_batch: bool | None = None,
    atol: float | None = None,
    force: bool = False,
    n_inputs: int = 32,
    inputs: np.ndarray | None = None,
    calib_inputs: Any = None,
    model_kwargs: dict[str, Any] | None = None,
    exporter: str = "torchscript",
    cpu_isa: str | None = None,
    threads: int = 2,
    seed: int = 0,
    cache: dict | None = None,
    torch_threads: int | None = 1,
    noise_floor: bool = True,
) -> ExportReport:
    """Export ``model`` for ``target`` with ``profile`` into ``out_dir`` and run the parity gate.

    Args:
        model: a registry name, a checkpoint path written by ``edgeattn qat``, or an ``nn.Module`` (float or
            brevitas-quantized; float modules are reparameterized, quantized ones are taken as deploy form).
            The export works on a copy; forward hooks registered on the module come with it, so they run (and are
            traced) while the copy is probed, exported and checked.
        target: ``onnx``, ``tensorrt``, ``openvino`` or ``coreml``.
        profile: a DeviceProfile or a profile name/path; it must list ``target``.
        out_dir: created; an existing directory needs ``force=True``.
        precision: ``fp32``/``fp16``/``int8`` (default: the profile's). INT8 of a float model runs PTQ
            (edgeattn.quant.ptq with the profile's bits) on ``calib_inputs`` or digits samples, except for
            Core ML, where it means int8 *weights* only (coremltools' linear weight quantization; activations
            stay in the compute precision, no PTQ). For Core ML an explicit ``fp32``/``fp16`` sets the compute
            precision; left out, the profile's ``coreml.compute_precision`` applies.
        atol: overrides the profile's ``max_abs`` tolerance (fraction of the output range).
        n_inputs / inputs: parity inputs (``inputs`` replaces the generated ones), 1 to :data:`MAX_N_INPUTS`.
            With a static batch there must be at least one batch of them (the first batch is also the example
            the model is traced with). ``inputs`` (finite, ``(N, ...)``) sets the export input of a module
            without ``input_size`` to ``(batch, *inputs.shape[1:])``; a module with one must match it.
        seed: draws the generated parity inputs, the PTQ calibration batches and a registry model's random
            weights (the same artifact and figures on every run).
        cpu_isa: run OpenVINO's CPU plugin capped at this oneDNN ISA (e.g. ``"AVX2"``, any case; one of
            :data:`edgeattn.export.openvino_target.ONEDNN_ISAS`) in a child process.
        cache: a dict shared by several calls in one process (e.g. one model to several targets, see
            :func:`export_all`): the resolved/deploy/PTQ'd model, the calibration data, the torch reference
            outputs, the exported ONNX and its ONNX Runtime (no-optimisation) outputs are reused when their
            inputs are the same (registry names only; in-memory modules are keyed by identity).
        threads: intra-op threads of the runtimes under test (ONNX Runtime, OpenVINO), 1 to :data:`MAX_THREADS`.
        noise_floor: a quantized model that misses the profile's tolerance is judged again with it widened
            to twice the reference's rounding noise floor, at most 4x the profile's
            (:mod:`edgeattn.export.noise_floor`); the report says when a gate passed only that way. False
            keeps the profile's tolerance as the last word.
        torch_threads: torch's intra-op threads while the run does torch work (PTQ calibration, the
            reference forward, tracing, the Core ML reference evaluator); restored afterwards. The default 1
            is deliberate: that work is thousands of small ops, each of which pays a thread-pool barrier;
            on a loaded 2-core machine one barrier costs milliseconds (a batch-1 fmvit_t fake-quant forward
            measured 6.0 s with 2 threads vs 0.06 s with 1, docs/export.md). ``None`` leaves torch's
            setting alone.
    Returns the :class:`ExportReport` (also written to ``out_dir/report.json``). Raises
    :class:`ParityFailure` (exit 3) after writing everything when a gate fails, and :class:`LintFailure` (exit 5)
    after writing report.json alone (every finding, no artifact) when TensorRT's lint finds an error.
    """
    _check_arg_types({k: v for k, v in locals().items() if k not in ("model", "profile")})
    with _torch_threads(torch_threads):
        return _export_model(
            model,
            target,
            profile,
            out_dir,
            precision=precision,
            checkpoint=checkpoint,
            opset=opset,
            batch=batch,
            dynamic_batch=dynamic_batch,
            atol=atol,
            force=force,
            n_inputs=n_inputs,
            inputs=inputs,
            calib_inputs=calib_inputs,
            model_kwargs=model_kwargs,
            exporter=exporter,
            cpu_isa=cpu_isa,
            threads=threads,
            seed=seed,
            cache=cache,
            noise_floor=noise_floor,
        )


# the keyword arguments export_all passes on (taken once: tests replace export_model with stand-ins)
_EXPORT_ARGS = frozenset(inspect.signature(export_model).parameters) - {"model", "target", "profile", "out_dir"}


@contextlib.contextmanager
def _torch_threads(n: int | None):
    """torch's intra-op thread count set to ``n`` for the block, then restored (``None``: untouched)."""
    if n is None:
        yield
        return
    if n < 1:
        raise EdgeAttnError(f"torch_threads must be >= 1, got {n}")
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextlib.contextmanager
def _staged(out: Path, force: bool) -> Iterator[Path]:
    """:func:`staging_dir` for ``out``: without ``force`` a folder another run published there meanwhile is not
    replaced but refused, with the exit code of the start check's refusal (6)."""
    try:
        with staging_dir(out, replace=force) as stage:
            yield stage
    except OutputTakenError as exc:
        exc.exit_code = 6
        raise


def _export_model(
    model: Any,
    target: str,
    profile: Any,
    out_dir: str | Path,
    *,
    precision: str | None,
    checkpoint: str | None,
    opset: int | None,
    batch: int | None,
    dynamic_batch: bool | None,
    atol: float | None,
    force: bool,
    n_inputs: int,
    inputs: np.ndarray | None,
    calib_inputs: Any,
    model_kwargs: dict[str, Any] | None,
    exporter: str,
    cpu_isa: str | None,
    threads: int,
    seed: int,
    cache: dict | None,
    noise_floor: bool,
) -> ExportReport:
    from edgeattn.device_profile import DeviceProfile, load_profile

    t_start = time.perf_counter()
    model = _check_model_arg(model)
    inputs = _checked_samples("inputs", inputs)
    calib_inputs = _checked_samples("calib_inputs", calib_inputs)
    sample_shape = None if inputs is None else tuple(inputs.shape)
    if target not in TARGETS:
        raise EdgeAttnError(f"unknown target '{target}'; choose one of {', '.join(TARGETS)}")
    prof = profile if isinstance(profile, DeviceProfile) else load_profile(profile)
    prof.require_target(target)
    if precision is not None and precision not in ("fp32", "fp16", "int8"):
        raise EdgeAttnError(f"--precision must be fp32, fp16 or int8, got '{precision}'")
    if opset is not None and not 13 <= opset <= 23:
        raise EdgeAttnError(f"--opset must be between 13 and 23, got {opset}")
    if batch is not None and batch < 1:
        raise EdgeAttnError(f"--batch must be >= 1, got {batch}")
    _check_counts(n_inputs, threads)
    if atol is not None and not (math.isfinite(atol) and atol > 0):
        raise EdgeAttnError(f"--atol must be a finite number > 0 (a fraction of the output range), got {atol}")
    if cpu_isa is not None:
        from edgeattn.export.openvino_target import normalize_isa

        cpu_isa = normalize_isa(cpu_isa)
        if target != "openvino":  # only OpenVINO's CPU plugin runs oneDNN kernels that the cap applies to
            raise EdgeAttnError(f"--cpu-isa applies to --target openvino only, not {target}")
    if target == "coreml":
        _refuse_coreml_flags(opset, exporter, dynamic_batch)
    _check_batch_fits(target, prof, batch, dynamic_batch, n_inputs, inputs)
    if (precision or prof.precision) == "int8" and _is_float_source(model, checkpoint):
        _refuse_wide_profile_bits(target, prof)  # a float checkpoint is checked once loaded, before its PTQ
    out = replaceable_dir(out_dir)  # refuses '.', a folder above it, a file: before any work
    refuse_replacing_inputs(out_dir, _path_inputs(model, checkpoint, profile))
    _require_backend(target)
    if out.exists() and any(out.iterdir()) and not force:
        raise EdgeAttnError(
            f"output directory '{out_dir}' exists and is not empty; pass --force to replace it", exit_code=6
        )

    model_key = (
        model if isinstance(model, str) else id(model),
        repr(sorted((model_kwargs or {}).items())),
        checkpoint,
        repr(prof.export.input_shape),
        prof.approx.softmax,
        prof.approx.gelu,
        None if sample_shape is None else sample_shape[1:],
    )
    stage_s: dict[str, float] = {}  # seconds per stage; ~0 where the cache served it
    t0 = time.perf_counter()
    module, name, meta = _cached(
        cache,
        ("model", *model_key, seed),
        lambda: resolve_model(model, checkpoint, prof, model_kwargs, seed, sample_shape),
    )
    _refuse_unsupported_input(name, module, target)
    if sample_shape is not None:
        _check_sample_shape(module, sample_shape)
    from edgeattn.export.onnx_export import is_quantized
    from edgeattn.quant.adaptive import has_token_adaptive, strip_token_adaptive

    # per-token mixed precision has no ONNX form: export (and check against) the model with every token at act_bits
    # (a checkpoint comes stripped by _load_ckpt; its meta says it was token-adaptive)
    token_adaptive = bool(((meta or {}).get("quant") or {}).get("token_adaptive"))
    adaptive = None  # an in-memory model as trained, per-token bits included (a checkpoint's is loaded for the gap)
    if has_token_adaptive(module):
        token_adaptive = True
        adaptive = module
        module = _cached(cache, ("strip", *model_key), lambda: strip_token_adaptive(copy.deepcopy(module)))
    quantized = is_quantized(module)
    ckpt = _checkpoint_section(model, checkpoint, module, meta, prof, token_adaptive)  # before any PTQ
    if quantized and ckpt:
        _refuse_wide_model_bits(target, ckpt)
    if not quantized and not (meta or {}).get("reparameterized"):
        from edgeattn.reparameterize import reparameterize

        module = _cached(cache, ("deploy", *model_key), lambda: reparameterize(module).eval())
    stage_s["model"] = round(time.perf_counter() - t0, 3)
    prec = precision or prof.precision
    if quantized and prec != "int8":
        if precision is not None:
            raise EdgeAttnError(f"the model is quantized: it exports as int8, not {precision}")
        prec = "int8"
    # a profile that says fp32 but computes Core ML in fp16 is judged as fp16; an explicit --precision fp32 wins
    if (
        target == "coreml"
        and precision is None
        and prec == "fp32"
        and prof.coreml
        and prof.coreml.compute_precision == "fp16"
    ):
        prec = "fp16"
    shape = _input_shape(module, prof, batch, sample_shape)
    vocab = int(module.vocab_size) if is_token_model(module) else None  # token ids in [0, vocab)
    dyn = prof.export.dynamic_batch if dynamic_batch is None else dynamic_batch
    notes: list[str] = [ckpt["note"]] if ckpt and ckpt["note"] else []
    if target == "coreml" and dyn:  # only the profile can ask for it here: the flag is refused above
        notes.append(f"the profile's dynamic_batch does not apply to Core ML: a static batch of {shape[0]}")
        dyn = False
    ta_note = len(notes)  # the index of the stripping note, which the measured gap completes
    if token_adaptive:
        notes.append(
            "token-adaptive bits stripped (edgeattn.quant.adaptive.strip_token_adaptive): every token runs at the "
            "model's act_bits, and parity is checked against that model"
        )
    calibrated = prec == "int8" and not quantized and target != "coreml"
    if calibrated:
        _refuse_wide_profile_bits(target, prof)
        from edgeattn.quant import ptq

        calib_key = ("ptq", *model_key, prof.quant.model_dump_json(), shape, seed)
        t0 = time.perf_counter()
        shared = cache if calib_inputs is None else None
        batches = _cached(
            shared,
            ("calib", shape, seed, vocab, *map((meta or {}).get, ("data_path", "resize", "data_fingerprint"))),
            lambda: _calibration_batches(shape, calib_inputs, seed, vocab, meta),
        )
        module = _cached(shared, calib_key, lambda: ptq(module, prof, batches).eval())
        stage_s["ptq"] = round(time.perf_counter() - t0, 3)
        quantized = True
        if ckpt:
            ckpt["profile_quant_applied"] = True
        notes.append("float model quantized by PTQ (edgeattn.quant.ptq) with the profile's bit widths")
        if calib_inputs is None and (note := _calibration_note(batches, shape, vocab, meta)):
            notes.append(note)
    elif prec == "int8" and not quantized:  # Core ML
        notes.append(
            "Core ML int8 of a float model: weights stored int8 by coremltools' linear_quantize_weights, "
            "activations in the compute precision (no PTQ; quantize the model first for W8A8)"
        )

    tol = prof.tolerance_for(prec)
    if atol is not None:
        tol = tol.model_copy(update={"max_abs": float(atol)})
    x, counts = _parity_inputs(shape, n_inputs, meta, seed, inputs, vocab)
    notes += _own_data_notes(meta, counts, shape, vocab, calibrated and calib_inputs is None)
    run = len(x) if dyn else len(x) // shape[0] * shape[0]  # a static-batch artifact runs whole batches only
    if run < len(x):
        notes.append(
            f"{len(x) - run} of the {len(x)} parity inputs do not fill a last static batch of {shape[0]} and "
            f"were not run: the gates compare {run}"
        )
    report = ExportReport(
        model=name,
        target=target,
        precision=prec,
        profile=prof.model_dump(mode="json"),
        out_dir=str(out),
        checkpoint=ckpt,
        settings={
            "opset": None if target == "coreml" else opset or prof.export.opset,
            "exporter": None if target == "coreml" else exporter,
            "batch": shape[0],
            "dynamic_batch": dyn,
            "threads": threads,
            "cpu_isa": cpu_isa,
            "noise_floor": noise_floor,
            "seed": seed,
        },
        inputs=[
            {
                "name": "input",
                "shape": ["batch" if dyn else shape[0], *shape[1:]],
                "dtype": TOKEN_ID_DTYPES[target] if vocab is not None else "float32",
            }
        ],
        parity_inputs=counts,
        notes=notes,
        versions=environment(),
    )
    from edgeattn.export.parity import reference_outputs

    ref_key = ("ref", id(module), x.shape, float(x.sum()))
    t0 = time.perf_counter()
    ref = _cached(cache, ref_key, lambda: reference_outputs(module, x))
    stage_s["reference"] = round(time.perf_counter() - t0, 3)
    if not np.isfinite(ref).all():  # nothing to gate against: refused before any artifact is staged
        bad = int((~np.isfinite(ref)).sum())
        raise EdgeAttnError(
            f"{name}'s torch output on the parity inputs is not finite ({bad} of {ref.size} values NaN or inf): "
            "the parity gate has no reference to compare with; check the model's forward (a division by zero, "
            "an overflow) and its inputs"
        )
    if token_adaptive and ckpt is not None:
        t0 = time.perf_counter()
        gap, problem = None, ""
        try:
            gap = _cached(
                cache,
                ("ta-gap", *model_key, x.shape, float(x.sum())),
                lambda: _token_adaptive_gap(adaptive if adaptive is not None else _load_adaptive(ckpt["path"]), x, ref),
            )
        except EdgeAttnError as exc:  # a file from before pooled-key scores loads only stripped
            problem = str(exc)
        ckpt["token_adaptive_gap"] = gap
        notes[ta_note] += _gap_line(gap, problem)
        stage_s["token_adaptive_gap"] = round(time.perf_counter() - t0, 3)
    report.timings_s.update(stage_s)
    report.outputs = [
        {"name": "output", "shape": ["batch" if dyn else shape[0], *ref.shape[1:]], "dtype": "float32"}
    ]

    import torch

    # staged beside ``out``; renamed into place (replacing an old ``out``) only when the block succeeds
    with _staged(out, force) as stage:
        example = torch.from_numpy(np.ascontiguousarray(x[: shape[0]]))
        job = _Job(
            module=module,
            example=example,
            prof=prof,
            prec=prec,
            target=target,
            stage=stage,
            x=x,
            ref=ref,
            tol=tol,
            report=report,
            opset=opset or prof.export.opset,
            dyn=dyn,
            exporter=exporter,
            cpu_isa=cpu_isa,
            threads=threads,
            shape=shape,
            cache=cache,
            noise_floor=noise_floor and quantized,
            atol_given=atol is not None,
        )
        (_run_coreml if target == "coreml" else _run_onnx_based)(job)
        report.passed = all(p["passed"] for p in report.parity) and not job.lint_errors
        if job.lint_errors:  # TensorRT rejects the graph: no artifact, the report says why
            for path in report.artifacts.values():
                Path(path).unlink()
            report.artifacts = {}
        elif not report.passed:
            _tag_failed(stage, report)
        report.timings_s["total"] = round(time.perf_counter() - t_start, 3)
        # report.json names where the artifacts will be, not the staging folder
        report.artifacts = {k: str(out / Path(v).name) for k, v in report.artifacts.items()}
        write_report(stage / "report.json", report)
    if job.lint_errors:
        first, more = job.lint_errors[0], len(job.lint_errors) - 1
        raise LintFailure(
            f"tensorrt: {first.line(prof.name)}{f' (+{more} more)' if more else ''}; every finding in "
            f"{out / 'report.json'} (lint)",
            report,
        )
    if not report.passed:
        failed = [p for p in report.parity if not p["passed"]]
        first = failed[0]
        where = ""
        named = next((p for p in failed if p.get("first_diverging_node")), None)
        if named is not None:  # the first failed gate may be one that is not bisected (onnxruntime-noopt)
            d = named["first_diverging_node"]
            runtime = "" if named is first else f" in {named['runtime']}"
            where = f"; first diverging node {d['node']} ({d['op_type']}){runtime}"
        hint = _saturation_hint(module, first["runtime"], cpu_isa, (meta or {}).get("quant"))
        raise ParityFailure(
            f"parity gate failed for {name} on {first['runtime']}: {'; '.join(first['failures'])}{where}{hint} "
            f"(report: {out / 'report.json'})",
            report,
        )
    return report


# oneDNN ISAs without VNNI: their int8 kernels add u8 x s8 products in pairs in 16 bits (vpmaddubsw)
_NO_VNNI_ISAS = frozenset({"SSE41", "AVX", "AVX2", "AVX512_CORE"})


def _saturation_hint(module: Any, runtime: str, cpu_isa: str | None, quant: dict[str, Any] | None = None) -> str:
    """The likely cause when a CPU int8 runtime fails on a CPU (or ISA cap) without VNNI and the model has 8-bit
    weights or 8-bit K/V, which saturate those kernels' 16-bit pair sums; '' when that is not the case. ``quant``
    (a checkpoint's QuantConfig as a dict) lets it name the ``overrides`` patterns that set the wide weights."""
    if not runtime.startswith(("openvino", "onnxruntime")) or runtime == "onnxruntime-noopt":
        return ""  # ONNX Runtime without graph optimisations computes exact integers
    if cpu_isa:  # already normalised (upper case) by export_model
        no_vnni = cpu_isa in _NO_VNNI_ISAS
    else:
        from edgeattn.hostinfo import detect_host

        no_vnni = detect_host().recommended_kv_max_bits is not None
    if not no_vnni:
        return ""
    from brevitas import nn as qnn
    from edgeattn.quant.config import KV_POINTS

    layers = (qnn.QuantLinear, qnn.QuantConv1d, qnn.QuantConv2d)
    wide_layers = [
        n for n, m in module.named_modules() if isinstance(m, layers) and float(m.weight_quant.bit_width()) > 7
    ]
    weights = bool(wide_layers)
    kv = any(
        float(m.act_quant.bit_width()) > 7
        for n, m in module.named_modules()
        if isinstance(m, qnn.QuantIdentity) and n.endswith(KV_POINTS)
    )
    wide = [what for what, is_wide in (("weights", weights), ("K/V", kv)) if is_wide]
    if not wide:
        return ""
    cpu = f"the {cpu_isa} cap" if cpu_isa else "this CPU"
    patterns = _wide_weight_overrides(wide_layers, quant)
    cause = (
        f" (set by quant.overrides {', '.join(repr(p) for p in patterns)}: give them weight_bits 7 or less)"
        if patterns
        else ""
    )
    return (
        f"; {cpu} has no VNNI: its int8 kernels add products in pairs in 16 bits, and the model's 8-bit "
        f"{' and '.join(wide)}{cause} saturate them; quantize for host-cpu or intel-avx2-openvino (7-bit weights, K "
        "and V)"
    )


def _wide_weight_overrides(layers: list[str], quant: dict[str, Any] | None) -> list[str]:
    """The ``overrides`` patterns of a checkpoint's QuantConfig (``quant``) that gave any of ``layers`` (module
    names) more than 7 weight bits: for each layer the last matching pattern with ``weight_bits``, as
    :meth:`edgeattn.quant.config.QuantConfig.weight_bits_for` picks it."""
    from edgeattn.quant.config import matches_module

    overrides = (quant or {}).get("overrides") or {}
    setting = [p for p, o in overrides.items() if (o or {}).get("weight_bits") is not None]
    found: list[str] = []
    for name in layers:
        chosen = [p for p in setting if matches_module(name, p)]
        if chosen and overrides[chosen[-1]]["weight_bits"] > 7 and chosen[-1] not in found:
            found.append(chosen[-1])
    return found


def _path_inputs(model: Any, checkpoint: Any, profile: Any) -> dict[str, Any]:
    """The files an export reads that a user names by path: a checkpoint given as the model or as ``checkpoint``,
    and a profile YAML (a shipped profile name or a DeviceProfile is no file)."""
    from edgeattn.device_profile import names_a_file

    paths: dict[str, Any] = {"the checkpoint": checkpoint}
    if isinstance(model, str | Path) and Path(model).suffix in (".pt", ".pth"):
        paths["the model checkpoint"] = model
    if isinstance(profile, str | Path) and names_a_file(profile):
        paths["the profile"] = profile
    return paths


def export_all(
    model: Any,
    out_dir: str | Path,
    targets: Any = TARGETS,
    profiles: dict[str, Any] | None = None,
    *,
    force: bool = False,
    **kwargs: Any,
) -> dict[str, ExportReport]:
    """Export ``model`` to several targets in one run, into ``out_dir/<target>/`` each.

    One process, one shared cache: the model, its deploy form, each distinct PTQ model, the calibration
    data, the torch reference outputs, each distinct ONNX export and its ONNX Runtime (no-optimisation)
    outputs are built once and reused by every target they fit. Every target still runs its own parity gates
    with its own profile's tolerances. ``profiles`` maps target -> profile (name, path or DeviceProfile);
    missing targets use :data:`DEFAULT_PROFILES`. ``kwargs`` go to :func:`export_model` (``cache`` is
    supplied here). All targets and profiles are checked, and every ``out_dir/<target>`` for emptiness,
    before any work starts. A target whose gate fails does not stop the others; after all ran,
    :class:`ParityFailure` is raised for the first failure, with ``reports`` (every report) attached.
    Returns ``{target: report}``.
    """
    from edgeattn.device_profile import DeviceProfile, load_profile

    if "cache" in kwargs:
        raise EdgeAttnError("export_all builds its own cache; do not pass cache=")
    unknown_args = sorted(set(kwargs) - _EXPORT_ARGS)
    if unknown_args:
        raise EdgeAttnError(f"export_all got an unexpected argument '{unknown_args[0]}'")
    _check_arg_types({"out_dir": out_dir, "force": force, **kwargs})
    for key in ("inputs", "calib_inputs"):
        kwargs[key] = _checked_samples(key, kwargs.get(key))
    if isinstance(targets, str):
        targets = [targets]
    elif not isinstance(targets, (list, tuple, set, frozenset)) or not all(isinstance(t, str) for t in targets):
        raise EdgeAttnError(f"targets must be a target name or a list of them, got {targets!r}")
    targets = list(targets)
    if profiles is not None and not isinstance(profiles, dict):
        raise EdgeAttnError(f"profiles must be a dict of target -> profile, got {type(profiles).__name__}")
    if not targets:
        raise EdgeAttnError("export_all needs at least one target")
    unknown = [t for t in targets if t not in TARGETS]
    if unknown:
        raise EdgeAttnError(f"unknown target '{unknown[0]}'; choose from {', '.join(TARGETS)}")
    if len(set(targets)) != len(targets):
        raise EdgeAttnError(f"targets must be distinct, got {', '.join(targets)}")
    extra = sorted(set(profiles or {}) - set(targets))
    if extra:
        raise EdgeAttnError(f"profiles given for targets not exported: {', '.join(extra)}")
    _check_counts(kwargs.get("n_inputs", 32), kwargs.get("threads", 2))
    float_source = _is_float_source(_check_model_arg(model), kwargs.get("checkpoint"))
    resolved = {}
    for t in targets:
        p = (profiles or {}).get(t, DEFAULT_PROFILES[t])
        resolved[t] = p if isinstance(p, DeviceProfile) else load_profile(p)
        resolved[t].require_target(t)
        if float_source and (kwargs.get("precision") or resolved[t].precision) == "int8":
            _refuse_wide_profile_bits(t, resolved[t])  # before any target's work
        _check_batch_fits(
            t,
            resolved[t],
            kwargs.get("batch"),
            kwargs.get("dynamic_batch"),
            kwargs.get("n_inputs", 32),
            kwargs.get("inputs"),
        )
        _require_backend(t)
    if targets == ["coreml"]:
        _refuse_coreml_flags(kwargs.get("opset"), kwargs.get("exporter", "torchscript"), kwargs.get("dynamic_batch"))
    if kwargs.get("cpu_isa") is not None:
        from edgeattn.export.openvino_target import normalize_isa

        normalize_isa(kwargs["cpu_isa"])
        if "openvino" not in targets:  # the cap is for OpenVINO's kernels: without it, nothing would be capped
            raise EdgeAttnError("--cpu-isa applies to the openvino target, which is not among the targets")
    root = Path(out_dir)
    if root.exists() and not root.is_dir():
        raise EdgeAttnError(f"output folder '{out_dir}' exists and is not a folder")
    for t in targets:
        d = replaceable_dir(root / t)  # each out_dir/<target> is replaced as a whole: same rules
        given = (profiles or {}).get(t)
        refuse_replacing_inputs(root / t, _path_inputs(model, kwargs.get("checkpoint"), given))
        if d.exists() and any(d.iterdir()) and not force:
            raise EdgeAttnError(
                f"output directory '{root / t}' exists and is not empty; pass --force to replace it",
                exit_code=6,
            )
    cache: dict = {}
    reports: dict[str, ExportReport] = {}
    failures: list[ParityFailure] = []
    for t in targets:
        try:
            # --cpu-isa caps OpenVINO's kernels; the other targets run without it
            own = kwargs if t == "openvino" else {**kwargs, "cpu_isa": None}
            if t == "coreml":  # ONNX-only settings; Core ML's batch is static (docs/export.md)
                own = {**own, "opset": None, "exporter": "torchscript", "dynamic_batch": False}
            reports[t] = export_model(model, t, resolved[t], root / t, force=force, cache=cache, **own)
        except ParityFailure as exc:  # the artifact and report are written; go on with the other targets
            reports[t] = exc.report
            failures.append(exc)
    if failures:
        first = failures[0]
        what = "parity" if all(type(f) is ParityFailure for f in failures) else "their gates"
        err = ParityFailure(f"{len(failures)} of {len(targets)} targets failed {what}; first: {first}", first.report)
        err.exit_code = first.exit_code
        err.reports = reports
        raise err
    return reports


def _require_backend(target: str) -> None:
    if target == "openvino":
        from edgeattn.export.openvino_target import require_openvino

        require_openvino()
    elif target == "coreml":
        from edgeattn.export.coreml_target import require_coremltools

        require_coremltools()


def _tag_failed(stage: Path, report: ExportReport) -> None:
    """Rename every artifact to a name that says it failed parity."""
    renamed = {}
    for key, path in report.artifacts.items():
        p = Path(path)
        stem, dot, ext = p.name.partition(".")
        new = p.with_name(f"{stem}.{FAILED_TAG}{dot}{ext}")
        os.replace(p, new)
        renamed[key] = str(new)
    # an OpenVINO IR is two files: keep the .bin next to its renamed .xml
    for p in stage.glob("*.bin"):
        if FAILED_TAG not in p.name:
            stem, dot, ext = p.name.partition(".")
            os.replace(p, p.with_name(f"{stem}.{FAILED_TAG}{dot}{ext}"))
    report.artifacts = renamed
