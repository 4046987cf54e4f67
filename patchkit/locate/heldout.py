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

__all__ = ["Gates", "judge_heldout", "cached_judgement", "gate_results", "frontier"]


@dataclass(frozen=True)
class Gates:
    min_reduction: float = 0.3
    max_kl: float = 0.02
    alpha: float = 0.05


def _generate(
    runner: Any, tok: Any, candidates: Sequence[Candidate], probes: Sequence[Any], tick: Progress, stage: str
) -> list[list[Any]]:
    """Every candidate on every probe in one batched greedy run: per candidate, its classified results."""
    from patchkit.locate.generation import prompt_ids
    from patchkit.locate.greedy import Row

    rows = [Row(c, prompt_ids(tok, p), [], runner.budget(p)) for c in range(len(candidates)) for p in probes]
    done = [0]

    def on_done(_row: Any) -> None:
        done[0] += 1
        tick(stage, done[0], len(rows))

    runner.generate(list(candidates), rows, on_done=on_done)
    n = len(probes)
    return [runner.results(probes, rows[i * n : (i + 1) * n]) for i in range(len(candidates))]


def _prose_drift(runner: Any, view: Any, tok: Any, candidates: Sequence[Candidate]) -> list[dict[str, Any]]:
    """Per candidate, on ordinary prose: mean KL(base || edited) nats/token and the perplexity ratio
    edited / base, each with a 95 % interval from a bootstrap over the prose passages (whole passages are
    resampled: tokens of one passage are not independent)."""
    import math

    import numpy as np
    import torch

    from patchkit.checks.stats import resample_indices
    from patchkit.locate.hooks import row_edits
    from patchkit.locate.teacher import build_batch, score
    from patchkit.locate.transcripts import load_prose

    prose = build_batch([], [], load_prose(tok, limit=6), pad_id=runner.pad_id, device=view.device)
    rows = prose.rows.cpu().numpy()
    n_seq = int(rows.max()) + 1 if rows.size else 0
    idx = resample_indices(n_seq) if n_seq > 1 else None
    out = []
    with torch.inference_mode():
        base = score(view.model, prose, want=("logprobs",))["logprobs"][0]
        target = prose.target.to(base.device).unsqueeze(-1)
        base_lp = base.gather(-1, target).squeeze(-1)
        for cand in candidates:
            with row_edits(view, [cand]):
                edited = score(view.model, prose, want=("logprobs",))["logprobs"][0]
            kl = (base.exp() * (base - edited)).sum(-1).double().cpu().numpy()
            dnll = (base_lp - edited.gather(-1, target).squeeze(-1)).double().cpu().numpy()
            kl_s = np.bincount(rows, weights=kl, minlength=n_seq)
            dn_s = np.bincount(rows, weights=dnll, minlength=n_seq)
            cnt = np.bincount(rows, minlength=n_seq).astype(float)
            item: dict[str, Any] = {
                "kl": float(kl.mean()),
                "ppl_ratio": math.exp(float(dnll.mean())),
                "n_tokens": int(kl.size),
                "n_passages": n_seq,
            }
            if idx is not None:
                tot = cnt[idx].sum(-1)
                kl_b = kl_s[idx].sum(-1) / tot
                pr_b = np.exp(dn_s[idx].sum(-1) / tot)
                item["kl_ci95"] = [round(float(x), 6) for x in np.quantile(kl_b, [0.025, 0.975])]
                item["ppl_ratio_ci95"] = [round(float(x), 5) for x in np.quantile(pr_b, [0.025, 0.975])]
            out.append(item)
    return out


def completeness_ci(results: Sequence[Any]) -> dict[str, Any]:
    """Mean completeness of enumeration answers with a bootstrap 95 % interval over probes."""
    from patchkit.checks.stats import bootstrap_ci

    shares = [r.verdict.completeness.share for r in results if r.probe.kind == "enumeration" and r.verdict.completeness]
    if not shares:
        return {"value": None, "n": 0}
    lo, hi = bootstrap_ci(shares)
    return {"value": round(sum(shares) / len(shares), 4), "n": len(shares), "ci": [round(lo, 4), round(hi, 4)]}


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


def _summary(results: Sequence[Any]) -> dict[str, Any]:
    from patchkit.locate.sweep import summarize

    out = summarize(results)
    out["completeness_ci"] = completeness_ci(results)
    return out


def _compare(
    base: Sequence[Any], bs: dict[str, Any], edited: Sequence[Any], drift: dict[str, Any], settings: Any, gates: Gates
) -> dict[str, Any]:
    """One edited run against the base run on the same probes: figures, prose drift, score and gates."""
    from patchkit.locate.sweep import score_summary

    es = _summary(edited)
    score, parts = score_summary(bs, es, drift["kl"], settings.weights)
    per_probe = _paired(base, edited)
    return {
        "edited": dict(es),
        "kl_prose": drift["kl"],
        "ppl_ratio_prose": drift["ppl_ratio"],
        "prose": drift,
        "score": score,
        "parts": parts,
        "gates": gate_results(bs, es, per_probe, drift["kl"], gates),
        "per_probe": per_probe,
    }


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
    base, edited = _generate(runner, tok, [Candidate(), winner], probes, tick, "heldout")
    bs = _summary(base)
    judged = _compare(base, bs, edited, _prose_drift(runner, view, tok, [winner])[0], settings, gates)
    return {"n_probes": len(probes), "base": dict(bs), **judged}


def cached_judgement(
    cache: Any,
    model_key: str,
    runner: Any,
    view: Any,
    tok: Any,
    winner: Candidate,
    probes: list[Any],
    settings: Any,
    tick: Progress,
) -> dict[str, Any]:
    """`judge_heldout`, reused from the stage cache when the model, the winner and the probes are unchanged."""
    from patchkit.locate.cache import fingerprint

    key = fingerprint([model_key, winner.label, [p.id for p in probes], settings.max_new_tokens])
    judged = cache.get("heldout", key)
    if judged is None:
        judged = judge_heldout(runner, view, tok, winner, probes, settings, tick)
        cache.put("heldout", key, judged)
    return judged


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
    ks = sorted(candidates)
    cands = [Candidate()] + [candidates[k] for k in ks]
    base, *results = _generate(runner, tok, cands, probes, tick, "frontier")
    bs = _summary(base)
    drifts = _prose_drift(runner, view, tok, cands[1:])
    return {
        "base": dict(bs),
        "k": {
            str(k): {
                key: v
                for key, v in _compare(base, bs, results[i], drifts[i], settings, gates).items()
                if key != "per_probe"
            }
            for i, k in enumerate(ks)
        },
    }
