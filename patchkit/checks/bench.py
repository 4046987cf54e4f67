"""`run_bench`: measure how far a patched model drifts from its base on the same inputs, with uncertainty.

Measures (task names for `tasks=`):
  kl      teacher-forced KL(base||patched) mean / max, top-1 agreement, first-generated-token KL, on the base
          model's own greedy answers to the loop suite's control prompts and on an offline corpus
  ppl     perplexity of both models on the same texts, ratio patched / base (shares kl's forward passes)
  qa      the bundled question set: option log-likelihood accuracy (raw, length-normalised), greedy exact match
  lmeval:<task>  an lm-evaluation-harness task through its Python API (optional extra `patchkit[eval]`)
Every figure carries n, a 95% interval and, where the two models are compared item by item, a paired p-value.
All of these need next-token logits: an OpenAI-compatible HTTP backend returns text only and cannot provide them.
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from patchkit.checks import stats
from patchkit.errors import CheckError, ModelError
from patchkit.recipe.gates import BenchGates

__all__ = ["DEFAULT_TASKS", "Figure", "BenchReport", "run_bench", "check_same_tokenizer", "parse_tasks",
           "LOGIT_MEASURES"]

DEFAULT_TASKS: tuple[str, ...] = ("kl", "ppl", "qa")
#: What an OpenAI-compatible backend (text in, text out) cannot give: everything computed from logits.
LOGIT_MEASURES = "KL divergence, top-1 agreement, first-token KL, perplexity, option log-likelihood accuracy, lm-eval"

#: Used only when neither patchkit.checks.probes nor its controls.yaml is available.
FALLBACK_CONTROLS: tuple[str, ...] = (
    "What is the capital of France?",
    "What is 12 + 7?",
    "What colour is the sky on a clear day?",
    "How many days are there in a week?",
    "Who wrote Romeo and Juliet?",
    "What is the largest planet in the Solar System?",
    "What is the chemical symbol for gold?",
    "I had 3 apples and ate 1. How many apples do I have left?",
)

Progress = Callable[[str, int, int], None]  # (stage, advance, total)


@dataclass
class Figure:
    """One row of the report. `kind`: "paired" (base, patched, delta = patched - base), "ratio" (delta =
    patched / base) or "comparison" (a single value comparing both models, in `delta`)."""

    key: str
    label: str
    kind: str
    n: int
    unit: str = ""
    base: float | None = None
    patched: float | None = None
    delta: float | None = None
    base_ci: tuple[float, float] | None = None
    patched_ci: tuple[float, float] | None = None
    delta_ci: tuple[float, float] | None = None
    p_value: float | None = None
    test: str | None = None
    higher_is_better: bool | None = None
    is_accuracy: bool = False

    def significant(self, alpha: float = 0.05) -> bool | None:
        return None if self.p_value is None else self.p_value < alpha

    def to_json(self) -> dict[str, Any]:
        d = {k: _finite(v) for k, v in asdict(self).items()}
        d["significant"] = self.significant()
        return d


def _finite(value: Any) -> Any:
    """NaN/inf are not JSON: report them as null (e.g. an interval over zero texts)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, (tuple, list)):
        return [_finite(v) for v in value]
    return value


@dataclass
class BenchReport:
    base: str
    patched: str
    tasks: list[str]
    figures: list[Figure] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)
    gates: BenchGates | None = None
    failures: list[str] = field(default_factory=list)

    def figure(self, key: str) -> Figure | None:
        return next((f for f in self.figures if f.key == key), None)

    def gate(self, gates: BenchGates | None) -> list[str]:
        """Failed thresholds, each message naming the threshold, the measured value and the limit."""
        if gates is None:
            return []
        failures: list[str] = []

        def check(name: str, key: str, label: str, limit: float | None, *, minimum: bool = False, task: str) -> None:
            if limit is None:
                return
            fig = self.figure(key)
            value = None if fig is None else fig.delta
            if value is None or (isinstance(value, float) and math.isnan(value)):
                failures.append(f"{name}: {label} was not measured (run with --tasks {task})")
            elif (value < limit) if minimum else (value > limit):
                failures.append(f"{name}: {label} {value:.4g} {'<' if minimum else '>'} {limit:g}")

        check("max_kl", "kl.mean", "mean per-token KL(base||patched)", gates.max_kl, task="kl")
        check("max_token_kl", "kl.max", "max per-token KL", gates.max_token_kl, task="kl")
        check("max_first_token_kl", "kl.first_token", "first-token KL on controls",
              getattr(gates, "max_first_token_kl", None), task="kl")
        check("min_top1_agreement", "kl.top1", "top-1 agreement", gates.min_top1_agreement, minimum=True, task="kl")
        check("max_ppl_ratio", "ppl.ratio", "perplexity ratio patched/base", gates.max_ppl_ratio, task="ppl")
        if gates.max_accuracy_drop is not None:
            accs = [f for f in self.figures if f.is_accuracy and f.delta is not None]
            if not accs:
                failures.append("max_accuracy_drop: no accuracy was measured (run with --tasks qa)")
            for fig in accs:
                drop = -float(fig.delta)  # delta = patched - base
                if drop > gates.max_accuracy_drop:
                    failures.append(f"max_accuracy_drop: {fig.label} dropped by {drop:.4g} > {gates.max_accuracy_drop:g}")
        return failures

    @property
    def passed(self) -> bool:
        return not self.failures

    def to_json(self) -> dict[str, Any]:
        return {
            "base": self.base,
            "patched": self.patched,
            "tasks": self.tasks,
            "figures": [f.to_json() for f in self.figures],
            "details": self.details,
            "skipped": self.skipped,
            "timings_s": {k: round(v, 3) for k, v in self.timings.items()},
            "provenance": self.provenance,
            "gates": None if self.gates is None else self.gates.model_dump(exclude_none=True),
            "failures": self.failures,
            "passed": self.passed,
        }


# ----------------------------------------------------------------------------------------------- inputs

def parse_tasks(spec: str | Sequence[str] | None) -> list[str]:
    """`"kl,ppl,qa,lmeval:arc_easy"` -> ["kl", "ppl", "qa", "lmeval:arc_easy"]; CheckError on unknown names."""
    if spec is None:
        return list(DEFAULT_TASKS)
    parts = spec.split(",") if isinstance(spec, str) else [p for s in spec for p in str(s).split(",")]
    tasks: list[str] = []
    for part in (p.strip() for p in parts):
        if not part:
            continue
        if part not in DEFAULT_TASKS and not (part.startswith("lmeval:") and len(part) > len("lmeval:")):
            raise CheckError(f"--tasks: unknown task {part!r}", hint="use kl, ppl, qa or lmeval:<task>[,...]")
        if part not in tasks:
            tasks.append(part)
    if not tasks:
        raise CheckError("--tasks: no task given", hint="use kl, ppl, qa or lmeval:<task>")
    return tasks


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(@[\w./-]+)?$")


def _load(ref: Any, role: str, dtype: str, device: str) -> tuple[Any, Any, str]:
    """(model, tokenizer, label) from a loaded pair, a checkpoint dir, a .gguf file or org/name[@rev]."""
    if isinstance(ref, tuple):
        return ref[0], ref[1], getattr(ref[0], "name_or_path", role) or role
    text = _check_ref(ref, role)
    from patchkit.generate.loading import load_model

    try:
        model, tok = load_model(text, dtype=dtype, device=device)
    except ImportError as exc:
        raise ModelError(f"{role} {text}: cannot resolve this model reference here ({exc})") from None
    except OSError as exc:
        raise ModelError(f"{role} {text}: cannot load ({' '.join(str(exc).split())[:200]})") from None
    return model, tok, text


def _check_ref(ref: Any, role: str) -> str:
    """Reject references that cannot work before anything heavy runs (URLs, missing paths)."""
    text = str(ref)
    if text.startswith(("http://", "https://")):
        raise CheckError(f"{role} {text}: bench needs next-token logits, which an OpenAI-compatible backend does not "
                         f"return ({LOGIT_MEASURES})", hint="pass a local checkpoint directory or Hub id; use "
                         "`patchkit loops` for generation-level checks over HTTP")
    path = Path(text)
    if not path.exists() and not _HUB_ID.match(text):
        raise ModelError(f"{role} {text}: no such checkpoint directory or file", hint="pass a directory with "
                         "config.json + *.safetensors, a .gguf file or org/name[@revision]")
    return text


def check_same_tokenizer(base_tok: Any, patched_tok: Any, base_model: Any = None, patched_model: Any = None) -> None:
    """Base and patched must tokenize identically, or the comparison is meaningless: vocab, specials, sizes."""
    vb, vp = base_tok.get_vocab(), patched_tok.get_vocab()
    if vb != vp:
        only_b = len(set(vb) - set(vp))
        only_p = len(set(vp) - set(vb))
        moved = sum(1 for k in set(vb) & set(vp) if vb[k] != vp[k])
        raise CheckError(f"tokenizers differ between base and patched: vocab sizes {len(vb)} vs {len(vp)} "
                         f"({only_b} tokens only in base, {only_p} only in patched, {moved} with other ids)",
                         hint="compare a patched checkpoint with the exact base it was made from")
    for attr in ("bos_token_id", "eos_token_id", "unk_token_id"):  # pad may be set at load time (= eos)
        a, b = getattr(base_tok, attr, None), getattr(patched_tok, attr, None)
        if a != b:
            raise CheckError(f"tokenizers differ between base and patched: {attr} {a} vs {b}",
                             hint="compare a patched checkpoint with the exact base it was made from")
    if base_model is not None and patched_model is not None:
        eb = base_model.get_input_embeddings().weight.shape[0]
        ep = patched_model.get_input_embeddings().weight.shape[0]
        if eb != ep:
            raise CheckError(f"models differ in embedding rows: base {eb} vs patched {ep}",
                             hint="compare a patched checkpoint with the exact base it was made from")


def load_control_prompts(limit: int | None = None) -> tuple[list[str], str]:
    """Control prompts of the loop suite (patchkit.checks.probes), its YAML directly, or a built-in fallback."""
    prompts: list[str] = []
    source = ""
    try:
        from patchkit.checks.probes import load_suite  # type: ignore[attr-defined]

        # one wording per control item: the second wording would mostly repeat the same answer
        prompts = [p.prompt for p in load_suite("controls").probes
                   if getattr(p, "kind", "control") == "control" and getattr(p, "prompt_index", 0) == 0]
        source = "probes:controls"
    except Exception:  # the loop-check module is optional here; fall back to its YAML or our own list
        path = Path(__file__).parent / "probes" / "controls.yaml"
        if path.is_file():
            from ruamel.yaml import YAML

            data = YAML(typ="safe").load(path.read_text(encoding="utf-8"))
            raw = data.get("probes", []) if isinstance(data, dict) else data or []
            for p in raw:
                if isinstance(p, dict) and (p.get("prompt") or p.get("prompts")):
                    prompts.append(str(p.get("prompt") or p["prompts"][0]))
            source = str(path.name)
    if not prompts:
        prompts, source = list(FALLBACK_CONTROLS), "builtin"
    return (prompts[:limit] if limit is not None else prompts), source


def _chat_ids(tok: Any, prompt: str) -> list[int]:
    if getattr(tok, "chat_template", None):
        ids = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=True)
        if isinstance(ids, dict) or hasattr(ids, "keys"):
            ids = ids["input_ids"]
        return list(ids)
    return list(tok(prompt)["input_ids"])


def greedy_answers(model: Any, tok: Any, prompts: Sequence[str], max_new_tokens: int,
                   batch_size: int = 16) -> list[tuple[list[int], list[int]]]:
    """(prompt ids, answer ids up to and including the first EOS) of the model's greedy answer to each prompt."""
    import torch

    device = next(model.parameters()).device
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    eos = set(_eos_ids(model, tok))
    out: list[tuple[list[int], list[int]]] = []
    encoded = [_chat_ids(tok, p) for p in prompts]
    for start in range(0, len(encoded), batch_size):
        chunk = encoded[start:start + batch_size]
        width = max(len(c) for c in chunk)
        ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, c in enumerate(chunk):
            ids[row, width - len(c):] = torch.tensor(c)
            mask[row, width - len(c):] = 1
        with torch.inference_mode():
            gen = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), max_new_tokens=max_new_tokens,
                                 do_sample=False, pad_token_id=pad)
        for row, c in enumerate(chunk):
            answer: list[int] = []
            for t in gen[row, width:].tolist():
                answer.append(t)
                if t in eos:
                    break
            out.append((c, answer))
    return out


def _eos_ids(model: Any, tok: Any) -> list[int]:
    ids: list[int] = []
    cfg = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    for v in (cfg if isinstance(cfg, list) else [cfg]) + [tok.eos_token_id]:
        if v is not None and v not in ids:
            ids.append(int(v))
    return ids


# ----------------------------------------------------------------------------------------------- figures

def _accuracy_figure(key: str, label: str, a: np.ndarray, b: np.ndarray) -> Figure:
    n = int(a.size)
    ka, kb = int(a.sum()), int(b.sum())
    pb = stats.paired_bootstrap(a.astype(float), b.astype(float))
    mc = stats.mcnemar_exact(a, b)
    return Figure(key, label, "paired", n, "acc", ka / n, kb / n, (kb - ka) / n, stats.wilson_interval(ka, n),
                  stats.wilson_interval(kb, n), (pb["lo"], pb["hi"]), mc["p"], "McNemar exact", True, True)


def _kl_figures(tf: Any, groups: dict[str, list[int]]) -> tuple[list[Figure], dict[str, Any]]:
    from patchkit.checks.teacher_forcing import TeacherForcedResult

    assert isinstance(tf, TeacherForcedResult)
    cols = tf.arrays()
    n_tok = int(cols["n"].sum())
    n_seq = len(tf.sequences)
    figs = [
        Figure("kl.mean", "KL mean", "comparison", n_tok, "nats",
               delta=float(cols["kl_sum"].sum() / max(n_tok, 1)), delta_ci=stats.ratio_ci(cols["kl_sum"], cols["n"]),
               test="cluster bootstrap over texts", higher_is_better=False),
        Figure("kl.max", "KL max (token)", "comparison", n_tok, "nats", delta=float(cols["kl_max"].max(initial=0.0)),
               delta_ci=stats.bootstrap_ci(cols["kl_max"], stat=np.max), higher_is_better=False),
        Figure("kl.p99", "KL p99 (token)", "comparison", n_tok, "nats",
               delta=float(np.percentile(tf.token_kl, 99)) if tf.token_kl.size else 0.0, higher_is_better=False),
        Figure("kl.top1", "top-1 agreement", "comparison", n_tok, "share",
               delta=float(cols["agree"].sum() / max(n_tok, 1)), delta_ci=stats.ratio_ci(cols["agree"], cols["n"]),
               higher_is_better=True),
    ]
    ctrl = groups.get("controls", [])
    if ctrl:
        first = cols["kl_first"][ctrl]
        figs.append(Figure("kl.first_token", "KL 1st token (controls)", "comparison", len(ctrl), "nats",
                           delta=float(first.mean()), delta_ci=stats.bootstrap_ci(first), higher_is_better=False))
    per_source = {}
    for name, idx in groups.items():
        if not idx:
            continue
        n = cols["n"][idx].sum()
        per_source[name] = {"texts": len(idx), "tokens": int(n), "kl_mean": float(cols["kl_sum"][idx].sum() / max(n, 1)),
                            "kl_max": float(cols["kl_max"][idx].max()), "top1": float(cols["agree"][idx].sum() / max(n, 1))}
    return figs, {"texts": n_seq, "tokens": n_tok, "by_source": per_source}


def _ppl_figures(tf: Any) -> tuple[list[Figure], dict[str, Any]]:
    cols = tf.arrays()
    n = cols["n"]
    n_tok = int(n.sum())
    ppl_b = math.exp(cols["nll_base"].sum() / max(n_tok, 1))
    ppl_p = math.exp(cols["nll_patched"].sum() / max(n_tok, 1))
    ci_b = stats.ratio_ci(cols["nll_base"], n, transform=np.exp)
    ci_p = stats.ratio_ci(cols["nll_patched"], n, transform=np.exp)
    ci_r = stats.ratio_ci(cols["nll_patched"] - cols["nll_base"], n, transform=np.exp)
    safe_n = np.maximum(n, 1)
    p = stats.sign_flip_test(cols["nll_base"] / safe_n, cols["nll_patched"] / safe_n)
    fig = Figure("ppl.ratio", "perplexity", "ratio", n_tok, "ppl", ppl_b, ppl_p, ppl_p / ppl_b, ci_b, ci_p, ci_r, p,
                 "sign-flip permutation on per-text NLL", False)
    return [fig], {"base_ppl": ppl_b, "patched_ppl": ppl_p}


def _qa_figures(scores: list[Any]) -> tuple[list[Figure], dict[str, Any]]:
    b, p = scores
    figs = [_accuracy_figure("qa.acc", "QA acc (log-lik)", b.acc, p.acc),
            _accuracy_figure("qa.acc_norm", "QA acc (log-lik/token)", b.acc_norm, p.acc_norm)]
    if b.exact_match is not None and p.exact_match is not None:
        figs.append(_accuracy_figure("qa.exact_match", "QA exact match", b.exact_match, p.exact_match))
    pb = stats.paired_bootstrap(b.gold_logprob, p.gold_logprob)
    figs.append(Figure("qa.gold_logprob", "QA log-lik of answer", "paired", len(b.items), "nats",
                       float(b.gold_logprob.mean()), float(p.gold_logprob.mean()), pb["diff"],
                       stats.bootstrap_ci(b.gold_logprob), stats.bootstrap_ci(p.gold_logprob), (pb["lo"], pb["hi"]),
                       stats.sign_flip_test(b.gold_logprob, p.gold_logprob), "sign-flip permutation", True))
    by_kind: dict[str, Any] = {}
    for kind in sorted({it.kind for it in b.items}):
        idx = [i for i, it in enumerate(b.items) if it.kind == kind]
        by_kind[kind] = {"n": len(idx), "base_acc": float(b.acc[idx].mean()), "patched_acc": float(p.acc[idx].mean()),
                         "base_acc_norm": float(b.acc_norm[idx].mean()),
                         "patched_acc_norm": float(p.acc_norm[idx].mean())}
        if b.exact_match is not None and p.exact_match is not None:
            by_kind[kind]["base_exact_match"] = float(b.exact_match[idx].mean())
            by_kind[kind]["patched_exact_match"] = float(p.exact_match[idx].mean())
    changed = [it.id for i, it in enumerate(b.items) if b.acc[i] != p.acc[i]]
    return figs, {"items": len(b.items), "by_kind": by_kind, "acc_flipped_items": changed[:50]}


# ----------------------------------------------------------------------------------------------- driver

def _recipe_gates(recipe: Any) -> BenchGates | None:
    checks = getattr(recipe, "checks", None)
    return getattr(checks, "bench", None) if checks is not None else None


def run_bench(
    base: Any,
    patched: Any = None,
    *,
    recipe: Any = None,
    tasks: str | Sequence[str] | None = None,
    limit: int | None = None,
    gates: BenchGates | None = None,
    dtype: str = "float32",
    device: str = "cpu",
    control_max_new_tokens: int = 48,
    corpus_code: int = 16,
    corpus_prose: int = 16,
    max_text_tokens: int = 256,
    task_file: str | Path | None = None,
    lmeval_include: str | Path | None = None,
    lmeval_limit: int | None = None,
    token_budget: int = 2048,
    progress: Progress | None = None,
) -> BenchReport:
    """Compare `patched` (a dir, ref, or (model, tokenizer)) with `base` on `tasks`; apply `recipe` if no patched.

    With a recipe (path or Recipe), its `checks.bench` thresholds are the default `gates` and its
    `checks.bench.tasks` the default tasks; given together with `patched` (already applied), the recipe
    only supplies those thresholds. Returns a BenchReport whose `.failures` lists failed gates.
    """
    if patched is None and recipe is None:
        raise CheckError("bench needs a patched model: pass --patched DIR or --recipe RECIPE")
    if recipe is not None:
        if isinstance(recipe, (str, Path)):
            from patchkit.recipe import load_recipe

            recipe = load_recipe(recipe)
        gates = gates if gates is not None else _recipe_gates(recipe)
    if recipe is not None and patched is None:
        from patchkit.generate.loading import patched_checkpoint

        if isinstance(base, tuple):
            raise CheckError("--recipe needs the base as a checkpoint reference, not a loaded model")
        _check_ref(base, "base model")
        with patched_checkpoint(recipe, base) as out:
            report = run_bench(base, out, tasks=tasks, limit=limit, gates=gates, dtype=dtype, device=device,
                               control_max_new_tokens=control_max_new_tokens, corpus_code=corpus_code,
                               corpus_prose=corpus_prose, max_text_tokens=max_text_tokens, task_file=task_file,
                               lmeval_include=lmeval_include, lmeval_limit=lmeval_limit, token_budget=token_budget,
                               progress=progress)
            report.patched = f"{getattr(recipe, 'name', 'recipe')} applied to {base}"
            return report

    if tasks is None and gates is not None and gates.tasks:
        tasks = gates.tasks
    task_list = parse_tasks(tasks)
    timings: dict[str, float] = {}
    t0, c0 = time.perf_counter(), time.process_time()
    # validate cheap inputs before loading anything heavy
    task_set = None
    if "qa" in task_list:
        from patchkit.checks.tasks import load_tasks

        task_set = load_tasks(task_file).limited(limit)
    base_model, base_tok, base_label = _load(base, "base model", dtype, device)
    patched_model, patched_tok, patched_label = _load(patched, "patched model", dtype, device)
    check_same_tokenizer(base_tok, patched_tok, base_model, patched_model)
    timings["load"] = time.perf_counter() - t0
    report = BenchReport(base=base_label, patched=patched_label, tasks=task_list)
    report.provenance = _provenance(base_model)

    def tick(stage: str, total: int) -> Callable[[int], None] | None:
        if progress is None:
            return None
        progress(stage, 0, total)
        return lambda n: progress(stage, n, total)

    if "kl" in task_list or "ppl" in task_list:
        t = time.perf_counter()
        tf, groups, answers = _teacher_forced(base_model, base_tok, patched_model, limit=limit,
                                              control_max_new_tokens=control_max_new_tokens, corpus_code=corpus_code,
                                              corpus_prose=corpus_prose, max_text_tokens=max_text_tokens,
                                              token_budget=token_budget, tick=tick, timings=timings)
        if "kl" in task_list:
            figs, det = _kl_figures(tf, groups)
            det["control_answers"] = answers
            report.figures += figs
            report.details["kl"] = det
        if "ppl" in task_list:
            figs, det = _ppl_figures(tf)
            report.figures += figs
            report.details["ppl"] = det
        timings["teacher_forced"] = time.perf_counter() - t
    if task_set is not None:
        from patchkit.checks.tasks import score_tasks

        t = time.perf_counter()
        total = sum(len(it.options) for it in task_set.items)
        cb = tick("qa", total + 2 * len(task_set.items))
        scores = score_tasks([(base_model, base_tok), (patched_model, patched_tok)], task_set, token_budget=token_budget,
                             progress=(lambda stage, n: cb(n)) if cb else None, timings=timings)
        figs, det = _qa_figures(scores)
        det["source"] = task_set.source
        report.figures += figs
        report.details["qa"] = det
        timings["qa"] = time.perf_counter() - t
    lm_tasks = [t[len("lmeval:"):] for t in task_list if t.startswith("lmeval:")]
    if lm_tasks:
        t = time.perf_counter()
        try:
            from patchkit.checks.lmeval import lmeval_figures, run_lmeval

            raw = run_lmeval((base_model, base_tok), (patched_model, patched_tok), lm_tasks, include_path=lmeval_include,
                             limit=lmeval_limit if lmeval_limit is not None else limit)
            report.figures += lmeval_figures(raw)
            report.details["lmeval"] = raw
        except ImportError as exc:
            for name in lm_tasks:
                report.skipped[f"lmeval:{name}"] = f"lm-eval is not installed ({exc}); pip install 'patchkit[eval]'"
        timings["lmeval"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - t0
    timings["cpu_total"] = time.process_time() - c0
    report.timings = timings
    report.gates = gates
    report.failures = report.gate(gates)
    return report


def _teacher_forced(base_model: Any, tok: Any, patched_model: Any, *, limit: int | None, control_max_new_tokens: int,
                    corpus_code: int, corpus_prose: int, max_text_tokens: int, token_budget: int,
                    tick: Callable[[str, int], Callable[[int], None] | None],
                    timings: dict[str, float]) -> tuple[Any, dict[str, list[int]], list]:
    """Build the teacher-forced texts (base greedy control answers + corpus) and compare both models on them."""
    from patchkit.checks.corpus import load_corpus
    from patchkit.checks.teacher_forcing import ScoredSequence, compare_teacher_forced

    prompts, ctrl_source = load_control_prompts(limit)
    cb = tick("controls", len(prompts))
    t0 = time.perf_counter()
    pairs = greedy_answers(base_model, tok, prompts, control_max_new_tokens)
    timings["controls_generate"] = time.perf_counter() - t0
    if cb:
        cb(len(prompts))
    seqs: list[ScoredSequence] = []
    groups: dict[str, list[int]] = {"controls": [], "stdlib": [], "prose": []}
    answers = []
    for i, (prompt_ids, answer_ids) in enumerate(pairs):
        if not answer_ids:
            continue
        groups["controls"].append(len(seqs))
        seqs.append(ScoredSequence(f"control:{i}", tuple(prompt_ids + answer_ids), len(prompt_ids)))
        answers.append({"prompt": prompts[i], "answer": tok.decode(answer_ids, skip_special_tokens=True),
                        "tokens": len(answer_ids), "source": ctrl_source})
    n_code = corpus_code if limit is None else min(corpus_code, limit)
    n_prose = corpus_prose if limit is None else min(corpus_prose, limit)
    for text in load_corpus(n_code, n_prose):
        ids = list(tok(text.text)["input_ids"])[:max_text_tokens]
        if len(ids) < 2:
            continue
        groups["stdlib" if text.source.startswith("stdlib:") else "prose"].append(len(seqs))
        seqs.append(ScoredSequence(text.source, tuple(ids), 1))
    cb = tick("teacher-forced", len(seqs))
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    t0 = time.perf_counter()
    tf = compare_teacher_forced(base_model, patched_model, seqs, pad_id=pad, token_budget=token_budget, progress=cb)
    timings["teacher_forced_passes"] = time.perf_counter() - t0
    return tf, groups, answers


def _provenance(model: Any) -> dict[str, Any]:
    import platform

    import torch

    from patchkit import __version__
    from patchkit.checks.corpus import corpus_provenance

    return {"patchkit_version": __version__, "torch": torch.__version__, "threads": torch.get_num_threads(),
            "machine": platform.machine(), "dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
            **corpus_provenance()}
