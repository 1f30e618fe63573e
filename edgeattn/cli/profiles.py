"""`edgeattn profiles list|show|fields`: the shipped device profiles and host detection."""

from __future__ import annotations

import os
from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

from edgeattn.cli._common import check_report_path, console, write_json

app = typer.Typer(help="Device profiles (what each deployment target needs).", no_args_is_help=True)


def _print_listing(table: Table) -> None:
    """Print a listing whose names users copy: into a pipe or file (where rich assumes 80 columns) one line per row
    at the table's natural width, so no name is broken or cut; on a terminal or with COLUMNS set, wrapped to that
    width (words too long for their column fold onto the next line, never cut)."""
    if console.is_terminal or os.environ.get("COLUMNS"):
        console.print(table)
        return
    from edgeattn.profile.report import print_whole_table  # here: the profiler package is slow to import

    print_whole_table(console, table, natural=True)


@app.command("list")
def list_profiles(
    json_out: Path | None = typer.Option(None, "--json", help="Also write the list as JSON to this file."),
    force: bool = typer.Option(False, "--force", help="Replace an existing --json file."),
) -> None:
    """List the shipped profiles with their runtime, precision and bit widths."""
    from edgeattn.device_profile import load_profile, shipped_profile_names

    if json_out is not None:
        check_report_path(json_out, "--json", force)  # before loading: a bad path writes nothing and names itself
    profiles = [load_profile(name) for name in shipped_profile_names()]
    table = Table(title="Shipped device profiles")
    table.add_column("name", no_wrap=True)  # what users type into --profile: never wrapped or cut
    for col in ("targets", "runtime", "precision", "W/A bits", "softmax/GELU", "description"):
        table.add_column(col, overflow="fold")  # a word wider than its column breaks; no character is dropped
    for p in profiles:
        table.add_row(
            p.name,
            ",".join(p.targets),
            f"{p.runtime.name} {p.runtime.version} ({p.runtime.device})",
            p.precision,
            f"{p.quant.weight_bits}/{p.quant.act_bits}",
            f"{p.approx.softmax}/{p.approx.gelu}",
            p.description,
        )
    _print_listing(table)
    if json_out:
        write_json(json_out, [p.model_dump(mode="json") for p in profiles])


@app.command("show")
def show(
    name: str = typer.Argument(..., help="Shipped profile name or path to a profile YAML file."),
    json_out: Path | None = typer.Option(None, "--json", help="Also write the profile as JSON to this file."),
    force: bool = typer.Option(False, "--force", help="Replace an existing --json file."),
) -> None:
    """Show one profile; for `host-cpu`, also what was detected about this machine."""
    import yaml

    from edgeattn.device_profile import HOST_PROFILE, load_profile, names_a_file

    if json_out is not None:
        # a profile file given is the input: never replaced, not even with --force (a shipped name is no file here)
        check_report_path(json_out, "--json", force, (name,) if names_a_file(name) else ())
    profile = load_profile(name)
    payload: dict = {"profile": profile.model_dump(mode="json")}
    console.print(f"[bold]{escape(profile.name)}[/]: {escape(profile.description)}", highlight=False)
    # allow_unicode: names stay readable (not "\xFC" escapes); width: one line per value, as in the file
    text = yaml.safe_dump(payload["profile"], sort_keys=False, allow_unicode=True, width=10**6)
    console.print(escape(text.rstrip()), highlight=False, soft_wrap=True)  # rich would re-wrap at 80 in a pipe
    if profile.name == HOST_PROFILE:
        from edgeattn.hostinfo import detect_host

        host = detect_host()
        payload["host"] = host.model_dump(mode="json")
        table = Table(title="Detected host", show_header=False)
        table.add_row("CPU", host.cpu_model)
        table.add_row("cores", f"{host.physical_cores} physical, {host.logical_cores} logical")
        table.add_row("ISA flags", " ".join(host.isa_flags) or "-")
        table.add_row("VNNI / AMX", f"{host.has_vnni} / {host.has_amx}")
        table.add_row("GPUs", ", ".join(host.gpus) or "none")
        for pkg, ver in host.runtimes.items():
            table.add_row(pkg, ver or "[dim]not installed[/]")
        table.add_row("weight bits here", str(host.recommended_weight_bits))
        table.add_row("K/V bits cap here", str(host.recommended_kv_max_bits or "none"))
        table.add_row("matching profile", f"[bold]{host.matching_profile}[/]")
        console.print(table)
    if json_out:
        write_json(json_out, payload)


@app.command("fields")
def fields() -> None:
    """Document every profile field: dotted name, type and meaning."""
    from edgeattn.device_profile import describe_fields

    table = Table(title="Device profile fields")
    table.add_column("field", no_wrap=True)  # the dotted name a YAML profile uses: never wrapped or cut
    for col in ("type", "meaning"):
        table.add_column(col, overflow="fold")
    for row in describe_fields():
        table.add_row(*row)
    _print_listing(table)
