"""`patchkit locate`: collect -> layer ablation -> neuron attribution -> generation sweeps -> held-out check.

Each stage writes its result as JSON into the work directory; `--resume DIR` reuses every finished stage.
Edits are only ever chosen on the train split; the held-out split judges the winner once.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from patchkit import __version__
from patchkit.errors import CheckError, PatchkitError
from patchkit.fsutil import atomic_write_text
from patchkit.locate.ablation import layer_ablation, rank_layers
from patchkit.locate.attribution import exact_effects, neuron_attribution, rank_neurons
from patchkit.locate.scoring import ForcedBatch
from patchkit.locate.sweep import Candidate, run_with_edits, score, summary
from patchkit.locate.transcripts import build_transcripts
from patchkit.recipe import ResolvedEdit


class LocateFailed(PatchkitError):
    """The search ran but found no edit that helps on the train probes."""

    exit_code = 1


@dataclass
class LocateSettings:
    suite: str = "enumeration"
    limit: int | None = None            # probes per kind and split
    max_new_tokens: int = 256
    top_layers: int = 3
    attribution_top: int = 24
    sweep_top: int = 6
    ops: list[tuple[str, float]] = field(default_factory=lambda: [("zero", 0.0), ("invert", -1.0)])
    max_edits: int = 1
    layers: list[int] | None = None
    budget_minutes: float | None = None
    batch_size: int = 16

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items()}


@dataclass
class LocateResult:
    recipe_path: Path | None
    report_dir: Path
    chosen: dict[str, Any] | None
    heldout: dict[str, Any]
    seconds: float

    def to_json(self) -> dict[str, Any]:
        return {"recipe": str(self.recipe_path) if self.recipe_path else None, "report_dir": str(self.report_dir),
                "chosen": self.chosen, "heldout": self.heldout, "seconds": round(self.seconds, 1)}


class _Stages:
    """On-disk cache of stage results (JSON) so an interrupted run resumes where it stopped."""

    def __init__(self, workdir: Path, fingerprint: dict[str, Any]):
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        marker = self.dir / "settings.json"
        text = json.dumps(fingerprint, sort_keys=True, default=str)
        if marker.exists() and marker.read_text() != text:
            raise CheckError(f"{self.dir}: holds a locate run with other settings", hint="use a new --resume directory")
        atomic_write_text(marker, text)

    def get(self, name: str) -> Any | None:
        path = self.dir / f"{name}.json"
        return json.loads(path.read_text()) if path.exists() else None

    def put(self, name: str, value: Any) -> Any:
        atomic_write_text(self.dir / f"{name}.json", json.dumps(value, indent=1, default=str))
        return value


def _results_json(run: Any) -> dict[str, Any]:
    return {"train": summary(run.metrics(split="train")), "heldout": summary(run.metrics(split="heldout")),
            "metrics": run.metrics().to_json()}


def run_locate(model_ref: str | Path, *, out: Path, workdir: Path, settings: LocateSettings | None = None,
               dtype: str = "float32", device: str = "cpu", log: Callable[[str], None] = lambda s: None,
               progress: Callable[[str, int, int], None] | None = None) -> LocateResult:
    """Run every stage on `model_ref`; write the recipe to `out` (if an edit helps) and a report to `workdir`."""
    import torch

    from patchkit.adapters import get_adapter
    from patchkit.checks.loops import LoopSettings
    from patchkit.checks.probes import load_suite
    from patchkit.generate.loading import load_model
    from patchkit.model import resolve_model

    s = settings or LocateSettings()
    started = time.perf_counter()
    deadline = started + s.budget_minutes * 60 if s.budget_minutes else None
    stages = _Stages(workdir, {"model": str(model_ref), **s.to_json()})
    ref = resolve_model(str(model_ref))
    adapter = get_adapter(ref.config)
    model, tok = load_model(model_ref, dtype=dtype, device=device)
    suite = load_suite(s.suite)
    train = suite.select(split="train", limit=s.limit)
    heldout = suite.select(split="heldout", limit=s.limit)
    loop_settings = LoopSettings(suite=s.suite, max_new_tokens=s.max_new_tokens)

    # 1. collect (train only)
    log("collect: greedy generations on the train split")
    base_run = run_with_edits(model, tok, train, loop_settings, [], label="collect", batch_size=s.batch_size, progress=progress)
    base_train = summary(base_run.metrics())
    stages.put("collect", {"summary": base_train, "results": [r.to_json() for r in base_run.results]})
    transcripts = build_transcripts(tok, base_run.results, max_tokens=s.max_new_tokens + 160)
    n_loop = sum(t.kind == "loop" for t in transcripts)
    if n_loop == 0:
        raise LocateFailed(f"the base model does not loop on the {len(train.by_kind('enumeration'))} train probes: nothing to locate")
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    fb = ForcedBatch.build(transcripts, pad, next(model.parameters()).device)
    log(f"collect: {base_train['loops']}/{base_train['n']} train probes loop; {fb.n('loop')} loop positions, "
        f"{fb.n('novel')} novel, {fb.n('control')} control")

    # 2. layer ablation
    ablation = stages.get("ablation")
    if ablation is None:
        log("ablation: zero and mean ablation of every layer's MLP")
        ablation = stages.put("ablation", layer_ablation(model, fb, layers=s.layers,
                                                         progress=(lambda n: progress("ablation", n, adapter.num_layers)) if progress else None))
    top_layers = s.layers if s.layers and len(s.layers) <= s.top_layers else rank_layers(ablation, s.top_layers)
    log(f"ablation: top layers {top_layers}")

    # 3. attribution + exact effects
    effects = stages.get("attribution")
    if effects is None:
        attr = neuron_attribution(model, fb, top_layers)
        candidates = rank_neurons(attr, s.attribution_top)
        effects = stages.put("attribution", exact_effects(model, fb, candidates, s.ops,
                                                          progress=(lambda n: progress("attribution", n, len(candidates) * len(s.ops))) if progress else None))
    log(f"attribution: {len(effects)} exact (neuron, op) effects; best flips {effects[0].get('flips_loop', 0):.3f}" if effects else "attribution: none")

    # 4. sweep on train: singles, then small combinations of the best singles
    sweep = stages.get("sweep") or []
    done = {row["label"] for row in sweep}
    singles = [Candidate([ResolvedEdit(e["layer"], "neuron", e["neuron"], e["op"], e["factor"], "down_proj")],
                         e.get("kl_control", 0.0)) for e in effects[: s.sweep_top]]
    for cand in singles:
        if cand.label in done:
            continue
        if deadline and time.perf_counter() > deadline:
            log("sweep: budget reached")
            break
        run = run_with_edits(model, tok, train, loop_settings, cand.edits, label=cand.label, batch_size=s.batch_size, progress=progress)
        stats = summary(run.metrics())
        sweep.append({"label": cand.label, "edits": [e.__dict__ for e in cand.edits], "kl_control": cand.kl_control,
                      **stats, "score": score(base_train, stats, cand.kl_control)})
        stages.put("sweep", sweep)
    if s.max_edits > 1 and len(sweep) >= 2 and not (deadline and time.perf_counter() > deadline):
        best = sorted(sweep, key=lambda r: -r["score"])[: min(s.max_edits, 3)]
        combo = Candidate([ResolvedEdit(**{k: v for k, v in e.items() if k != "where"}) for r in best for e in r["edits"]],
                          sum(r["kl_control"] for r in best))
        if combo.label not in done and len({(e.layer, e.index) for e in combo.edits}) == len(combo.edits):
            run = run_with_edits(model, tok, train, loop_settings, combo.edits, label=combo.label, batch_size=s.batch_size, progress=progress)
            stats = summary(run.metrics())
            sweep.append({"label": combo.label, "edits": [e.__dict__ for e in combo.edits], "kl_control": combo.kl_control,
                          **stats, "score": score(base_train, stats, combo.kl_control)})
            stages.put("sweep", sweep)
    ranked = sorted(sweep, key=lambda r: -r["score"])
    winner = ranked[0] if ranked and ranked[0]["score"] > 0 and ranked[0]["loops"] < base_train["loops"] else None

    # 5. held-out confirmation (only now are held-out prompts generated)
    heldout_json: dict[str, Any] = {}
    recipe_path = None
    if winner is not None:
        edits = [ResolvedEdit(**{k: v for k, v in e.items() if k != "where"}) for e in winner["edits"]]
        base_h = run_with_edits(model, tok, heldout, loop_settings, [], label="heldout base", batch_size=s.batch_size, progress=progress)
        patched_h = run_with_edits(model, tok, heldout, loop_settings, edits, label="heldout patched", batch_size=s.batch_size, progress=progress)
        heldout_json = {"base": base_h.metrics().to_json(), "patched": patched_h.metrics().to_json(),
                        "kl_control_train": winner["kl_control"]}
        stages.put("heldout", heldout_json)
        recipe_path = write_recipe(out, ref, adapter.architecture, winner, base_train, heldout_json, train, heldout, s)
    seconds = time.perf_counter() - started
    report = {"model": str(model_ref), "patchkit_version": __version__, "settings": s.to_json(), "seconds": round(seconds, 1),
              "base_train": base_train, "ablation": ablation, "top_layers": top_layers, "attribution": effects,
              "sweep": ranked, "chosen": winner, "heldout": heldout_json}
    stages.put("report", report)
    from patchkit.locate.report import plot_report

    plot_report(report, workdir / "locate.png")
    if winner is None:
        raise LocateFailed(f"no single edit reduced train loops without a larger cost (best score "
                           f"{ranked[0]['score']:.3f}); report in {workdir}" if ranked else f"no candidates; report in {workdir}")
    return LocateResult(recipe_path, workdir, winner, heldout_json, seconds)


def write_recipe(out: Path, ref: Any, architecture: str, winner: dict[str, Any], base_train: dict[str, Any],
                 heldout: dict[str, Any], train: Any, heldout_suite: Any, s: LocateSettings) -> Path:
    """A recipe whose `source` records method, probes, scores with n and Wilson intervals, and the version."""
    from ruamel.yaml import YAML
    from io import StringIO

    from patchkit.recipe import parse_recipe

    edits = []
    for e in winner["edits"]:
        edit = {"layer": e["layer"], "neuron": e["index"], "op": e["op"]}
        if e["op"] == "scale":
            edit["factor"] = e["factor"]
        edits.append(edit)
    name = f"{(ref.repo_id or Path(str(ref.ref)).name).split('/')[-1]}-loopfix".lower().replace(" ", "-")
    doc = {
        "patchkit": 1,
        "name": name,
        "description": f"Found by patchkit locate: {winner['label']} (train probes only; judged on held-out probes).",
        "model": {k: v for k, v in {"repo": ref.repo_id, "revision": ref.revision, "architecture": architecture}.items() if v},
        "source": {
            "kind": "locate", "reference": f"patchkit locate {__version__}",
            "method": "per-layer MLP ablation -> act x grad attribution (normalised, contrasted with controls) -> "
                      "exact teacher-forced effects -> greedy generation sweep on train probes -> held-out confirmation",
            "train_probes": [p.id for p in train.probes], "heldout_probes": [p.id for p in heldout_suite.probes],
            "train": {"base": base_train, "patched": {k: winner[k] for k in ("n", "loops", "loop_rate", "good_lists", "completeness", "control_failures")},
                      "score": winner["score"]},
            "heldout": {side: {k: heldout[side][k] for k in ("loop_rate", "good_list_rate", "completeness", "control_accuracy")}
                        for side in ("base", "patched")},
            "kl_control": winner["kl_control"],
            "settings": {"max_new_tokens": s.max_new_tokens, "suite": s.suite, "limit": s.limit},
        },
        "edits": edits,
    }
    buf = StringIO()
    yaml = YAML()
    yaml.default_flow_style = None
    yaml.dump(doc, buf)
    text = buf.getvalue()
    parse_recipe(text, str(out))
    return atomic_write_text(Path(out), text)
