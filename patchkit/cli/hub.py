"""`patchkit push`, `patchkit pull`, `patchkit card`: thin shells over patchkit.publish.hub and patchkit.publish.card."""

from __future__ import annotations

from pathlib import Path

import click

from patchkit.cli._common import emit_json, handle_errors, json_option, ui_console


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"  # pragma: no cover


def _show_plan(plan, console) -> None:
    from rich.table import Table

    target = f"{plan.repo_id} ({'pull request against ' if plan.create_pr else ''}{plan.revision})"
    table = Table(title=f"dry run: would upload to {target}{', private' if plan.private else ''}")
    for col in ("file", "size", "storage", "sha256"):
        table.add_column(col)
    for f in plan.files:
        table.add_row(f.path, _size(f.size), "LFS" if f.lfs else "git", f.sha256[:16])
    console.print(table)
    console.print(f"{len(plan.files)} files, {_size(plan.total_bytes)}, commit message: {plan.message!r}")
    console.rule("README.md (model card)")
    console.print(plan.card, markup=False, highlight=False)
    console.print("nothing was sent (dry run)")


@click.command("push")
@click.argument("directory", metavar="PATH", type=click.Path(path_type=Path))
@click.option("--repo", "repo_id", required=True, metavar="ORG/NAME", help="Target model repo (created if missing).")
@click.option("--private", is_flag=True, help="Create the repo as private.")
@click.option("--pr", "create_pr", is_flag=True, help="Open a pull request instead of committing to the branch.")
@click.option("--revision", default=None, metavar="BRANCH", help="Branch to commit to (created from main if missing).")
@click.option("--message", default=None, help="Commit message (default: 'patchkit: <recipe name>').")
@click.option("--loops-report", type=click.Path(path_type=Path), help="`patchkit loops --json` output for the card.")
@click.option("--bench-report", type=click.Path(path_type=Path), help="`patchkit bench --json` output for the card.")
@click.option(
    "--allow-unpatched",
    is_flag=True,
    help="Push a directory without patchkit.json (or a .gguf without patchkit metadata).",
)
@click.option("--dry-run", is_flag=True, help="Print files, sizes and the card; send nothing.")
@json_option
@handle_errors
def push_cmd(
    directory,
    repo_id,
    private,
    create_pr,
    revision,
    message,
    loops_report,
    bench_report,
    allow_unpatched,
    dry_run,
    as_json,
):
    """Upload an `apply` output directory or a patched .gguf (PATH) to the Hub in one commit (or PR), then
    verify the remote files.

    PATH is the output directory of `patchkit apply`, or the .gguf it wrote from a .gguf model (any part of a
    split set, or the directory holding the set, uploads every part). A GGUF goes up under its file name(s),
    with a README.md card built from the patchkit metadata inside it (quant type, edits, recipe, source
    sha256, llama.cpp / Ollama commands). The token comes from HF_TOKEN or `hf auth login`. Re-running after an
    interruption uploads only what is missing. Exit 1 if the remote copy does not match the local files.
    """
    from patchkit.publish import hub

    console = ui_console(as_json)
    plan = hub.plan_push(
        directory,
        repo_id,
        revision=revision,
        create_pr=create_pr,
        private=private,
        message=message,
        allow_unpatched=allow_unpatched,
        loops_report=loops_report,
        bench_report=bench_report,
        progress=True,
    )
    if dry_run:
        if as_json:
            emit_json({"dry_run": True, **plan.to_json()})
        else:
            _show_plan(plan, console)
        return
    result = hub.execute_push(plan)
    if as_json:
        emit_json(result.to_json())
    else:
        where = result.pr_url or result.commit_url
        if not result.changed:
            console.print(
                f"nothing to push: {plan.repo_id}@{plan.revision} already holds these files "
                f"(commit {result.commit_oid[:12]}); "
                + ("no pull request was opened" if plan.create_pr else "no commit was made"),
                markup=False,
            )
        else:
            console.print(
                f"pushed {len(plan.files)} files ({_size(plan.total_bytes)}) to {plan.repo_id}: {where}", markup=False
            )
        status = "ok" if result.check.ok else "MISMATCH"
        console.print(f"verified {result.check.checked} remote files (size + sha256): {status}")
        for line in result.check.mismatches:
            console.print(f"  {line}", markup=False)
        if result.check.extra:
            console.print(
                f"note: {len(result.check.extra)} older remote files were left untouched: "
                + ", ".join(result.check.extra[:5]),
                markup=False,
            )
    hub.fail_on_mismatch(result.check, result.commit_url)


@click.command("pull")
@click.argument("ref", metavar="ORG/NAME[@REV]")
@click.option("--local-dir", type=click.Path(path_type=Path), help="Download here instead of the HF cache.")
@json_option
@handle_errors
def pull_cmd(ref, local_dir, as_json):
    """Download a Hub repo (into the HF cache, or --local-dir) and check it against its own provenance.

    A checkpoint is checked against its patchkit.json (size + sha256 of every file); a patched .gguf against the
    patchkit metadata inside it (sha256 of every edited row range). Exit 1 if anything differs. A pull into the HF
    cache also records the branch, so later commands find the copy with HF_HUB_OFFLINE=1.
    """
    from patchkit.errors import VerifyError
    from patchkit.publish import hub

    result = hub.pull(ref, local_dir=local_dir)
    if as_json:
        emit_json(result.to_json())
    else:
        console = ui_console(False)
        console.print(
            f"{result.repo_id}{'@' + result.revision if result.revision else ''} (commit {result.commit[:12]}): "
            f"{len(result.files)} files in {result.path}",
            markup=False,
        )
        verdict = "yes" if result.provenance_ok else "NO"
        if result.checked_against == "gguf":
            console.print(
                f"edited rows match the patchkit metadata of {', '.join(result.gguf_files)}: {verdict}", markup=False
            )
        elif result.provenance_ok is None:
            console.print("no patchkit.json and no GGUF with patchkit metadata in this repo: nothing to check against")
        else:
            console.print(f"files match patchkit.json: {verdict}")
        for note in result.notes:
            console.print(f"note: {note}", markup=False)
    if result.provenance_ok is False:
        record = "GGUF's patchkit metadata" if result.checked_against == "gguf" else "patchkit.json"
        raise VerifyError(
            f"{result.path}: {'; '.join(result.mismatches[:3])}",
            hint=f"the repo's files do not match its {record}; do not use it",
        )


@click.command("card")
@click.argument("directory", metavar="PATH", type=click.Path(path_type=Path))
@click.option("--loops-report", type=click.Path(path_type=Path), help="`patchkit loops --json` output.")
@click.option("--bench-report", type=click.Path(path_type=Path), help="`patchkit bench --json` output.")
@click.option("--repo", "repo_id", default=None, metavar="ORG/NAME", help="Repo the card is for (names the model).")
@click.option("-o", "--out", "output", type=click.Path(path_type=Path), help="Write the card here (else stdout).")
@json_option
@handle_errors
def card_cmd(directory, loops_report, bench_report, repo_id, output, as_json):
    """Render the model card (README.md) for an `apply` output directory or a patched .gguf (PATH)."""
    from patchkit._io.atomic import atomic_write_text
    from patchkit.publish.card import card_for_dir, card_for_gguf, card_metadata
    from patchkit.publish.hub import gguf_push_target

    gguf = gguf_push_target(directory)
    if gguf is not None:
        card = card_for_gguf(gguf.files[0], loops_report=loops_report, bench_report=bench_report, repo_id=repo_id)
    else:
        card = card_for_dir(directory, loops_report=loops_report, bench_report=bench_report, repo_id=repo_id)
    text = str(card)
    if output is not None:
        atomic_write_text(output, text)
    if as_json:
        emit_json({"path": str(output) if output else None, "metadata": card_metadata(text), "card": text})
    elif output is None:
        click.echo(text, nl=False)
    else:
        ui_console(False).print(f"wrote {output}", markup=False)
