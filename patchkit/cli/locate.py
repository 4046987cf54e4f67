"""`patchkit locate`: find loop-driving neurons / experts in a model and write a recipe (thin shell over
`patchkit.locate.run_locate`)."""

from __future__ import annotations

from pathlib import Path

import click

from patchkit.cli._common import emit_json, handle_errors, json_option, ui_console
from patchkit.cli._options import earlier_name, one_spelling
from patchkit.cli._progress import progress_bars


def _layers(text: str | None) -> list[int] | None:
    if not text:
        return None
    out: list[int] = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        lo, _, hi = part.partition("-")
        try:
            out.extend(range(int(lo), int(hi) + 1) if hi else [int(lo)])
        except ValueError:
            raise click.BadParameter(
                f"{part!r} is not a layer number or range like 20-25", param_hint="--layers"
            ) from None
    return out


def _rate(d: dict) -> str:
    return f"{d['k']}/{d['n']} (95% CI {d['ci95'][0]:.2f}-{d['ci95'][1]:.2f})"


@click.command("locate")
@click.argument("model")
@click.option(
    "--suite",
    default="enumeration",
    show_default=True,
    help="Probe suite: its train split chooses the edit, its held-out split judges it.",
)
@click.option(
    "-o",
    "--out",
    "output",
    type=click.Path(path_type=Path),
    default=None,
    help="Recipe to write (default: recipe.yaml, or the --from-recipe file itself); the report goes next "
    "to it, in <name>.locate/.",
)
@earlier_name("--output", "output_old", "-o/--out")
@click.option(
    "--from-recipe",
    "from_recipe",
    type=click.Path(path_type=Path),
    default=None,
    help="Unresolved recipe whose resolution.constraints (layers, ops, factors, max edits, kind) bound the "
    "search; the indices are written back into it (or into -o). A shipped recipe's name (e.g. e2b) writes "
    "./NAME.yaml instead.",
)
@click.option(
    "--method",
    type=click.Choice(["sets", "screen"]),
    default="sets",
    show_default=True,
    help="sets: learn sparse factors over every layer and judge nested sets of k = 1, 2, 4, ... units; "
    "screen: rank layers, screen single units there and sweep pairs.",
)
@click.option(
    "--max-set",
    type=click.IntRange(min=1),
    default=256,
    show_default=True,
    help="sets: the largest set judged by generation (a recipe's exact edit count raises it).",
)
@click.option(
    "--set-steps", type=click.IntRange(min=1), default=48, show_default=True, help="sets: optimisation steps."
)
@click.option(
    "--set-probes",
    type=click.IntRange(min=1),
    default=8,
    show_default=True,
    help="sets: train probes per kind generated for every set size k (k is chosen on these).",
)
@click.option(
    "--kl-budget",
    type=click.FloatRange(min=0, min_open=True),
    default=0.01,
    show_default=True,
    help="sets: KL(base || edited) budget in nats/token on control, prose and pre-loop text (a constraint).",
)
@click.option(
    "--heldout-frontier",
    is_flag=True,
    help="sets: after k is chosen on train, also generate every k on the held-out probes (a report; slower).",
)
@click.option(
    "--report",
    "report_dir",
    type=click.Path(path_type=Path),
    default=None,
    help="Directory for locate-report.json, layers.png and sweep.png (as --report in loops, bench, check).",
)
@earlier_name("--report-dir", "report_dir_old", "--report")
@click.option(
    "--budget-minutes",
    type=click.FloatRange(min=0, min_open=True),
    default=15.0,
    show_default=True,
    help="Time budget; the screen and the sweep stop starting new work when their share is used.",
)
@click.option(
    "--layers", default=None, help="Layers to search neuron by neuron, e.g. 20,22 or 20-25 (default: the top-ranked)."
)
@click.option(
    "--max-edits", type=click.IntRange(min=1), default=2, show_default=True, help="Largest combination of edits tried."
)
@click.option(
    "--ops",
    default="invert,zero,scale:0.5,scale:2,scale:3",
    show_default=True,
    help="Neuron ops to try (invert, zero, scale:F; F > 1 amplifies a neuron that brakes loops); each neuron "
    "is screened with the ops on its side (reduce or amplify). MoE experts are always tried with suppress.",
)
@click.option(
    "--backend",
    type=click.Choice(["transformers"]),
    default="transformers",
    show_default=True,
    help="Locate needs gradients and hooks, so it runs the model in-process.",
)
@click.option(
    "--resume",
    type=click.Path(path_type=Path),
    default=None,
    help="Stage cache directory: finished stages are stored here and reused on a re-run.",
)
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Train probes per kind (quick runs).")
@click.option("--heldout-limit", type=click.IntRange(min=1), default=None, help="Held-out probes per kind.")
@click.option(
    "--max-new-tokens",
    type=click.IntRange(min=1),
    default=400,
    show_default=True,
    help="Token budget per generation; it caps every probe, controls included.",
)
@click.option(
    "--device",
    default="auto",
    show_default=True,
    help="auto (CUDA, else MPS, else CPU; several GPUs share the model via device_map=auto), cpu, cuda, cuda:N or mps.",
)
@click.option(
    "--dtype",
    default="float32",
    show_default=True,
    help="float32 by default: attribution and the learned set factors take gradients, which bf16 makes noisy; "
    "auto: the checkpoint's own dtype (half the memory for a bf16 release); or f32, bf16, f16.",
)
@click.option(
    "--chat/--no-chat",
    "chat",
    default=True,
    show_default=True,
    help="Send each probe through the tokenizer's chat template (--no-chat: as raw text, for a base model "
    "without one).",
)
@json_option
@handle_errors
def locate_cmd(
    model,
    suite,
    output,
    from_recipe,
    method,
    max_set,
    set_steps,
    set_probes,
    kl_budget,
    heldout_frontier,
    report_dir,
    budget_minutes,
    layers,
    max_edits,
    ops,
    backend,
    resume,
    limit,
    heldout_limit,
    max_new_tokens,
    device,
    dtype,
    chat,
    as_json,
    output_old,
    report_dir_old,
):
    """Find the MLP neurons / MoE experts of MODEL that drive repetition loops and write a recipe."""
    from patchkit.locate import LocateSettings, parse_ops, run_locate

    output = one_spelling(output, output_old, "-o/--out", "--output")
    report_dir = one_spelling(report_dir, report_dir_old, "--report", "--report-dir")
    con = ui_console(as_json)
    base_recipe = None
    if from_recipe is not None:
        from patchkit.errors import RecipeError
        from patchkit.recipe import load_recipe

        base_recipe = load_recipe(from_recipe)
        if base_recipe.resolution is None or base_recipe.resolution.status != "unresolved":
            raise RecipeError(
                f"{from_recipe}: the recipe is already resolved (it has its edits)",
                hint="--from-recipe takes an unresolved recipe (resolution.status: unresolved)",
            )
    if output is None and from_recipe is not None:
        from patchkit.recipe.packaged import local_copy_path

        output = local_copy_path(from_recipe)  # never write into the installed package
        if output is not None:
            click.echo(f"note: {from_recipe} is a recipe shipped with patchkit; the result goes to {output}", err=True)
    output = output or from_recipe or Path("recipe.yaml")
    settings = LocateSettings(
        suite=suite,
        method=method,
        max_set=max_set,
        set_steps=set_steps,
        set_probes=set_probes,
        kl_budget=kl_budget,
        heldout_frontier=heldout_frontier,
        budget_minutes=budget_minutes,
        layers=_layers(layers),
        max_edits=max_edits,
        ops=tuple(parse_ops(ops)),
        max_new_tokens=max_new_tokens,
        train_limit=limit,
        heldout_limit=heldout_limit,
        backend=backend,
        dtype=dtype,
        device=device,
        chat=chat,
    )
    with progress_bars(con) as progress:
        result = run_locate(
            model,
            out=output,
            settings=settings,
            report_dir=report_dir,
            resume=resume,
            progress=progress,
            log=lambda msg: con.print(f"[dim]{msg}[/dim]"),
            from_recipe=base_recipe,
        )
    if as_json:
        emit_json(result.to_json())
        return
    base = result.report["base_train"]
    con.print(
        f"train: base loops {base['loops']}/{base['n']}, good lists {base['good_lists']}/{base['n']}, "
        f"controls {base['control_correct']}/{base['n_controls']}"
    )
    if result.heldout:
        from patchkit.locate.report import rate

        for side in ("base", "edited"):
            m = result.heldout[side]
            con.print(
                f"held-out {side}: loops {_rate(rate(m['loops'], m['n']))}, good lists "
                f"{_rate(rate(m['good_lists'], m['n']))}, controls "
                f"{_rate(rate(m['control_correct'], m['n_controls']))}"
            )
        con.print(f"KL on prose: {result.heldout['kl_prose']:.4f} nats/token")
        gates = result.heldout.get("gates")
        if gates:
            con.print(
                "held-out gates: "
                + ", ".join(
                    f"{name} {'ok' if g['pass'] else 'FAIL'}" for name, g in gates.items() if isinstance(g, dict)
                )
            )
    if result.found:
        from patchkit.locate.candidates import Candidate

        found = Candidate.from_json(result.winner["candidate"]).short_label
        con.print(f"[green]found[/green] {found}; wrote {result.recipe_path}")
    else:
        con.print(
            f"[yellow]no confirmed edit[/yellow]: {result.report.get('reason') or 'held-out did not confirm'}; "
            f"wrote an unresolved recipe to {result.recipe_path}"
        )
    con.print(f"report: {result.report_dir} ({result.seconds:.0f} s)")
