"""Confirmation sweep: full greedy generations on the train probes for each candidate edit.

Speed: (1) all candidates x probes share batched generation, each row with its own edit (per-row hooks);
(2) greedy decoding reuses the base run - the base answer is teacher-forced under the edit, and a row is only
generated from the first token where the edit changes the argmax; a candidate that changes no argmax on a
probe is, provably, the base answer there (one forward pass instead of a generation).

Score (never loop rate alone - an edit that makes the model stop listing also "fixes" loops):
    loop-rate reduction - w_kl * KL - w_ctrl * (control accuracy lost + control loops gained)
    - w_good * good-list rate lost - w_compl * relative completeness lost
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from patchkit._io.progress import Progress
from patchkit.locate.candidates import Candidate
from patchkit.locate.generation import Runner
from patchkit.locate.greedy import Row
from patchkit.locate.hooks import row_edits
from patchkit.locate.teacher import head, hidden_states
from patchkit.locate.transcripts import Transcript

__all__ = ["Weights", "SweepResult", "summarize", "first_flips", "sweep", "score_summary"]


#: The figures (value, n, 95 % interval) every judged configuration reports.
FIGURES = ("loop_rate", "good_list_rate", "completeness", "control_accuracy", "control_loop_rate", "mean_tokens")


@dataclass(frozen=True)
class Weights:
    kl: float = 1.0
    control: float = 1.0
    good: float = 1.0
    completeness: float = 0.5


def summarize(results: Sequence[Any]) -> dict[str, Any]:
    """The figures the score uses, from classified ProbeResults (loops.Metrics, plus raw counts)."""
    from patchkit.checks.loops import Metrics

    m = Metrics(
        [r for r in results if r.probe.kind == "enumeration"], [r for r in results if r.probe.kind == "control"]
    )
    j = m.to_json()
    n_c = len(m.controls)
    return {
        "n": m.n,
        "loops": m.loops,
        "loop_rate": m.loop_rate.value or 0.0,
        "good_lists": m.good_lists,
        "good_list_rate": m.good_list_rate.value or 0.0,
        "completeness": m.completeness.value or 0.0,
        "n_controls": n_c,
        "control_correct": n_c - len(m.control_failures),
        "control_accuracy": ((n_c - len(m.control_failures)) / n_c) if n_c else 1.0,
        "control_loops": m.control_loops,
        "control_loop_rate": (m.control_loops / n_c) if n_c else 0.0,
        "mean_tokens": j["enumeration_mean_tokens"]["value"] or 0.0,
        "metrics": j,
    }


def score_summary(base: dict[str, Any], cand: dict[str, Any], kl: float, w: Weights) -> tuple[float, dict[str, float]]:
    parts = {
        "loop_reduction": base["loop_rate"] - cand["loop_rate"],
        "kl": -w.kl * kl,
        "control": -w.control
        * (
            max(0.0, base["control_accuracy"] - cand["control_accuracy"])
            + max(0.0, cand["control_loop_rate"] - base["control_loop_rate"])
        ),
        "good_lists": -w.good * max(0.0, base["good_list_rate"] - cand["good_list_rate"]),
        "completeness": -w.completeness
        * (max(0.0, 1 - cand["completeness"] / base["completeness"]) if base["completeness"] > 0 else 0.0),
    }
    return sum(parts.values()), parts


@dataclass
class SweepResult:
    candidate: Candidate
    summary: dict[str, Any]
    kl: float
    score: float
    parts: dict[str, float]
    changed: int  # probes whose answer differs from base
    per_probe: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        s = {k: v for k, v in self.summary.items() if k != "metrics"}
        if "metrics" in self.summary:  # the rates with their n and 95 % interval
            s["figures"] = {k: self.summary["metrics"][k] for k in FIGURES if k in self.summary["metrics"]}
        return {
            "candidate": self.candidate.to_json(),
            "summary": s,
            "kl": self.kl,
            "score": self.score,
            "parts": self.parts,
            "changed": self.changed,
            "per_probe": self.per_probe,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> SweepResult:
        return cls(
            Candidate.from_json(d["candidate"]),
            d["summary"],
            d["kl"],
            d["score"],
            d["parts"],
            d["changed"],
            d.get("per_probe") or [],
        )


def first_flips(
    runner: Runner, candidates: Sequence[Candidate], transcripts: Sequence[Transcript], *, max_rows: int = 16
) -> list[list[int | None]]:
    """flip[c][t]: index into transcript t's answer of the first token candidate c would choose differently
    (None: it reproduces the base answer, EOS included)."""
    import torch

    view = runner.view
    eos = next(iter(runner.eos_ids)) if runner.eos_ids else None
    seqs = []
    for t in transcripts:
        tail = [eos] if (t.stop == "eos" and eos is not None) else []
        seqs.append((t.prompt_ids + t.generated + tail, len(t.prompt_ids), t.generated + tail))
    pairs = [(c, i) for c in range(len(candidates)) for i in range(len(seqs))]
    out: list[list[int | None]] = [[None] * len(seqs) for _ in candidates]
    with torch.inference_mode():
        for start in range(0, len(pairs), max_rows):
            chunk = pairs[start : start + max_rows]
            width = max(len(seqs[i][0]) for _, i in chunk)
            ids = torch.full((len(chunk), width), runner.pad_id, dtype=torch.long)
            attn = torch.zeros_like(ids)
            for r, (_, i) in enumerate(chunk):
                ids[r, : len(seqs[i][0])] = torch.tensor(seqs[i][0])
                attn[r, : len(seqs[i][0])] = 1
            with row_edits(view, [candidates[c] for c, _ in chunk]):
                hid = hidden_states(view.model, ids.to(view.device), attn.to(view.device))
            for r, (c, i) in enumerate(chunk):
                full, p, answer = seqs[i]
                if not answer:
                    continue
                pred = head(view.model, hid[r, p - 1 : p - 1 + len(answer)]).argmax(-1).tolist()
                for g, (a, b) in enumerate(zip(pred, answer, strict=True)):
                    if a != b and not (b in runner.eos_ids and a in runner.eos_ids):
                        out[c][i] = g
                        break
    return out


def sweep(
    runner: Runner,
    candidates: Sequence[Candidate],
    probes: Sequence[Any],
    transcripts: Sequence[Transcript],
    base_results: Sequence[Any],
    kls: dict[str, float],
    *,
    weights: Weights = Weights(),
    chunk: int = 4,
    deadline: float | None = None,
    progress: Progress | None = None,
) -> list[SweepResult]:
    """Generate every candidate on `probes` (base answers in `transcripts`), best score first."""
    from patchkit.locate.heldout import completeness_ci

    base_summary = summarize(base_results)
    out: list[SweepResult] = []
    last_chunk = 0.0
    for start in range(0, len(candidates), chunk):
        # a chunk is not started when it would end past the deadline (judged by the last chunk's duration)
        if deadline is not None and out and time.monotonic() + last_chunk > deadline:
            break
        chunk_start = time.monotonic()
        group = list(candidates[start : start + chunk])
        flips = first_flips(runner, group, transcripts)
        rows: list[list[Row | None]] = []
        todo: list[Row] = []
        for c, _cand in enumerate(group):
            mine: list[Row | None] = []
            for t, (probe, tr) in enumerate(zip(probes, transcripts, strict=True)):
                k = flips[c][t]
                if k is None:
                    mine.append(None)
                    continue
                row = Row(c, tr.prompt_ids + tr.generated[:k], list(tr.generated[:k]), runner.budget(probe))
                mine.append(row)
                todo.append(row)
            rows.append(mine)
        runner.generate(group, todo)
        for c, cand in enumerate(group):
            changed_probes = [p for p, r in zip(probes, rows[c], strict=True) if r is not None]
            new = runner.results(changed_probes, [r for r in rows[c] if r is not None]) if changed_probes else []
            by_id = {r.probe.id: r for r in new}
            results = [by_id.get(b.probe.id, b) for b in base_results]
            summary = summarize(results)
            summary["completeness_ci"] = completeness_ci(results)
            kl = kls.get(cand.label, 0.0)
            score, parts = score_summary(base_summary, summary, kl, weights)
            per_probe = [
                {
                    "probe": r.probe.id,
                    "label": r.verdict.label,
                    "good_list": r.good_list,
                    "correct": r.correct,
                    "tokens": r.generation.tokens,
                    "changed": r.probe.id in by_id,
                    "text": r.generation.text[:300],
                }
                for r in results
            ]
            out.append(SweepResult(cand, summary, kl, score, parts, len(by_id), per_probe))
        last_chunk = time.monotonic() - chunk_start
        if progress:
            progress("sweep", len(out), len(candidates))
    out.sort(key=lambda r: -r.score)
    return out
