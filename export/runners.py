"""The per-target runners of an export run (:func:`edgeattn.export.api.export_model`).

``_Job`` is what a run hands its runner; ``_run_onnx_based`` exports ONNX and runs the ONNX Runtime, TensorRT and
OpenVINO gates, ``_run_coreml`` converts and checks a Core ML package (``_coreml_gate``: Core ML itself on macOS,
the MIL reference evaluator elsewhere). ``_gate`` compares a runtime's outputs with the torch reference and records
the result (``_bisect_worst`` names the first diverging node of a failing one); ``_timed`` and ``_cached`` time the
stages and reuse work across the targets of one :func:`edgeattn.export.api.export_all` run.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from edgeattn.export.report import ExportReport
from edgeattn.export.sources import TOKEN_ID_DTYPES

from edgeattn.errors import EdgeAttnError

# OpenVINO's INFERENCE_PRECISION_HINT -> the float precision it computes in ("auto" is f32 on CPUs without
# native bf16 and bf16 on the others: the wider noise floor is the safe side)
_OV_COMPUTE = {"f32": "fp32", "f16": "fp16", "bf16": "bf16", "auto": "bf16"}


@dataclass
class _Job:
    """What one export run hands its target runner: the deploy-form module, the parity inputs and torch
    reference, the gate's tolerance and the settings from the profile and the caller."""

    module: Any
    example: Any  # the torch example input (one static batch)
    prof: Any
    prec: str
    target: str
    stage: Path  # the temporary output directory
    x: np.ndarray
    ref: np.ndarray
    tol: Any
    report: ExportReport
    opset: int
    dyn: bool
    exporter: str
    cpu_isa: str | None
    threads: int
    shape: tuple[int, ...]
    cache: dict | None
    noise_floor: bool  # widen the gate by the reference's rounding noise floor (quantized models)
    atol_given: bool = False  # tol.max_abs is the caller's --atol, not the profile's
    floors: dict = field(default_factory=dict)  # noise floors of this run, when no shared cache is given
    lint_errors: list = field(default_factory=list)  # TensorRT lint findings of severity error

    def floor(self, x: np.ndarray, ref: np.ndarray, compute: str) -> Any:
        """The reference's rounding noise floor on ``x`` at ``compute`` precision (None when off)."""
        if not self.noise_floor:
            return None
        from edgeattn.export.noise_floor import rounding_noise_floor

        key = ("floor", id(self.module), x.shape, float(x.sum()), compute)
        t0 = time.perf_counter()
        memo = self.cache if self.cache is not None else self.floors  # two gates on one input: one floor
        floor = _cached(memo, key, lambda: rounding_noise_floor(self.module, x, ref, compute=compute))
        stage = f"noise_floor_{compute}"
        spent = self.report.timings_s.get(stage, 0.0) + time.perf_counter() - t0
        self.report.timings_s[stage] = round(spent, 3)
        return floor


def _gate(
    job: _Job,
    x: np.ndarray,
    ref: np.ndarray,
    got: np.ndarray,
    runtime: str,
    compute: str = "fp32",
    bisect: Any = None,
    note: str = "",
) -> bool:
    """Compare ``got`` (the runtime's outputs on ``x``) with the torch reference ``ref``; record the result.

    A quantized model that misses the profile's tolerance is judged again with the tolerance widened by the
    reference's rounding noise floor at ``compute``, the float precision the runtime computes in."""
    from edgeattn.export.parity import compare_outputs, cosine_resolvable

    given = job.atol_given
    res = compare_outputs(ref, got, job.tol, runtime=runtime, atol_given=given)
    counted = None  # the samples whose cosine the gate judged (all of them without a floor)
    if not res.passed:  # judge again against the reference's own rounding noise (quantized models only)
        floor = job.floor(x, ref, compute)
        if floor is not None:
            res = compare_outputs(ref, got, job.tol, runtime=runtime, noise_floor=floor, atol_given=given)
            counted = cosine_resolvable(ref, floor, job.tol.min_cosine)
    res.note = note
    if not res.passed and bisect is not None:
        res.first_diverging_node, bisect_note = _bisect_worst(job, x, ref, got, bisect, counted)
        res.note = "; ".join(n for n in (note, bisect_note) if n)
    job.report.parity.append(res.to_dict())
    return res.passed


def _bisect_worst(
    job: _Job, x: np.ndarray, ref: np.ndarray, got: np.ndarray, bisect: Any, cosine_counted: np.ndarray | None = None
) -> tuple[dict[str, Any] | None, str]:
    """Bisect on the static batch holding the input whose output misses the tolerance the most (where the
    divergence shows; another batch's output may still agree), each probed tensor's cosine counted only on the
    samples whose output cosine the gate judged (``cosine_counted``). ``bisect(inputs, counted_or_None)`` runs the
    search. Returns (the node or None, a note or '')."""
    from edgeattn.export.parity import worst_batch

    rows = worst_batch(ref, got, job.shape[0], job.tol, cosine_counted)
    where = f"inputs {rows.start}..{rows.stop - 1}"
    try:
        node = bisect(x[rows], None if cosine_counted is None else cosine_counted[rows])
    except Exception as exc:  # bisecting is best effort; the failure itself is what matters
        return None, f"bisect failed: {type(exc).__name__}: {exc}"
    if node is None:
        return None, (
            f"bisect on {where} (the worst output): there the runtime's final output agrees with ONNX Runtime "
            "without optimisations within the tolerance, so no node is named (compare the onnxruntime-noopt "
            "entry with PyTorch)"
        )
    return {**node, "inputs": [rows.start, rows.stop]}, ""


@contextlib.contextmanager
def _timed(report: ExportReport, stage: str):
    """Record the block's wall time as ``report.timings_s[stage]``, less the noise-floor time spent inside it
    (recorded as its own ``noise_floor_<compute>`` stage), so that no second is counted in two stages."""

    def floor_s() -> float:
        return sum(v for k, v in report.timings_s.items() if k.startswith("noise_floor_"))

    before, t0 = floor_s(), time.perf_counter()
    try:
        yield
    finally:
        report.timings_s[stage] = round(time.perf_counter() - t0 - (floor_s() - before), 3)


def _cached(cache: dict | None, key: Any, build: Any) -> Any:
    """``build()``, memoised in ``cache`` under ``key`` when a cache is given."""
    if cache is None:
        return build()
    if key not in cache:
        cache[key] = build()
    return cache[key]


def _run_onnx_based(job: _Job) -> None:
    module, example, prof, prec, target, stage = job.module, job.example, job.prof, job.prec, job.target, job.stage
    tol, report, opset, dyn, exporter = job.tol, job.report, job.opset, job.dyn, job.exporter
    cpu_isa, threads, shape, cache, x = job.cpu_isa, job.threads, job.shape, job.cache, job.x
    from edgeattn.export import lint as lint_mod
    from edgeattn.export.onnx_export import export_onnx, node_counts, save_onnx
    from edgeattn.export.parity import first_diverging_node, ort_reference_session, run_batched, run_ort
    from edgeattn.export.qdq import summarize_qdq

    t0 = time.perf_counter()
    onnx_key = ("onnx", id(module), opset, prec, dyn, exporter, tuple(example.shape))
    exported = _cached(
        cache,
        onnx_key,
        lambda: export_onnx(
            module, example, opset=opset, precision=prec, dynamic_batch=dyn, exporter=exporter
        ),
    )
    report.timings_s["onnx_export"] = round(time.perf_counter() - t0, 3)
    onnx_model = exported.model
    # the opset the file declares (the dynamo exporter's may differ from the one asked for)
    report.settings["opset"] = next((o.version for o in onnx_model.opset_import if o.domain in ("", "ai.onnx")), None)
    onnx_path = save_onnx(onnx_model, stage / "model.onnx")
    report.artifacts["onnx"] = str(onnx_path)
    report.node_counts = node_counts(onnx_model)
    if exported.quantized:
        report.qdq = {**summarize_qdq(onnx_model).__dict__, "cleanup": exported.cleanup}
    batch = shape[0]
    x_run = x if dyn or batch == 1 else x[: (len(x) // batch) * batch]
    ref_run = job.ref[: len(x_run)]
    onnx_bytes = onnx_model.SerializeToString()

    # second reference: ONNX Runtime, no graph optimisations
    def ort_noopt() -> np.ndarray:
        sess = ort_reference_session(onnx_bytes, threads)
        return run_batched(lambda b: run_ort(sess, b), x_run, batch)

    with _timed(report, "parity_ort"):
        # the same ONNX on the same inputs gives the same outputs: one ORT run serves every target sharing them
        ort_out = _cached(cache, ("ort-noopt", *onnx_key, x_run.shape, float(x_run.sum()), threads), ort_noopt)
        _gate(job, x_run, ref_run, ort_out, "onnxruntime-noopt")

    if target == "onnx":
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.log_severity_level = 3
        sess = ort.InferenceSession(onnx_bytes, opts, providers=["CPUExecutionProvider"])

        def run_ort_model(m, xb):
            return run_ort(
                ort.InferenceSession(m.SerializeToString(), opts, providers=["CPUExecutionProvider"]), xb
            )

        with _timed(report, "parity_onnxruntime"):
            _gate(
                job,
                x_run,
                ref_run,
                run_batched(lambda b: run_ort(sess, b), x_run, batch),
                "onnxruntime",
                bisect=lambda xb, counted: first_diverging_node(
                    onnx_model, xb, run_ort_model, tol, cosine_samples=counted
                ),
            )
    elif target == "tensorrt":
        spec = prof.tensorrt
        findings = lint_mod.lint_tensorrt(
            onnx_model, major=spec.major, precision=prec, profile_name=prof.name
        )
        report.lint = [f.to_dict() for f in findings]
        report.attention_fusion = [a.to_dict() for a in lint_mod.attention_fusion(onnx_model)]
        job.lint_errors = [f for f in findings if f.severity == "error"]
        if job.lint_errors:  # _export_model writes the report (every finding) and raises LintFailure
            # no [rule] in a note: the console prints notes as rich markup
            report.notes += [
                f"tensorrt lint error ({f.rule}): {f.line(prof.name, rule=False)}" for f in job.lint_errors
            ]
            return
        from edgeattn.export import tensorrt_target as trt_mod

        bad_types = trt_mod.unsupported_tensor_types(onnx_model)
        if bad_types:
            name, elem = bad_types[0]
            more = f" (+{len(bad_types) - 1} more)" if len(bad_types) > 1 else ""
            raise EdgeAttnError(
                f"tensor '{name}' is {elem}, a type TensorRT has no DataType for (profile '{prof.name}'){more}",
                exit_code=5,
            )
        report.trtexec = trt_mod.trtexec_command(
            "model.onnx", "model.engine", spec, prec, "input", shape, dyn
        )
        if trt_mod.tensorrt_available():
            engine = trt_mod.build_engine(onnx_bytes, stage / "model.engine", spec, prec, "input", shape, dyn)
            report.artifacts["engine"] = str(engine)
            runner = trt_mod.TensorRTRunner(engine)
            got = run_batched(runner, x_run, batch)
            compute = "fp16" if prec == "fp16" else "fp32"
            _gate(job, x_run, ref_run, got, f"tensorrt-{spec.major}", compute)
        else:
            report.notes.append(
                "tensorrt is not importable here: ONNX + lint + trtexec command written; the "
                "engine build and its parity gate run where TensorRT is installed"
            )
    elif target == "openvino":
        from edgeattn.export.openvino_target import OpenVINORunner, convert_to_ir, for_openvino, kernel_report

        ovs = prof.openvino
        compress = bool(ovs and ovs.compress_to_fp16) or prec == "fp16"
        t0 = time.perf_counter()
        ov_model, rewrites = for_openvino(onnx_model)
        ov_onnx = onnx_path
        if rewrites["concat_split"]:
            report.notes.append(
                f"OpenVINO IR: {rewrites['concat_split']} Concat->Q/DQ->Conv rewritten as per-part convs + Add"
                " (same integers; works around OpenVINO CPU's wrong int8 Conv after a Concat, see docs/export.md)"
            )
        if rewrites["pool_as_conv"]:
            report.notes.append(
                f"OpenVINO IR: {rewrites['pool_as_conv']} AveragePool of a quantized input rewritten as a depthwise"
                " mean Conv (same values; works around OpenVINO CPU's wrong int8 pooling before a Clip, see"
                " docs/export.md)"
            )
        if rewrites["conv_bias"]:
            report.notes.append(
                f"OpenVINO IR: {rewrites['conv_bias']} int8 Conv(s) without bias given a 1e-30 bias (same values;"
                " works around OpenVINO CPU's lost residual branch after a bias-free int8 Conv, see docs/export.md)"
            )
        if any(rewrites.values()):
            ov_onnx = save_onnx(ov_model, stage / ".openvino_input.onnx")
        xml = convert_to_ir(ov_onnx, stage / "model.xml", compress_to_fp16=compress and prec != "int8")
        if any(rewrites.values()):
            ov_onnx.unlink()
        report.timings_s["openvino_convert"] = round(time.perf_counter() - t0, 3)
        report.artifacts["openvino_xml"] = str(xml)
        report.artifacts["openvino_bin"] = str(xml.with_suffix(".bin"))
        infer_prec = ovs.inference_precision if ovs else "f32"
        hint = ovs.hint if ovs else "latency"
        label = "openvino-cpu" + (f"-{cpu_isa.lower()}" if cpu_isa else "")
        with _timed(report, "parity_openvino"), OpenVINORunner(
            xml, threads=threads, inference_precision=infer_prec, hint=hint, isa=cpu_isa
        ) as r:
            got = run_batched(r, x_run, batch)
            with OpenVINORunner(
                ov_model, threads=threads, inference_precision=infer_prec, hint=hint, isa=cpu_isa
            ) as probe:
                _gate(
                    job,
                    x_run,
                    ref_run,
                    got,
                    label,
                    _OV_COMPUTE.get(infer_prec, "fp32"),
                    bisect=lambda xb, counted: first_diverging_node(
                        ov_model, xb, probe.run_model, tol, cosine_samples=counted
                    ),
                )
            if prec == "int8" and not cpu_isa:
                report.kernels = kernel_report(r, x_run[:batch], ov_model)
            elif prec == "int8":
                report.notes.append(
                    f"kernels: not collected under --cpu-isa {cpu_isa} (the capped OpenVINO runs in a child "
                    "process); run without the cap for the per-node kernel report"
                )


def _run_coreml(job: _Job) -> None:
    module, example, prof, prec, stage = job.module, job.example, job.prof, job.prec, job.stage
    x, report = job.x, job.report
    from edgeattn.export import coreml_target as cm

    t0 = time.perf_counter()
    path = stage / "model.mlpackage"
    info = cm.convert_coreml(module, example, prof, prec, path)
    report.timings_s["coreml_convert"] = round(time.perf_counter() - t0, 3)
    report.artifacts["mlpackage"] = str(path)
    target_name = info["deployment_target"]
    in_dtype = "float32" if example.dtype.is_floating_point else TOKEN_ID_DTYPES["coreml"]
    spec = cm.validate_spec(
        path, deployment_target=target_name, input_shape=tuple(example.shape), input_dtype=in_dtype
    )
    report.coreml = {**info, "spec": spec}
    report.node_counts = spec["op_counts"]
    if not spec["passed"]:
        raise EdgeAttnError(
            f"Core ML spec check failed for profile '{prof.name}': {'; '.join(spec['problems'])}", exit_code=5
        )
    batch = example.shape[0]
    x_run = x[: (len(x) // batch) * batch]
    if x_run.dtype.kind in "iu":  # token ids: the package takes them as int32 (Core ML has no int64 inputs)
        x_run = x_run.astype(np.int32)
    ref_run = job.ref[: len(x_run)]
    compute = info["compute_precision"]  # what the program computes in (an explicit --precision decides)
    with _timed(report, "parity_coreml"):
        _coreml_gate(job, path, x_run, ref_run, compute)


def _coreml_gate(job: _Job, path: Path, x_run: np.ndarray, ref_run: np.ndarray, compute: str) -> None:
    """The Core ML gate: Core ML itself on macOS, else the MIL reference evaluator of the saved program."""
    from edgeattn.export import coreml_target as cm
    from edgeattn.export.mil_eval import MILProgram, UnsupportedMILOp
    from edgeattn.export.parity import run_batched

    prof, report, batch = job.prof, job.report, len(job.example)
    if cm.coreml_prediction_available():
        units = prof.coreml.compute_units if prof.coreml else "ALL"
        _gate(
            job,
            x_run,
            ref_run,
            run_batched(lambda b: cm.predict_macos(path, b, units), x_run, batch),
            f"coreml-{units.lower()}",
            compute,
        )
    else:
        try:
            prog = MILProgram.from_package(path)
            got = run_batched(lambda b: prog(input=b)["output"], x_run, batch)
            _gate(
                job,
                x_run,
                ref_run,
                got,
                "coreml-mil-reference",
                compute,
                note="numpy reference evaluator of the saved mlprogram (FP16 storage per op); Core ML itself "
                "runs only on macOS, so on-device numeric parity awaits a macOS run",
            )
            report.notes.append(
                "coreml runs only on macOS: Core ML itself did not run here; the parity gate used the numpy MIL "
                "reference evaluator of the saved mlprogram, and on-device numeric parity awaits a macOS run"
            )
        except UnsupportedMILOp as exc:
            report.notes.append(f"spec validated; numeric parity awaits a macOS run ({exc})")
