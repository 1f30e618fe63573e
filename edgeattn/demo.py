"""`edgeattn demo`: the whole path a user takes, on data that ships here, ending in a report.

Steps (each shows progress; a failing step is recorded with its reason and the steps that do not depend
on it still run):

1. ``train``   train ``fmvit_t`` on scikit-learn's digits, reparameterize it (FP32 accuracy);
2. ``qat``     PTQ baseline and EdgeQAT W8A8 with the ``host-cpu`` profile;
3. ``export``  ONNX (FP32 and Q/DQ INT8), OpenVINO IR, Core ML and the TensorRT-ready ONNX with its lint
               and trtexec line, each through its parity gate;
4. ``profile`` FP32 vs INT8 latency on ONNX Runtime and OpenVINO, interleaved;
5. ``hls``     the FPGA accelerator: a small ViT trained on digits, one encoder layer to HLS C++, C simulation;
6. ``report``  ``report.md`` + ``report.html`` with tables and plots.

The run is staged beside the output folder and replaces it only when it has ended (see :func:`run_demo`);
``summary.json`` holds paths inside the output folder relative to it (see :meth:`Demo._write_summary`).

This module is a face: it imports every part of the toolchain.
"""

from __future__ import annotations

import inspect
import json
import os
import shutil
import signal
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape

from edgeattn.atomic import (
    OutputTakenError,
    dir_id,
    keep_aside,
    make_staging_dir,
    publish_dir,
    replaceable_dir,
    write_text_atomic,
)
from edgeattn.errors import EdgeAttnError
from edgeattn.report import Report, fmt

# The ViT whose MoE encoder layer the demo puts on the FPGA: 65 tokens (32x32, patch 4), width 96, 3 heads.
HLS_MODEL = {"embed_dim": 96, "depth": 2, "num_heads": 3, "moe_every": 2}

STEP_TITLES = {
    "train": "Train fmvit_t on digits (FP32) and reparameterize",
    "qat": "PTQ baseline and EdgeQAT W8A8 (host-cpu profile)",
    "export": "Export to ONNX, OpenVINO, Core ML and TensorRT-ready ONNX, with parity gates",
    "profile": "Profile FP32 vs INT8 on ONNX Runtime and OpenVINO",
    "hls": "HLS C++ for one MoE encoder layer, C simulation",
    "report": "Write the report",
}


@dataclass
class StepResult:
    name: str
    status: str  # ok | failed | skipped | interrupted
    seconds: float = 0.0
    detail: str = ""
    data: dict[str, Any] = field(default_factory=dict)


@dataclass
class DemoSettings:
    """Sizes of the demo run; ``fast()`` is what the test suite runs."""

    img_size: int = 32
    fp_epochs: int = 6
    qat_epochs: int = 1
    max_train_samples: int | None = None
    max_val_samples: int | None = 360
    profile_seconds: float = 4.0
    parity_samples: int = 32
    hls_fp_epochs: int = 10
    hls_vectors: int = 4
    threads: int = 2

    @classmethod
    def fast(cls) -> DemoSettings:
        # 16 parity samples, not fewer: at 8 the profiles' 0.9 top-1 agreement allows no flip at all, and a
        # 2-epoch model fed noise has near-tied logits (one flip failed onnx_int8 at 1.6% of the range)
        return cls(fp_epochs=2, qat_epochs=1, max_train_samples=384, max_val_samples=128,
                   profile_seconds=1.0, parity_samples=16, hls_fp_epochs=1, hls_vectors=2)


class StepFailed(EdgeAttnError):
    """A step that ran to its end with a result that is a failure (a C simulation that differs from the golden
    model); ``data`` keeps its figures, so that the report can show them next to the failure."""

    def __init__(self, message: str, data: dict[str, Any]) -> None:
        super().__init__(message)
        self.data = data


def _usable(res: StepResult | None) -> bool:
    """Whether a later step can use this step's result: it completed, or it failed with figures (StepFailed)."""
    return res is not None and (res.status == "ok" or (res.status == "failed" and bool(res.data)))


class DemoInterrupted(KeyboardInterrupt):
    """Ctrl-C ended the demo; ``where`` holds its partial output (report.md and summary.json say which steps
    ran), ``kept_aside`` says whether that is a folder beside the output folder, which was left as it was."""

    def __init__(self, where: Path, kept_aside: bool) -> None:
        super().__init__(str(where))
        self.where = where
        self.kept_aside = kept_aside


def _interrupt_in_chain(exc: BaseException) -> bool:
    """Whether a KeyboardInterrupt is in ``exc``'s ``__cause__`` / ``__context__`` chain: a library caught
    Ctrl-C and raised its own error instead."""
    seen: set[int] = set()
    link: BaseException | None = exc
    while link is not None and id(link) not in seen:
        if isinstance(link, KeyboardInterrupt):
            return True
        seen.add(id(link))
        link = link.__cause__ or link.__context__
    return False


def _rebase(value: Any, old: str, new: str) -> Any:
    """``value`` (step data: dicts, lists, strings) with the folder ``old`` renamed ``new`` in every string."""
    if isinstance(value, dict):
        return {k: _rebase(v, old, new) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_rebase(v, old, new) for v in value]
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    return value.replace(old, new) if isinstance(value, str) and old != new else value


def _relative(value: Any, root: str) -> Any:
    """``value`` with every string that is the path of something inside the folder ``root`` made relative to
    it (POSIX separators); other strings, paths outside it included, are kept as they are."""
    if isinstance(value, dict):
        return {k: _relative(v, root) for k, v in value.items()}
    if isinstance(value, list):
        return [_relative(v, root) for v in value]
    if isinstance(value, str) and value.startswith(root + os.sep):
        return Path(value[len(root) + 1:]).as_posix()
    return "." if value == root else value


def _stop_if_interrupted(result: dict[str, Any]) -> None:
    """The trainer turns Ctrl-C into a flag and returns ``status: interrupted`` (a partial result): pass it on."""
    if result.get("status") == "interrupted":
        raise KeyboardInterrupt


class Demo:
    """Runs the steps in order, tracking which succeeded so dependants can be skipped with a reason."""

    def __init__(self, out_dir: Path, settings: DemoSettings, console: Console, final: Path | None = None) -> None:
        self.out = out_dir  # where the steps write (run_demo: a staging folder)
        self.final = final or out_dir  # the folder the output is published as, named in the report and summary
        self.s = settings
        self.console = console
        self.results: dict[str, StepResult] = {}
        self.log_path = out_dir / "demo.log"
        self.sigints = 0  # Ctrl-C presses seen while run() ran
        self._sigints_before = 0  # ... when the current step started

    def _interrupted(self, exc: BaseException) -> bool:
        """Whether ``exc``, raised in the current step, is a Ctrl-C that a library turned into its own error."""
        return self.sigints > self._sigints_before or _interrupt_in_chain(exc)

    # ------------------------------------------------------------------ step runner
    def step(self, name: str, fn: Callable[[], dict[str, Any]], needs: tuple[str, ...] = ()) -> StepResult:
        index = list(STEP_TITLES).index(name) + 1
        title = STEP_TITLES[name]
        self.console.rule(f"[bold]{index}/{len(STEP_TITLES)} {title}")
        missing = [n for n in needs if not _usable(self.results.get(n))]
        if missing:
            res = StepResult(name, "skipped", detail=f"needs step '{missing[0]}', which did not complete")
            self.console.print(f"[yellow]skipped:[/] {escape(res.detail)}")
        else:
            t0 = time.perf_counter()
            self._sigints_before = self.sigints
            try:
                try:
                    data = fn()
                except Exception as exc:
                    if self._interrupted(exc):  # a library swallowed Ctrl-C: it is still an interrupt
                        raise KeyboardInterrupt from exc
                    raise
                if self.sigints > self._sigints_before:  # swallowed, and the step went on: stop now
                    raise KeyboardInterrupt
                res = StepResult(name, "ok", time.perf_counter() - t0, data=data or {})
                self.console.print(f"[green]done[/] in {res.seconds:.1f} s")
            except KeyboardInterrupt:  # Ctrl-C ends the demo: the step is recorded, run() writes what ran
                self.results[name] = StepResult(name, "interrupted", time.perf_counter() - t0,
                                                detail="stopped by Ctrl-C")
                self.console.print("[red]interrupted[/]")
                raise
            except Exception as exc:  # a failing step must not end the demo
                detail = f"{type(exc).__name__}: {exc}" if not isinstance(exc, EdgeAttnError) else str(exc)
                first_line = (detail.splitlines() or [type(exc).__name__])[0]
                res = StepResult(name, "failed", time.perf_counter() - t0, detail=first_line,
                                 data=exc.data if isinstance(exc, StepFailed) else {})
                with self.log_path.open("a", encoding="utf-8") as log:
                    log.write(f"--- step {name} failed\n{traceback.format_exc()}\n")
                log = self.final / self.log_path.name
                self.console.print(f"[red]failed:[/] {escape(res.detail)} (traceback in {escape(str(log))})")
        self.results[name] = res
        return res

    # ------------------------------------------------------------------ 1. train
    def train(self) -> dict[str, Any]:
        from edgeattn.quant.train import preset_config, run

        cfg = preset_config(
            "demo", model="fmvit_t", data="digits", img_size=self.s.img_size, fp_epochs=self.s.fp_epochs,
            max_train_samples=self.s.max_train_samples, max_val_samples=self.s.max_val_samples,
            profile="host-cpu", bits="w8a8", skip_qat=True, output_dir=str(self.out / "train"),
            num_threads=self.s.threads,
        )
        result = run(cfg, force=True)
        _stop_if_interrupted(result)
        fp_model, _ = _load(self.out / "train" / "fp.pt")
        deploy = _reparam_summary(fp_model, self.s.img_size)
        return {"fp32": result["fp32"], "ptq": result["ptq"], "fp_checkpoint": result["fp_checkpoint"],
                "seconds_fp": result.get("fp_train_seconds"), "val_samples": _val_samples(self.s), **deploy}

    # ------------------------------------------------------------------ 2. qat
    def qat(self) -> dict[str, Any]:
        from edgeattn.quant.train import attention_fidelity, preset_config, run

        cfg = preset_config(
            "demo", model="fmvit_t", data="digits", img_size=self.s.img_size, epochs=self.s.qat_epochs,
            max_train_samples=self.s.max_train_samples, max_val_samples=self.s.max_val_samples,
            profile="host-cpu", bits="w8a8", fp_checkpoint=self.results["train"].data["fp_checkpoint"],
            output_dir=str(self.out / "qat"), num_threads=self.s.threads,
        )
        result = run(cfg, force=True)
        _stop_if_interrupted(result)
        keys = ("fp32", "ptq", "qat", "attn_kl_ptq", "attn_kl_qat", "checkpoint", "history", "quant_config")
        # the attention KL is measured on the first n validation images (the trainer's default n)
        kl_images = inspect.signature(attention_fidelity).parameters["n"].default
        return {**{k: result.get(k) for k in keys}, "attn_kl_images": min(kl_images, _val_samples(self.s))}

    # ------------------------------------------------------------------ 3. export
    def export(self) -> dict[str, Any]:
        from edgeattn.export import export_model
        from edgeattn.export.report import ParityFailure

        fp_ckpt = self.results["train"].data["fp_checkpoint"]
        q_ckpt = self.results["qat"].data["checkpoint"]
        jobs = [  # (artifact name, target, profile, precision, checkpoint)
            ("onnx_fp32", "onnx", "host-cpu", "fp32", fp_ckpt),
            ("onnx_int8", "onnx", "host-cpu", "int8", q_ckpt),
            ("openvino_fp32", "openvino", "host-cpu", "fp32", fp_ckpt),
            ("openvino_int8", "openvino", "host-cpu", "int8", q_ckpt),
            ("coreml_fp16", "coreml", "apple-a17-coreml", "fp16", fp_ckpt),
            ("tensorrt_int8", "tensorrt", "jetson-orin-trt10", "int8", q_ckpt),
        ]
        artifacts: list[dict[str, Any]] = []
        for name, target, profile, precision, ckpt in jobs:
            self.console.print(f"  {name} ({profile}) ...")
            row: dict[str, Any] = {"name": name, "target": target, "profile": profile, "precision": precision}
            try:
                rep = export_model(ckpt, target=target, profile=profile, out_dir=self.out / "export" / name,
                                   precision=precision, n_inputs=self.s.parity_samples, force=True,
                                   threads=self.s.threads)
                row.update(status="passed" if rep.passed else "failed", report=rep.to_dict())
            except ParityFailure as exc:
                row.update(status="failed", detail=str(exc), report=exc.report.to_dict())
            except EdgeAttnError as exc:
                if self._interrupted(exc):  # not an export error: stop here, not after the other artifacts
                    raise KeyboardInterrupt from exc
                row.update(status="error", detail=str(exc), report={})
            row["artifact"] = _main_artifact(row.get("report", {}).get("artifacts", {}))
            self.console.print(f"    {row['status']}" + (f": {escape(row['detail'])}" if row.get("detail") else ""))
            artifacts.append(row)
        if not any(a["status"] == "passed" for a in artifacts):
            raise EdgeAttnError("no artifact passed its parity gate")
        bad = [f"{a['name']} ({a['status']})" for a in artifacts if a["status"] != "passed"]
        if bad:  # the others are still profiled: a failed step with figures feeds its dependants
            raise StepFailed(f"{len(bad)} of {len(artifacts)} artifacts did not pass: {', '.join(bad)}",
                             {"artifacts": artifacts})
        return {"artifacts": artifacts}

    # ------------------------------------------------------------------ 4. profile
    def profile(self) -> dict[str, Any]:
        from edgeattn.profile import plot_report, profile_artifacts

        exp = {a["name"]: a for a in self.results["export"].data["artifacts"]}
        rows: list[dict[str, Any]] = []
        plots: list[str] = []
        not_profiled: list[str] = []
        for runtime, fp_name, q_name in (("onnxruntime", "onnx_fp32", "onnx_int8"),
                                         ("openvino", "openvino_fp32", "openvino_int8")):
            paths = [exp[n]["artifact"] for n in (fp_name, q_name) if n in exp and exp[n].get("artifact")]
            if len(paths) < 2:
                not_profiled.append(f"{runtime} ({fp_name} and {q_name} were not both exported)")
                continue
            report = profile_artifacts(paths, runtime=runtime, seconds=self.s.profile_seconds,
                                       threads=self.s.threads, warmup=5)
            if report.interrupted:  # the profiler returns what it measured before Ctrl-C
                raise KeyboardInterrupt
            plot = self.out / f"latency_{runtime}.png"
            plot_report(report, str(plot))
            plots.append(plot.name)
            raw = self.out / f"latency_{runtime}.json"  # the profiler's own figures, as `edgeattn profile --json`
            write_text_atomic(raw, report.model_dump_json(indent=2) + "\n")
            for label, res in zip(("FP32", "INT8"), report.results, strict=True):
                if res.latency is None:
                    continue
                rows.append({"runtime": runtime, "precision": label, "p50_ms": res.latency.p50_ms,
                             "p90_ms": res.latency.p90_ms, "runs": res.latency.count, "batch": res.batch,
                             "speedup": 1.0 / res.ratio_to_first if res.ratio_to_first else None,
                             "gmacs": res.efficiency.achieved_gmacs,
                             "peak_fraction": res.efficiency.fraction_of_peak,
                             "parity_failed": res.parity_failed, "artifact": res.artifact, "json": raw.name})
        if not rows:
            raise EdgeAttnError("no FP32/INT8 artifact pair to profile")
        return {"rows": rows, "plots": plots, "not_profiled": not_profiled}

    # ------------------------------------------------------------------ 5. hls
    def hls(self) -> dict[str, Any]:
        from edgeattn.fpga_hls import generate_project, run_csim
        from edgeattn.quant.train import preset_config, run

        # The accelerator runs plain ViT encoder layers (Edge-MoE): fmvit_t is a conv/attention hybrid, so the
        # FPGA path uses a small MoE ViT trained on the same digits; layer 1 is its MoE layer (4 experts, top-2).
        cfg = preset_config(
            "demo", model="edge_moe_vit", model_kwargs=HLS_MODEL, data="digits", img_size=self.s.img_size,
            fp_epochs=self.s.hls_fp_epochs,
            max_train_samples=self.s.max_train_samples, max_val_samples=self.s.max_val_samples,
            skip_qat=True, output_dir=str(self.out / "hls_model"), num_threads=self.s.threads,
        )
        trained = run(cfg, force=True)
        _stop_if_interrupted(trained)
        model, _ = _load(self.out / "hls_model" / "fp.pt")
        info = generate_project(model, "zcu102-hls", self.out / "hls_prj", layer=1, vectors=self.s.hls_vectors,
                                force=True, model_name="edge_moe_vit")
        csim = run_csim(info.path)
        data = {"vit_top1": trained["fp32"], "project": str(info.path), "csim": csim,
                "estimate": info.estimate, "golden_vs_float": info.golden_vs_float}
        if csim.get("mismatches") != 0:  # run_csim reports a mismatch, it does not raise: the demo must not pass
            raise StepFailed(f"C simulation: {csim.get('mismatches')} outputs differ from the golden model "
                             f"over {csim.get('vectors')} vectors", data)
        return data

    # ------------------------------------------------------------------ 6. report
    def report(self) -> dict[str, Any]:
        rep = build_report(self).replace(str(self.out), str(self.final))
        md, html = rep.write(self.out)
        return {"markdown": str(md), "html": str(html), "settings": asdict(self.s)}

    @contextmanager
    def _counting_sigint(self) -> Iterator[None]:
        """Count Ctrl-C presses (then handle them as before), so that a step whose library swallowed the
        KeyboardInterrupt and raised its own error is recorded as interrupted, not failed."""
        previous = signal.getsignal(signal.SIGINT)
        if not callable(previous) or threading.current_thread() is not threading.main_thread():
            yield  # SIGINT ignored (a background job) or not ours to handle
            return

        def handler(signum: int, frame: Any) -> None:
            self.sigints += 1
            previous(signum, frame)

        signal.signal(signal.SIGINT, handler)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, previous)

    def run(self) -> dict[str, StepResult]:
        """Run every step, then write the report and ``summary.json``; after Ctrl-C, write both for the steps
        that ran (the interrupted one marked so) and re-raise, so the command ends with exit code 130."""
        with self._counting_sigint():
            return self._run()

    def _run(self) -> dict[str, StepResult]:
        try:
            self.step("train", self.train)
            self.step("qat", self.qat, needs=("train",))
            self.step("export", self.export, needs=("train", "qat"))
            self.step("profile", self.profile, needs=("export",))
            self.step("hls", self.hls)
            self._approx_plot()
        except KeyboardInterrupt:
            self.interrupted = True
            self.approx = getattr(self, "approx", None)
            self.step("report", self.report)
            self._write_summary()
            raise
        self.step("report", self.report)
        self._write_summary()
        return self.results

    def _write_summary(self) -> None:
        """``summary.json``: each step's status, seconds, note and figures (atomically: never half-written).

        A value that is the path of a file or folder inside the output folder is relative to that folder (the
        folder can be moved or shared); a path outside it stays absolute; text that only mentions a path (the
        trtexec command line, an error) names the output folder by its final absolute path, never the staging
        folder the run wrote into."""
        final = str(self.final)
        summary = {name: {"status": r.status, "seconds": r.seconds, "detail": _rebase(r.detail, str(self.out), final),
                          "data": _relative(_rebase(r.data, str(self.out), final), final)}
                   for name, r in self.results.items()}
        write_text_atomic(self.out / "summary.json", json.dumps(summary, indent=2, default=str) + "\n")

    def _approx_plot(self) -> None:
        """Approximation error curves for the report (cheap; failures only lose the plot)."""
        try:
            from edgeattn.approx.report import build_report as approx_report
            from edgeattn.approx.report import plot_report as approx_plot

            data = approx_report()
            approx_plot(data, str(self.out / "approx_errors.png"))
            self.approx = data
        except Exception as exc:  # the report says the section is missing and why; the traceback goes to the log
            self.approx = None
            self.approx_error = f"{type(exc).__name__}: {exc}".splitlines()[0]
            with self.log_path.open("a", encoding="utf-8") as log:
                log.write(f"--- approximation report failed\n{traceback.format_exc()}\n")


def _load(path: Path):
    import torch

    from edgeattn.quant.checkpoint import load_checkpoint

    return load_checkpoint(path, dtype=torch.float32)


def _reparam_summary(model: Any, img_size: int) -> dict[str, Any]:
    import torch

    from edgeattn.reparameterize import reparameterize

    model.eval()
    deploy = reparameterize(model)
    x = torch.randn(4, *model.input_size[:1], img_size, img_size)
    with torch.no_grad():
        err = (model(x) - deploy(x)).abs().max().item()
    n_mod = sum(1 for _ in model.modules())
    return {"train_params": sum(p.numel() for p in model.parameters()),
            "deploy_params": sum(p.numel() for p in deploy.parameters()),
            "train_modules": n_mod, "deploy_modules": sum(1 for _ in deploy.modules()),
            "reparam_max_abs_err": err}


def _main_artifact(artifacts: dict[str, str]) -> str | None:
    """The file a runtime loads: the IR's xml over the ONNX it came from, the engine over its ONNX."""
    for key in ("engine", "openvino_xml", "mlpackage", "onnx"):
        if key in artifacts:
            return artifacts[key]
    return None


def build_report(demo: Demo) -> Report:
    """Turn the demo's step results into the report a user reads."""
    r = demo.results
    intro = (
        "What `edgeattn demo` did on this machine, end to end: train a deploy-friendly attention model "
        "on scikit-learn's digits, quantize it with EdgeQAT, export it to every target with a parity gate, "
        "profile it here, and run an FPGA attention layer in C simulation. Everything below is in "
        "`summary.json` next to this report."
    )
    stopped = [n for n, res in r.items() if res.status == "interrupted"]
    if stopped or getattr(demo, "interrupted", False):
        during = f"during step '{stopped[0]}'" if stopped else "after its last step"
        intro += (f"\n\n**The demo was interrupted (Ctrl-C) {during}**: what did not run is marked so "
                  "below.")
    rep = Report("edgeattn demo report", intro=intro)
    steps = rep.section("Steps")
    steps.table(["step", "status", "seconds", "note"],
                [[STEP_TITLES[n], res.status, round(res.seconds, 1), res.detail or ""] for n, res in r.items()])
    s = demo.s
    steps.text(
        f"Settings: {s.fp_epochs} FP32 epochs, {s.qat_epochs} QAT epoch(s), "
        f"{'all' if s.max_train_samples is None else s.max_train_samples} training images, "
        f"{_val_samples(s)} validation images, {s.parity_samples} parity inputs per artifact, "
        f"{fmt(s.profile_seconds)} s of timed runs per runtime, {s.threads} threads."
    )
    _accuracy_section(rep, r)
    _export_section(rep, r, demo.out)
    _profile_section(rep, r)
    _approx_section(rep, demo)
    _hls_section(rep, r, demo.out)
    return rep


def _val_samples(settings: DemoSettings) -> int:
    """How many validation images the accuracy figures are measured on: digits' validation split, capped."""
    from edgeattn.data import digits_dataset

    n_val = len(digits_dataset(8, 1, "val"))  # the split's size depends on neither image size nor seed
    cap = settings.max_val_samples
    return n_val if cap is None else min(n_val, cap)


def _ok(results: dict[str, StepResult], name: str) -> bool:
    return name in results and results[name].status == "ok"


def _not_available(results: dict[str, StepResult], name: str, what: str) -> str:
    """The line a section shows when its step has no figures, with the step's status and reason."""
    res = results.get(name)
    if res is None:
        return f"Not available: the {what} step did not run."
    if res.status == "ok":
        return f"Not available: the {what} step gave no figures."
    reason = f": {res.detail}" if res.detail else ""
    return f"Not available: the {what} step did not complete. Status: {res.status}{reason}"


def _rel(path: str | None, out: Path) -> str:
    """``path`` relative to the output folder where it lies inside it (so links work wherever it is moved)."""
    if not path:
        return "-"
    p = Path(path)
    try:
        return p.resolve().relative_to(out.resolve()).as_posix()
    except ValueError:
        return str(p)


def _accuracy_section(rep: Report, r: dict[str, StepResult]) -> None:
    sec = rep.section("Accuracy per stage (fmvit_t on digits, top-1 %)")
    if not _ok(r, "train"):
        sec.text(_not_available(r, "train", "training"))
        return
    t = r["train"].data
    rows = [["FP32 (deploy form)", t["fp32"], "-"]]
    if _ok(r, "qat"):
        q = r["qat"].data
        qc = q.get("quant_config") or {}
        bits = f"W{qc.get('weight_bits', '?')}A{qc.get('act_bits', '?')}"  # what was trained, not what was asked
        rows += [[f"PTQ {bits} ({qc.get('calibration', '?')} calibration)", q["ptq"], q.get("attn_kl_ptq")],
                 [f"EdgeQAT {bits}", q["qat"], q.get("attn_kl_qat")]]
    else:
        rows.append(["PTQ / EdgeQAT W8A8", None, None])
    sec.table(["stage", "top-1 %", "attention-map KL vs FP"], rows)
    kl_images = r["qat"].data.get("attn_kl_images", "?") if _ok(r, "qat") else "?"
    sec.text(f"Top-1 % of the {t.get('val_samples', '?')} images of the digits validation split (never trained "
             f"on; chance is 10 %). The KL is KL(FP32 || quantized) of the attention maps, the mean over every "
             f"attention row of the first {kl_images} of those images.")
    if not _ok(r, "qat"):
        sec.text(_not_available(r, "qat", "QAT"))
    elif (qc := r["qat"].data.get("quant_config") or {}).get("weight_bits") != 8:
        sec.text(f"The demo asks for w8a8; the host-cpu profile caps weights at this CPU's limit (7 bits on x86 "
                 f"without VNNI), so the model holds {qc.get('weight_bits')}-bit weights (KV at most "
                 f"{qc.get('kv_max_bits')} bits): the figures measure those.")
    sec.text(
        f"Reparameterization: {t['train_params']:,} train-time parameters -> {t['deploy_params']:,} deploy "
        f"parameters, {t['train_modules']} -> {t['deploy_modules']} modules; max abs output difference "
        f"{fmt(t['reparam_max_abs_err'])}."
    )


def _gate(artifact: dict[str, Any], par: dict[str, Any]) -> str:
    """What the parity gate said for one comparison, or why there was none."""
    if not par:
        return "not checked" if artifact.get("status") == "passed" else artifact.get("status", "error")
    if not par.get("passed"):
        return "FAILED"
    if par.get("passed_profile_tolerance") is False:
        return "passed (within noise floor)"
    return "passed"


def _export_section(rep: Report, r: dict[str, StepResult], out: Path) -> None:
    from edgeattn.export.report import cosine_count, top1_count

    sec = rep.section("Parity per artifact")
    if not _usable(r.get("export")):
        sec.text(_not_available(r, "export", "export"))
        return
    if not _ok(r, "export"):
        sec.text(f"**The export step failed: {r['export'].detail}.**")
    rows = []
    for a in r["export"].data["artifacts"]:
        report = a.get("report") or {}
        checks = report.get("parity") or [{}]
        for par in checks:
            tol = par.get("tolerance") or {}
            note = "; ".join(par.get("failures") or []) or par.get("note", "") or (a.get("detail") or "")
            if par.get("first_diverging_node"):
                note += f" (first diverging node: {par['first_diverging_node'].get('node', '?')})"
            rows.append([
                a["name"], a["profile"], _rel(a.get("artifact"), out), _gate(a, par), par.get("runtime", "-"),
                _inputs(par.get("n_inputs"), report.get("parity_inputs") or {}),
                _with_limit(par.get("max_abs_rel_range"), "max", tol.get("max_abs")),
                _with_limit(par.get("cosine"), "min", tol.get("min_cosine"), digits=6) + cosine_count(par),
                _with_limit(par.get("top1"), "min", tol.get("min_top1_agreement")) + top1_count(par), note,
            ])
        for note in report.get("notes") or []:
            rows.append([a["name"], a["profile"], "", "note", "-", None, None, None, None, note])
    sec.table(["artifact", "profile", "file", "gate", "runtime", "inputs", "max abs err / output range",
               "min cosine", "top-1 agreement (fraction)", "note"], rows)
    sec.text("Each artifact runs in the runtime named against the PyTorch model on the same inputs; the bracket "
             "after each figure is the profile's tolerance (the gate passes when all three hold). Each "
             "artifact's figures are in `export/ARTIFACT/report.json`.")
    trt = next((a for a in r["export"].data["artifacts"] if a["target"] == "tensorrt"), None)
    if trt and trt.get("report"):
        cmd = trt["report"].get("trtexec")
        if cmd:
            sec.text(f"TensorRT (not installed here) builds the engine on the device with:\n\n```\n{cmd}\n```")


def _inputs(n: int | None, kinds: dict[str, int]) -> str:
    """How many inputs a parity check ran on, and of which kind (digits images or random noise)."""
    if n is None:
        return "-"
    parts = [f"{kinds[k]} {k}" for k in ("real", "random") if kinds.get(k)]
    return f"{n} ({', '.join(parts)})" if parts else str(n)


def _with_limit(value: float | None, op: str, limit: float | None, digits: int = 4) -> str:
    """``value (op limit)``: a parity figure next to the tolerance it is held to."""
    if value is None:
        return "-"
    text = f"{value:.{digits}f}" if digits > 4 else fmt(value, digits)
    return text if limit is None else f"{text} ({op} {fmt(limit, digits)})"


def _profile_section(rep: Report, r: dict[str, StepResult]) -> None:
    sec = rep.section("Latency on this machine (median of interleaved runs)")
    if not _ok(r, "profile"):
        sec.text(_not_available(r, "profile", "profile"))
        return
    data = r["profile"].data
    rows = [[x["runtime"], x["precision"] + (" (parity FAILED)" if x.get("parity_failed") else ""), x.get("runs"),
             x["p50_ms"], x["p90_ms"], x["speedup"], x["gmacs"], x["peak_fraction"]] for x in data["rows"]]
    sec.table(["runtime", "precision", "timed runs", "p50 ms", "p90 ms", "speed-up vs FP32 (p50)", "GMAC/s",
               "fraction of peak"], rows)
    if data.get("not_profiled"):
        sec.text("Not profiled: " + "; ".join(data["not_profiled"]) + ".")
    raw = sorted({x["json"] for x in data["rows"] if x.get("json")})
    batches = sorted({x.get("batch", 1) for x in data["rows"]})
    own = " The profiler's own figures: " + ", ".join(f"`{n}`" for n in raw) + "." if raw else ""
    sec.text(f"Batch {', '.join(map(str, batches))}; FP32 and INT8 timed in turn (A B A B ...); speed-up = FP32 p50 "
             f"/ this p50 (above 1: INT8 is faster).{own}")
    by_key = {(x["runtime"], x["precision"]): x for x in data["rows"]}
    fastest = min((x["p50_ms"] for x in data["rows"] if x["precision"] == "FP32"), default=None)
    if any(x["speedup"] and x["speedup"] < 1 for (_, prec), x in by_key.items() if prec == "INT8"):
        sec.text(
            f"At the demo's 32x32 input the whole network is small ({fmt(fastest)} ms in FP32 here), so the "
            "Q/DQ boundaries cost more than int8 arithmetic saves; at 224x224 the repository's "
            "`benchmarks/export.json` measures the INT8 IR against FP32 (`python benchmarks/export.py "
            "--img-size 224`)."
        )
    for plot in data["plots"]:
        sec.image(plot, plot)


def _approx_section(rep: Report, demo: Demo) -> None:
    sec = rep.section("Hardware-friendly softmax and GELU: error against float64")
    data = getattr(demo, "approx", None)
    if not data:
        reason = getattr(demo, "approx_error", "")
        sec.text("Not available: the approximation report could not be computed"
                 + (f" ({reason}; traceback in demo.log)." if reason else "."))
        return
    rows = [[x["op"], x["method"], x["repr"], x["max_abs_err"], x["mean_abs_err"]] for x in data["records"]]
    sec.table(["op", "method", "representation", "max abs err", "mean abs err"], rows)
    sec.image("approx_errors.png", "approximation error curves")


def _hls_section(rep: Report, r: dict[str, StepResult], out: Path) -> None:
    sec = rep.section("FPGA: one MoE encoder layer in HLS C++ (zcu102-hls)")
    h = r["hls"].data if _usable(r.get("hls")) else {}
    if not h.get("csim"):
        sec.text(_not_available(r, "hls", "HLS"))
        return
    if not _ok(r, "hls"):
        sec.text(f"**The HLS step failed: {r['hls'].detail}.**")
    c = h["csim"]
    est = h.get("estimate") or {}
    shape = est.get("shape", {})
    sec.text(
        f"A small MoE ViT (`edge_moe_vit`, width {shape.get('dim')}, {shape.get('heads')} heads, "
        f"{shape.get('tokens')} tokens, {shape.get('experts')} experts top-{shape.get('top_k')}) trained on "
        f"digits to {fmt(h.get('vit_top1'))}% top-1; its MoE encoder layer was generated as HLS C++ at the "
        "profile's fixed-point widths and run in C simulation against the bit-exact golden model."
    )
    sec.table(["C-sim vectors", "mismatches vs golden", "max abs err vs float", "cosine vs float"],
              [[c.get("vectors"), c.get("mismatches"), c.get("max_abs_err_vs_float"),
                _with_limit(c.get("cosine_vs_float"), "", None, digits=6)]])
    if est:
        sec.table(
            ["estimate (zcu102-hls)", "value"],
            [["MACs", est.get("macs")], ["cycles", (est.get("cycles") or {}).get("total")],
             ["latency at the profile's clock (us)", est.get("latency_us")],
             ["DSP-limited floor (us)", est.get("dsp_floor_us")], ["efficiency", est.get("efficiency")],
             ["DSP slices", (est.get("dsp") or {}).get("total")],
             ["BRAM18K", (est.get("bram18k") or {}).get("total")], ["fits the device", est.get("fits")]],
        )
        if est.get("arithmetic"):
            sec.text("The arithmetic behind the estimate:\n\n```\n" + "\n".join(est["arithmetic"]) + "\n```")
    sec.text(f"The project (firmware, test bench, vectors, Vitis HLS Tcl) is in `{_rel(h['project'], out)}`; "
             "the C simulation's figures are in its `csim_report.json`.")


def run_demo(out_dir: Path, settings: DemoSettings | None = None, force: bool = False,
             console: Console | None = None) -> dict[str, StepResult]:
    """Run the demo into ``out_dir`` (refused if it exists and is not empty, unless ``force``).

    The run writes into a hidden staging folder beside ``out_dir`` (``.NAME.tmp-*``) and replaces ``out_dir``
    only once it has ended, failed steps included (its report says which). If it is stopped (Ctrl-C:
    :class:`DemoInterrupted`) or crashes, a non-empty ``out_dir`` is left as it was and the partial run is kept
    beside it as ``NAME.partial-YYYYmmdd-HHMMSS``; with nothing to keep, the partial run becomes ``out_dir``.
    The returned results name files where they ended up, and so does every file in the folder, the checkpoints'
    metadata included (:func:`_rebase_files`, done before the publishing rename).
    """
    out_dir = replaceable_dir(out_dir)  # never '.', a folder above it, or a file (resolved: a link's target)
    had_output = out_dir.exists() and any(out_dir.iterdir())
    if had_output and not force:
        raise EdgeAttnError(f"output directory '{out_dir}' is not empty; use --force to replace it")
    console = console or Console()
    seen = dir_id(out_dir)  # an empty out_dir found now may be replaced; one made by another run meanwhile may not
    staging: Path | None = None
    demo: Demo | None = None
    try:  # the staging folder is made inside the try: a stop right after it still removes it
        staging = make_staging_dir(out_dir)
        demo = Demo(staging, settings or DemoSettings(), console, final=out_dir)
        results = demo.run()
        _rebase_files(staging, staging, out_dir)  # before the rename: the published folder never names the staging one
    except BaseException as exc:
        if staging is None or demo is None:  # stopped before any step (a SIGTERM as the run set up): nothing to keep
            if staging is not None:
                shutil.rmtree(staging, ignore_errors=True)
            if isinstance(exc, KeyboardInterrupt):
                raise DemoInterrupted(out_dir, kept_aside=False) from exc
            raise
        where = None
        if not had_output:
            with suppress(OutputTakenError):  # another run's output there: kept aside below instead
                publish_dir(staging, out_dir, replace=force, seen=seen)
                where = out_dir
        if where is None:
            where = keep_aside(staging, out_dir, "partial")
            console.print(f"[yellow]The previous output in {escape(str(out_dir))} is unchanged; this run's "
                          f"partial output is in {escape(str(where))}[/]")
        _rebase_results(demo.results, staging, where)
        _rebase_files(where, staging, where)
        if isinstance(exc, KeyboardInterrupt):
            raise DemoInterrupted(where, kept_aside=where != out_dir) from exc
        raise
    try:
        publish_dir(staging, out_dir, replace=force, seen=seen)
    except OutputTakenError:  # another run published out_dir while this one worked: its output stays
        shutil.rmtree(staging, ignore_errors=True)
        raise
    _rebase_results(results, staging, out_dir)
    return results


def _rebase_files(folder: Path, old: Path, new: Path) -> None:
    """Rename the staging folder ``old`` to ``new``, where the run is published, in every file under ``folder`` that
    names it, so that none points into a folder that is gone: JSON records (report.json, result.json, the
    profiler's figures; as JSON escapes the path, formatting kept), other UTF-8 text (demo.log's tracebacks) and
    the strings inside torch files (the checkpoints' meta and state.pt's settings: the run's output_dir, the FP
    checkpoint a QAT run started from). Each file is rewritten atomically. Other binary files (ONNX, IR weights,
    images) are left as they are; none records a path."""
    needle = os.fsencode(str(old))
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and not p.is_symlink()):
        if path.suffix == ".pt":
            if needle in path.read_bytes():  # torch.save stores its pickle uncompressed: the path is there as UTF-8
                _rebase_torch_file(path, str(old), str(new))
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:  # binary
            continue
        forms = [(str(old), str(new))]
        if path.suffix == ".json":  # escaped as JSON writes them: with \u escapes (ensure_ascii) or raw UTF-8
            forms = [(json.dumps(str(old), ensure_ascii=a)[1:-1], json.dumps(str(new), ensure_ascii=a)[1:-1])
                     for a in (True, False)]
        rebased = text
        for was, now in forms:
            rebased = rebased.replace(was, now)
        if rebased != text:
            write_text_atomic(path, rebased)


def _rebase_torch_file(path: Path, old: str, new: str) -> None:
    """Rewrite a torch file (loaded as ``torch.load(weights_only=True)`` reads it) with ``old`` renamed ``new``
    in each of its strings; tensors and container types are kept."""
    import torch

    from edgeattn.quant.checkpoint import atomic_torch_save

    atomic_torch_save(_rebase_strings(torch.load(path, map_location="cpu", weights_only=True), old, new), path)


def _rebase_strings(value: Any, old: str, new: str) -> Any:
    """``value`` with ``old`` renamed ``new`` in every string inside its dicts, lists and tuples (of the same
    types; tensors and numbers as they are)."""
    if isinstance(value, str):
        return value.replace(old, new)
    if isinstance(value, dict):
        return type(value)((k, _rebase_strings(v, old, new)) for k, v in value.items())
    if type(value) in (list, tuple):
        return type(value)(_rebase_strings(v, old, new) for v in value)
    return value


def _rebase_results(results: dict[str, StepResult], old: Path, new: Path) -> None:
    """Rename the folder ``old`` to ``new`` in the steps' paths and notes, in place."""
    for res in results.values():
        res.detail = _rebase(res.detail, str(old), str(new))
        res.data = _rebase(res.data, str(old), str(new))
