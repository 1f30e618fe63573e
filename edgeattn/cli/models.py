"""`edgeattn models list|info`: the model registry with parameter and MAC counts."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import typer

from edgeattn.cli._common import check_report_path, console, transient_progress, write_json
from edgeattn.errors import EdgeAttnError

app = typer.Typer(help="Models in the registry.", no_args_is_help=True)

# the counts run a forward pass at that size; 8192 px is past every edge deployment and still a size torch can hold
MAX_IMG_SIZE = 8192


def _describe(name: str, img_size: int | None = None, quiet_language: bool = False) -> dict:
    """Counts for one model at its default input (or ``img_size``): train and deploy form.

    A model without an image size (a language model) refuses ``img_size`` unless ``quiet_language`` (the list,
    where language models keep their own input)."""
    import torch

    import edgeattn
    from edgeattn.models import count_macs, count_params, create_model, example_input, model_entrypoint

    factory = model_entrypoint(name)  # unknown names fail here with the list of valid ones
    takes_img_size = "img_size" in inspect.signature(factory).parameters
    if img_size is not None and not takes_img_size and not quiet_language:
        raise EdgeAttnError(
            f"--img-size: model '{name}' takes no image size (a language model: its input is token ids)"
        )
    kwargs = {"img_size": img_size} if img_size is not None and takes_img_size else {}
    try:
        train = create_model(name, **kwargs).eval()
        deploy = edgeattn.reparameterize(train)
        x = example_input(train)
        macs, macs_train = count_macs(deploy, x), count_macs(train, x)
    except (RuntimeError, MemoryError) as exc:  # the counts run a real forward pass (attention grows as size^4)
        if isinstance(exc, RuntimeError) and "allocate" not in str(exc):
            raise
        asked = re.search(r"allocate (\d+) bytes", str(exc))
        tried = f" (torch tried to allocate {int(asked.group(1)) / 1e9:.1f} GB)" if asked else ""
        raise EdgeAttnError(
            f"--img-size {img_size}: counting {name} at {img_size}x{img_size} needs more memory than this machine "
            f"has free{tried}; try a smaller size"
        ) from None
    bn = (torch.nn.modules.batchnorm._BatchNorm,)
    return {
        "name": name,
        "input_shape": list(x.shape),
        "input_dtype": str(x.dtype).replace("torch.", ""),
        "params": count_params(deploy),
        "params_train": count_params(train),
        "macs": macs,
        "macs_train": macs_train,
        "batchnorm_train": sum(isinstance(m, bn) for m in train.modules()),
        "reparam_blocks": sum(callable(getattr(m, "reparameterize", None)) for m in train.modules()),
    }


@app.command("list")
def list_cmd(
    img_size: int | None = typer.Option(
        None,
        "--img-size",
        min=8,
        max=MAX_IMG_SIZE,
        help="Input side for the vision models (default: each model's own).",
    ),
    json_out: Path | None = typer.Option(None, "--json", help="Also write the table as JSON to this file."),
    force: bool = typer.Option(False, "--force", help="Replace an existing --json file."),
) -> None:
    """List every registered model with parameters and MACs at its default input.

    Each figure is the deploy form's, with the train form's in brackets where over-parameterized branches and
    BatchNorm add to it. Language models keep their own input under --img-size."""
    import torch
    from rich.table import Table

    from edgeattn.models import list_models

    if json_out is not None:
        check_report_path(json_out, "--json", force)  # before counting: a bad path costs nothing and names itself
    torch.set_num_threads(min(2, torch.get_num_threads()))
    names = list_models()
    rows = []
    with transient_progress() as progress:
        task = progress.add_task("counting", total=len(names))
        for name in names:
            progress.update(task, description=name)
            try:
                rows.append(_describe(name, img_size, quiet_language=True))
            except (EdgeAttnError, ValueError) as exc:  # e.g. --img-size 9 for a model with 16-pixel patches
                if img_size is None:
                    raise
                rows.append({"name": name, "error": str(exc)})
            progress.advance(task)
    if all("error" in r for r in rows):
        raise EdgeAttnError(f"--img-size {img_size}: no registered model takes it ({rows[0]['error']})")
    table = Table(title="Registered models (MACs from torch.utils.flop_counter)")
    for col in ("name", "input", "params (train)", "MACs (train)"):
        table.add_column(col, justify="left" if col in ("name", "input") else "right")
    for r in rows:
        if "error" in r:
            table.add_row(r["name"], "-", "-", "-")
            continue
        table.add_row(
            r["name"],
            "x".join(map(str, r["input_shape"][1:])) + ("" if r["input_dtype"] == "float32" else " ids"),
            f"{r['params'] / 1e6:.2f}M ({r['params_train'] / 1e6:.2f}M)",
            f"{r['macs'] / 1e6:.0f}M ({r['macs_train'] / 1e6:.0f}M)",
        )
    console.print(table)
    for r in rows:
        if "error" in r:
            console.print(f"{r['name']}: not at --img-size {img_size}: {r['error']}", highlight=False, markup=False)
    if json_out:
        write_json(json_out, rows)


@app.command("info")
def info(
    name: str = typer.Argument(..., help="Registered model name (see `edgeattn models list`)."),
    img_size: int | None = typer.Option(
        None, "--img-size", min=8, max=MAX_IMG_SIZE, help="Input side for vision models."
    ),
    json_out: Path | None = typer.Option(None, "--json", help="Also write the figures as JSON to this file."),
    force: bool = typer.Option(False, "--force", help="Replace an existing --json file."),
) -> None:
    """Show one model: input, params and MACs of train and deploy forms, BN and reparameterizable blocks."""
    import torch

    if json_out is not None:
        check_report_path(json_out, "--json", force)
    torch.set_num_threads(min(2, torch.get_num_threads()))
    record = _describe(name, img_size)
    for key, value in record.items():
        console.print(f"[bold]{key}[/]: {value}", highlight=False)
    if json_out:
        write_json(json_out, record)
