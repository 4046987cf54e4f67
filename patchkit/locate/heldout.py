"""The held-out judgement: base vs the chosen edit on held-out probes, once, and the gates it must pass.

Gates (the shipped recipes' thresholds; the held-out split decides, after the choice was made on train):
- loop rate down by at least `min_reduction` relative (0.3 = 30 %);
- good-list rate and control accuracy not down beyond noise: an exact McNemar test on the paired probes
  (p < 0.05 with more probes lost than gained fails);
- KL(base || edited) on ordinary prose <= `max_kl` nats/token.

`frontier` generates several candidates on the held-out probes in one batched run: a report of the whole
k-frontier, made after k was chosen, that never feeds a choice.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from patchkit._io.progress import Progress
from patchkit.locate.candidates import Candidate

__all__ = ["Gates", "judge_heldout", "gate_results", "frontier"]


@dataclass(frozen=True)
class Gates:
    min_reduction: float = 0.3
    max_kl: float = 0.02
    alpha: float = 0.05


def _rows_for(runner: Any, tok: Any, candidates: Sequence[Candidate], probes: Sequence[Any]) -> list[Any]:
    from patchkit.locate.generation import prompt_ids
    from patchkit.locate.greedy import Row

    return [Row(c, prompt_ids(tok, p), [], runner.budget(p)) for c in range(len(candidates)) for p in probes]


def _prose_kl(runner: Any, view: Any, tok: Any, candidates: Sequence[Candidate]) -> list[tuple[float, float]]:
    """(KL(base || edited) nats/token, perplexity ratio edited / base) on ordinary prose, per candidate."""
    import math

    from patchkit.locate import attribution as attr
    from patchkit.locate.teacher import build_batch
    from patchkit.locate.transcripts import load_prose

    prose = build_batch([], [], load_prose(tok, limit=6), pad_id=runner.pad_id, device=view.device)
    return [(r.kl_control, math.exp(-r.d_control)) for r in attr.screen(view, prose, list(candidates))]


def _paired(base: Sequence[Any], edited: Sequence[Any]) -> list[dict[str, Any]]:
    return [
        {
            "probe": b.probe.id,
            "kind": b.probe.kind,
            "base": b.verdict.label,
            "edited": e.verdict.label,
            "base_good": b.good_list,
            "edited_good": e.good_list,
            "base_correct": b.correct,
            "edited_correct": e.correct,
            "base_tokens": b.generation.tokens,
            "edited_tokens": e.generation.tokens,
            "edited_text": e.generation.text[:400],
        }
        for b, e in zip(base, edited, strict=True)
    ]


def gate_results(
    base: dict[str, Any], edited: dict[str, Any], per_probe: Sequence[dict[str, Any]], kl: float, gates: Gates = Gates()
) -> dict[str, Any]:
    """Each gate's value and verdict, and `pass` (all of them)."""
    from patchkit.checks.stats import mcnemar_exact

    out: dict[str, Any] = {}
    b, e = base["loop_rate"], edited["loop_rate"]
    reduction = (b - e) / b if b > 0 else 0.0
    out["loop_reduction"] = {
        "value": round(reduction, 4),
        "min": gates.min_reduction,
        "pass": b > 0 and reduction >= gates.min_reduction,
    }
    for name, kind, bk, ek in (
        ("good_lists", "enumeration", "base_good", "edited_good"),
        ("controls", "control", "base_correct", "edited_correct"),
    ):
        rows = [r for r in per_probe if r["kind"] == kind]
        test = mcnemar_exact([bool(r[bk]) for r in rows], [bool(r[ek]) for r in rows])
        worse = test["n01"] > test["n10"] and test["p"] < gates.alpha
        out[name] = {"lost": test["n01"], "gained": test["n10"], "p": round(test["p"], 4), "pass": not worse}
    out["kl"] = {"value": round(kl, 6), "max": gates.max_kl, "pass": kl <= gates.max_kl}
    out["pass"] = all(v["pass"] for v in out.values() if isinstance(v, dict))
    return out


def judge_heldout(
    runner: Any,
    view: Any,
    tok: Any,
    winner: Candidate,
    probes: list[Any],
    settings: Any,
    tick: Progress,
    gates: Gates = Gates(),
) -> dict[str, Any]:
    """Base and winner on the held-out probes in one batched run, plus KL on ordinary prose and the gates."""
    from patchkit.locate.sweep import score_summary, summarize

    rows = _rows_for(runner, tok, [Candidate(), winner], probes)
    done = [0]

    def on_done(_row: Any) -> None:
        done[0] += 1
        tick("heldout", done[0], len(rows))

    runner.generate([Candidate(), winner], rows, on_done=on_done)
    n = len(probes)
    base = runner.results(probes, rows[:n])
    edited = runner.results(probes, rows[n:])
    kl, ppl = _prose_kl(runner, view, tok, [winner])[0]
    bs, es = summarize(base), summarize(edited)
    score, parts = score_summary(bs, es, kl, settings.weights)
    per_probe = _paired(base, edited)
    return {
        "n_probes": n,
        "base": dict(bs),
        "edited": dict(es),
        "kl_prose": kl,
        "ppl_ratio_prose": ppl,
        "score": score,
        "parts": parts,
        "gates": gate_results(bs, es, per_probe, kl, gates),
        "per_probe": per_probe,
    }


def frontier(
    runner: Any,
    view: Any,
    tok: Any,
    candidates: dict[int, Candidate],
    probes: list[Any],
    settings: Any,
    tick: Progress,
    gates: Gates = Gates(),
) -> dict[str, Any]:
    """Every candidate (k -> S_k) and the base on the held-out probes in one batched run (report only)."""
    from patchkit.locate.sweep import score_summary, summarize

    ks = sorted(candidates)
    cands = [Candidate()] + [candidates[k] for k in ks]
    rows = _rows_for(runner, tok, cands, probes)
    done = [0]

    def on_done(_row: Any) -> None:
        done[0] += 1
        tick("frontier", done[0], len(rows))

    runner.generate(cands, rows, on_done=on_done)
    n = len(probes)
    base = runner.results(probes, rows[:n])
    bs = summarize(base)
    kls = _prose_kl(runner, view, tok, cands[1:])
    out: dict[str, Any] = {"base": {k: v for k, v in bs.items()}, "k": {}}
    for i, k in enumerate(ks):
        edited = runner.results(probes, rows[(i + 1) * n : (i + 2) * n])
        es = summarize(edited)
        kl, ppl = kls[i]
        score, _parts = score_summary(bs, es, kl, settings.weights)
        out["k"][str(k)] = {
            "edited": dict(es),
            "kl_prose": kl,
            "ppl_ratio_prose": ppl,
            "score": score,
            "gates": gate_results(bs, es, _paired(base, edited), kl, gates),
        }
    return out
