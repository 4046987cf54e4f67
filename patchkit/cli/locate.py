"""`patchkit locate`: find loop-driving neurons in a model and write a recipe."""

from __future__ import annotations

import tempfile
from pathlib import Path

import click

from patchkit.cli._common import emit_json, handle_errors, json_option, ui_console


def _ops(text: str) -> list[tuple[str, float]]:
    out = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        if part == "invert":
            out.append(("invert", -1.0))
        elif part == "zero":
            out.append(("zero", 0.0))
        elif part.startswith("scale:"):
            out.append(("scale", float(part.split(":", 1)[1])))
        else:
            raise click.BadParameter(f"{part!r}: use invert, zero or scale:F", param_hint="--ops")
    return out


@click.command("locate")
@click.argument("model")
@click.option("--suite", default="enumeration", show_default=True, help="Probe suite (train split chooses, held-out judges).")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=Path("recipe.yaml"), show_default=True)
@click.option("--resume", "workdir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Work directory: stage results are cached here and reused on a re-run.")
@click.option("--budget-minutes", type=float, default=None, help="Stop starting new sweep runs after this long.")
@click.option("--layers", default=None, help="Comma-separated layers to search (default: ranked by ablation).")
@click.option("--max-edits", type=int, default=1, show_default=True, help="Also try combining the best singles.")
@click.option("--ops", "ops", default="zero,invert", show_default=True, help="Ops to try: invert, zero, scale:F.")
@click.option("--limit", type=int, default=None, help="Probes per kind and split (quick runs).")
@click.option("--max-new-tokens", type=int, default=256, show_default=True)
@click.option("--top-layers", type=int, default=3, show_default=True)
@click.option("--candidates", type=int, default=24, show_default=True, help="Neurons measured exactly after attribution.")
@click.option("--sweep", "sweep_top", type=int, default=6, show_default=True, help="Candidates confirmed by full generation.")
@click.option("--dtype", default="float32", show_default=True)
@click.option("--device", default="cpu", show_default=True)
@json_option
@handle_errors
def locate_cmd(model, suite, output, workdir, budget_minutes, layers, max_edits, ops, limit, max_new_tokens,
               top_layers, candidates, sweep_top, dtype, device, as_json):
    """Localise loop-driving MLP neurons in MODEL (ablation -> attribution -> sweeps) and write a recipe."""
    from patchkit.locate import LocateSettings, run_locate

    con = ui_console(as_json)
    settings = LocateSettings(suite=suite, limit=limit, max_new_tokens=max_new_tokens, top_layers=top_layers,
                              attribution_top=candidates, sweep_top=sweep_top, ops=_ops(ops), max_edits=max_edits,
                              layers=[int(x) for x in layers.split(",")] if layers else None,
                              budget_minutes=budget_minutes)
    workdir = workdir or Path(tempfile.mkdtemp(prefix="patchkit-locate-"))
    result = run_locate(model, out=output, workdir=workdir, settings=settings, dtype=dtype, device=device,
                        log=lambda msg: con.print(f"[dim]{msg}[/dim]"))
    if as_json:
        emit_json(result.to_json())
        return
    con.print(f"chosen: [bold]{result.chosen['label']}[/bold] (train score {result.chosen['score']:.3f})")
    for side in ("base", "patched"):
        m = result.heldout.get(side, {})
        if m:
            lr = m["loop_rate"]
            con.print(f"held-out {side}: loops {lr['k']}/{lr['n']} (95% CI {lr['ci'][0]:.2f}–{lr['ci'][1]:.2f}), "
                      f"good lists {m['good_list_rate']['k']}/{m['good_list_rate']['n']}, "
                      f"controls {m['control_accuracy']['k']}/{m['control_accuracy']['n']}")
    con.print(f"wrote {result.recipe_path}; report in {result.report_dir}")
