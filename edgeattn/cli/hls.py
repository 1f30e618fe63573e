"""`edgeattn hls MODEL --profile zcu102-hls -o PRJ [--checkpoint FILE] [--csim]`: write an HLS project.

The project holds the Edge-MoE-style accelerator's C++ (one encoder layer, or the whole tiny ViT with
``--layer all``), weights at the profile's widths, test vectors from the PyTorch model with the fixed-point
golden outputs, a test bench and a Vitis HLS Tcl script. ``--csim`` compiles and runs the test bench with g++
and the ``ap_types`` headers from hls4ml, and writes ``PRJ/csim_report.json``.

Exit codes: 0 ok; 1 the C simulation differs from the golden model, or the accuracy gate (``--atol``,
``--min-cosine``) failed: the project is written all the same, with the figures; 2 bad input; 3 g++ failed;
4 g++ or the ap_types headers are missing.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import typer

from edgeattn.cli._common import check_report_path, console, sigterm_as_interrupt, with_run_files, write_json


def _parse_layer(text: str) -> int | None:
    from edgeattn.errors import EdgeAttnError

    if text.strip().lower() in ("all", "model", "vit"):
        return None
    try:
        return int(text)
    except ValueError:
        raise EdgeAttnError(f"--layer must be an encoder layer index or 'all', got {text!r}") from None


def _parse_sets(items: list[str]) -> dict:
    import yaml

    from edgeattn.errors import EdgeAttnError

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise EdgeAttnError(f"--set takes KEY=VALUE (a model argument), got {item!r}")
        out[key.strip()] = yaml.safe_load(value)
    return out


def _load_model(model: str, checkpoint: Path | None, kwargs: dict) -> tuple[Any, dict | None]:
    """``(model, meta)``: the model to generate for, from a checkpoint when given, else the registry with ``kwargs``;
    ``meta`` is an ``edgeattn qat`` checkpoint's (``None`` otherwise)."""
    import torch

    from edgeattn.errors import EdgeAttnError
    from edgeattn.models import create_model

    def build() -> Any:
        try:
            return create_model(model, **kwargs)
        except EdgeAttnError:
            raise
        except ValueError as exc:  # the model's own argument checks: name the --set values (other errors are bugs)
            if not kwargs:
                raise
            given = " ".join(f"{k}={v!r}" for k, v in kwargs.items())
            raise EdgeAttnError(f"--set {given}: '{model}' rejects these arguments ({exc})") from exc

    if checkpoint is None:
        return build(), None
    if not checkpoint.is_file():
        what = "is a folder, not a file" if checkpoint.is_dir() else "not found"
        raise EdgeAttnError(f"--checkpoint '{checkpoint}' {what}")
    try:
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is a user error here
        raise EdgeAttnError(
            f"--checkpoint '{checkpoint}' is not a torch checkpoint ({type(exc).__name__})"
        ) from None
    if isinstance(state, dict) and state.get("format") == "edgeattn-checkpoint":
        from edgeattn.quant.checkpoint import load_checkpoint  # written by `edgeattn qat`

        if kwargs:  # the checkpoint's meta rebuilds the model: --set would be silently ignored
            given = " ".join(f"{k}={v!r}" for k, v in kwargs.items())
            raise EdgeAttnError(
                f"--set {given}: '{checkpoint}' is an `edgeattn qat` checkpoint, which rebuilds its own model; "
                "drop --set (it applies to a plain state_dict)"
            )
        # the design has one width per tensor: every token at act_bits (see _notes)
        net, meta = load_checkpoint(checkpoint, strip_token_adaptive=True, dtype=torch.float32)
        if meta.get("model") != model:
            raise EdgeAttnError(
                f"--checkpoint '{checkpoint}' holds a '{meta.get('model')}' model, not '{model}'"
            )
        _refuse_nonfinite(checkpoint, net)
        return net, meta
    # otherwise a plain state_dict of the registry model built with --set arguments
    net = build()
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if isinstance(state, dict) and set(state) != set(net.state_dict()):
        raise EdgeAttnError(f"--checkpoint '{checkpoint}' does not fit '{model}': {_key_diff(state, net)}")
    try:
        net.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as exc:
        # torch's message is a header line ("Error(s) in loading state_dict for X:") and then the details
        lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
        first = " ".join(lines)[:300] if lines else type(exc).__name__
        raise EdgeAttnError(f"--checkpoint '{checkpoint}' does not fit '{model}': {first}") from None
    _refuse_nonfinite(checkpoint, net)
    return net, None


def _refuse_nonfinite(checkpoint: Path, net: Any) -> None:
    """Refuse weights holding NaN or inf (a diverged run's): they would overflow every fixed-point width."""
    from edgeattn.errors import EdgeAttnError
    from edgeattn.quant.checkpoint import nonfinite_weights

    bad = nonfinite_weights(net)
    if bad is not None:
        raise EdgeAttnError(f"--checkpoint '{checkpoint}' holds non-finite weights ({bad}); it is from a diverged run")


def _key_diff(state: dict, net: Any) -> str:
    """How the keys of a state_dict differ from the model's, in a few words (counts and the first of each)."""
    expected, given = set(net.state_dict()), {str(k) for k in state}
    parts = []
    for what, keys in (("missing", sorted(expected - given)), ("unexpected", sorted(given - expected))):
        if keys:
            parts.append(f"{len(keys)} {what} key(s), e.g. '{keys[0]}'")
    return "; ".join(parts) + " (built with the same --set arguments?)"


def _token_adaptive_note(meta: dict | None) -> list[str]:
    quant = (meta or {}).get("quant") or {}
    if not quant.get("token_adaptive"):
        return []
    act, low = quant.get("act_bits"), quant.get("low_act_bits")
    return [
        f"token-adaptive checkpoint: the design has one width per tensor, so every token runs at the "
        f"checkpoint's act bits ({act}); its {low}-bit low-importance tokens are not reproduced (the reference "
        f"model is stripped the same way)"
    ]


def _approx_note(info: Any, meta: dict | None) -> list[str]:
    model, design = info.approx.get("model", {}), info.approx.get("design", {})
    if all(model.get(k) == [design.get(k)] for k in ("softmax", "gelu")):
        return []
    verb = "was trained with" if meta is not None else "computes"
    methods = " and ".join(f"{k} {'/'.join(model.get(k) or ['none'])}" for k in ("softmax", "gelu"))
    return [
        f"the checkpoint's model {verb} {methods}; the design computes softmax {design.get('softmax')} and "
        f"GELU {design.get('gelu')} (their gap, measured: approx_vs_float "
        f"{info.approx_vs_float['max_abs_err']:.3g})"
    ]


def _requantized_note(info: Any) -> list[str]:
    q = info.stats.get("quant_weights") or {}
    if not q.get("rerounded"):
        return []
    fmt = info.formats
    return [
        f"{q['rerounded']} of {q['tensors']} quantized weight tensors are off the ap_fixed<{fmt.weight_width},"
        f"{fmt.weight_int}> grid (LSB 2^-{fmt.weight_frac}): rounded to it, by up to {q['max_change']:.3g}"
    ]


def _notes(info: Any, meta: dict | None, checkpoint: Path | None) -> list[str]:
    """One-line notes on what the design does not take over from the checkpoint."""
    if checkpoint is None:
        return []
    return _token_adaptive_note(meta) + _approx_note(info, meta) + _requantized_note(info)


def _parallel_note(info: Any, parallel: int | None) -> list[str]:
    """One line when the query rows in flight asked for exceed the model's tokens (the design builds fewer)."""
    par = info.estimate["parallelism"]
    used, asked = par["attn_parallel"], par["attn_parallel_requested"]
    if used == asked:
        return []
    source = f"--parallel {asked}" if parallel is not None else f"the profile's attn_parallel {asked}"
    return [
        f"{source} is more than the model's {info.shape.tokens} tokens: the design keeps {used} query rows in "
        f"flight (a slot beyond the token count could never be busy)"
    ]


def _reference_phrase(info: Any) -> str:
    """What the golden model was compared with, for the summary lines."""
    bits = info.reference_bits
    if bits is None:
        return "the float model"
    if info.reference_kind == "design":
        return f"the {bits} checkpoint's weights with float activations (--reference design)"
    return f"the checkpoint's {bits} model (--reference checkpoint)"


@sigterm_as_interrupt()  # SIGTERM unwinds like Ctrl-C: nothing is published, the staging folder is removed
def hls(
    model: str = typer.Argument(
        ..., help="Registry model with plain ViT encoder layers: vit_tiny, edge_moe_vit."
    ),
    profile: str = typer.Option(
        "zcu102-hls", "--profile", "-p", help="Device profile with an 'hls' section."
    ),
    output: Path = typer.Option(..., "--output", "-o", help="Project folder to write."),
    checkpoint: Path | None = typer.Option(
        None, "--checkpoint", help="Weights: an `edgeattn qat` checkpoint or a state_dict."
    ),
    layer: str = typer.Option(
        "0", "--layer", help="Encoder layer for encoder_layer_top, or 'all' for vit_top."
    ),
    vectors: int = typer.Option(4, "--vectors", help="Number of test vectors."),
    vectors_from: str | None = typer.Option(
        None,
        "--vectors-from",
        help="Test images: 'data' (the checkpoint's validation images, else digits) or 'random' "
        "(default: data with --checkpoint, random without).",
    ),
    atol: float | None = typer.Option(
        None,
        "--atol",
        help="Accuracy gate: max abs error vs the reference, as a fraction of its output range (default 0.1).",
    ),
    min_cosine: float | None = typer.Option(
        None, "--min-cosine", help="Accuracy gate: smallest per-vector cosine vs the reference (default 0.99)."
    ),
    reference: str = typer.Option(
        "design",
        "--reference",
        help="Reference of a quantized checkpoint: 'design' (its quantized weights, float activations: what the "
        "design computes) or 'checkpoint' (its fake-quant model, activation quantizers on).",
    ),
    parallel: int | None = typer.Option(
        None, "--parallel", help="Query rows in flight (default: the profile's); at most the model's tokens."
    ),
    seed: int = typer.Option(0, "--seed", help="Seed of random test images (and of the random weights)."),
    sets: list[str] = typer.Option(
        [], "--set", help="Model argument KEY=VALUE (repeatable), e.g. --set embed_dim=96."
    ),
    csim: bool = typer.Option(
        False, "--csim", help="Compile and run the C simulation with g++ (writes csim_report.json)."
    ),
    force: bool = typer.Option(
        False, "--force", help="Replace an existing project folder (and an existing --json file)."
    ),
    json_out: Path | None = typer.Option(None, "--json", help="Also write the summary as JSON here."),
) -> None:
    """Generate an HLS C++ project (Vitis HLS) for the Edge-MoE-style attention accelerator."""
    import torch

    from edgeattn.atomic import check_writable_folder, refuse_replacing_inputs, replaceable_dir
    from edgeattn.errors import EdgeAttnError
    from edgeattn.fpga_hls import find_ap_types, find_compiler, generate_project, run_csim
    from edgeattn.fpga_hls.gate import resolve_tolerance
    from edgeattn.fpga_hls.generator import check_reference
    from edgeattn.fpga_hls.vectors import check_source
    from edgeattn.hostinfo import MAX_SEED

    if not 0 <= seed <= MAX_SEED:  # numpy's seed range, as `edgeattn qat`
        raise EdgeAttnError(f"--seed must be between 0 and {MAX_SEED}, got {seed}")
    which = _parse_layer(layer)
    kwargs = _parse_sets(sets)
    source = vectors_from or ("data" if checkpoint is not None else "random")
    check_source(source)  # before loading the model
    check_reference(reference)
    resolve_tolerance(None, atol, min_cosine)  # out-of-range bounds fail before any work
    replaceable_dir(output)  # not '.', a folder above it, or a file
    from edgeattn.device_profile import names_a_file

    refuse_replacing_inputs(
        output, {"the checkpoint": checkpoint, "the profile": profile if names_a_file(profile) else None}
    )
    if json_out is not None:  # before generating and simulating, not after
        check_report_path(json_out, "--json", force, with_run_files((checkpoint, profile)), output=output)
    check_writable_folder(Path(os.path.abspath(output)).parent, f"output folder '{output}'")
    if output.exists() and not force:
        raise EdgeAttnError(f"{output} already exists; pass --force to replace it")
    if output.is_dir() and any(output.iterdir()) and not (output / "project.json").is_file():
        # --force deletes the folder: only an earlier project (or an empty folder), never the user's other files
        raise EdgeAttnError(
            f"{output} is not an HLS project folder (no project.json): --force only replaces a project; "
            "pick another -o"
        )
    if csim:  # fail before writing anything when the C simulation cannot run here
        find_compiler()
        find_ap_types()
    torch.manual_seed(seed)
    torch.set_num_threads(min(2, torch.get_num_threads()))
    net, meta = _load_model(model, checkpoint, kwargs)
    reports: list[dict] = []

    def simulate(staged: Path) -> None:
        """C-simulate the staged project: a failure or Ctrl-C publishes nothing and keeps an old ``output``."""
        try:
            report = run_csim(staged, write_report=False)  # inside the "generating" status line
        except EdgeAttnError as exc:  # name the folder the user asked for, not the staging one
            raise type(exc)(str(exc).replace(str(staged.resolve()), str(output)), exc.exit_code) from None
        report["project"] = str(output.resolve())  # where it is published, not the staging folder
        write_json(staged / "csim_report.json", report)
        reports.append(report)

    with console.status(f"generating {output}" + (" and running the C simulation (g++)" if csim else "") + " ..."):
        info = generate_project(
            net,
            profile,
            output,
            layer=which,
            vectors=vectors,
            seed=seed,
            attn_parallel=parallel,
            force=force,
            model_name=model,
            check=simulate if csim else None,
            vectors_from=source,
            meta=meta,
            tolerance={"max_abs": atol, "min_cosine": min_cosine},
            reference=reference,
        )
    summary = info.to_json()
    for note in _parallel_note(info, parallel) + _notes(info, meta, checkpoint):
        console.print(f"note: {note}", highlight=False, soft_wrap=True, markup=False)
    vs = _reference_phrase(info)
    console.print(f"test vectors: {info.vectors_source['description']}", highlight=False, soft_wrap=True)
    console.print(
        f"[bold]{output}[/]: {info.top} for {model}"
        + ("" if info.layer is None else f" layer {info.layer}")
        + f"; fixed point vs {vs}: max abs err {info.golden_vs_float['max_abs_err']:.3g}, "
        f"cosine {info.golden_vs_float['cosine']:.6f} (the softmax/GELU approximations alone, "
        f"in {'float' if info.reference_bits is None else 'that model'}: "
        f"{info.approx_vs_float['max_abs_err']:.3g})"
    )
    est = info.estimate
    console.print(
        f"estimate: {est['cycles']['total']} cycles = {est['latency_us']:.1f} us at {est['clock_mhz']:g} MHz "
        f"(DSP floor {est['dsp_floor_us']:.1f} us), DSP {est['dsp']['total']}, "
        f"BRAM18K {est['bram18k']['total']}, weights {est['ddr']['weight_bytes'] / 1e6:.2f} MB from DDR"
    )
    if not est["fits"]:
        console.print(
            f"note: the estimate does not fit the profile's budget: DSP {est['dsp']['total']} of "
            f"{est['budget']['dsp']}, BRAM18K {est['bram18k']['total']} of {est['budget']['bram18k']}",
            highlight=False,
            soft_wrap=True,
            markup=False,
        )
    console.print(_gate_line(info.gate, vs), highlight=False, soft_wrap=True, markup=False)
    failure = None
    if csim:
        report = reports[0]
        summary["csim"] = {k: v for k, v in report.items() if k != "estimate"}
        console.print(
            f"csim: {report['mismatches']} mismatches over {report['vectors']} vectors "
            f"({report['outputs']} outputs) vs the golden model; vs {vs}: max abs err "
            f"{report['max_abs_err_vs_float']:.3g}, cosine {report['cosine_vs_float']:.6f} "
            f"(compile {report['compile_s']:.1f} s, run {report['run_s']:.2f} s)"
        )
        if report["mismatches"]:
            failure = f"C simulation differs from the golden model in {report['mismatches']} outputs"
        elif not report["gate"]["passed"]:
            failure = _gate_failure("the C simulation", report["gate"], vs, output)
    if failure is None and not info.gate["passed"]:
        failure = _gate_failure("the fixed-point golden model", info.gate, vs, output)
    if json_out is not None:
        write_json(json_out, summary)
    if failure is not None:
        raise EdgeAttnError(failure, 1)


def _gate_line(gate: dict, vs: str) -> str:
    """The accuracy gate's figures, bounds and verdict on one console line."""
    from edgeattn.export.parity import shown_beside

    tol = gate["tolerance"]
    verdict = "passed" if gate["passed"] else "FAILED"
    bound = f"{tol['min_cosine']:.10g}"  # whole: --min-cosine 0.9999999 is not "bound 1"
    places = max(6, len(bound.partition(".")[2]) + 1)  # the cosine shows one place more than its bound
    err = shown_beside(gate["max_abs_rel_range"], tol["max_abs"], ".3g")
    cos = shown_beside(gate["cosine"], tol["min_cosine"], f".{places}f")  # never "1.000000 (bound 1): FAILED"
    return (
        f"accuracy gate vs {vs}: max abs err {err} of the output range (bound {tol['max_abs']:.10g}), "
        f"smallest cosine {cos} (bound {bound}): {verdict}"
    )


def _gate_failure(what: str, gate: dict, vs: str, output: Path) -> str:
    """The one-line error of a failed accuracy gate: each figure that misses its bound, and the bound's option."""
    return (
        f"accuracy gate failed: {what} vs {vs}: {'; '.join(gate['failures'])}; "
        f"the project is written to {output} for inspection"
    )
