"""`run_bench`: measure how far a patched model drifts from its base on the same inputs, with uncertainty.

Measures (task names for `BenchSettings.tasks`):
  kl      teacher-forced KL(base||patched) mean / max, top-1 agreement, first-generated-token KL, on the base
          model's own greedy answers to the loop suite's control prompts and on an offline corpus
  ppl     perplexity of both models on the same texts, ratio patched / base (shares kl's forward passes)
  qa      the bundled question set: option log-likelihood accuracy (raw, length-normalised), greedy exact match
  lmeval:<task>  an lm-evaluation-harness task through its Python API (optional extra `patchkit-llm[eval]`)
Every measure is a `Comparison` of `Figure`s: n, a 95% interval and, where the two models are compared item by
item, a paired p-value.
All of these need next-token logits: an OpenAI-compatible HTTP backend returns text only and cannot provide them.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from patchkit._io.progress import Progress
from patchkit.checks import stats
from patchkit.checks.figure import Comparison, Figure
from patchkit.checks.lmeval import LmEvalMissing, lmeval_figures, run_lmeval
from patchkit.checks.probes import load_suite
from patchkit.errors import CheckError, ModelError
from patchkit.recipe import Recipe, load_recipe
from patchkit.recipe.gates import BenchGates

__all__ = [
    "DEFAULT_TASKS",
    "BenchSettings",
    "BenchReport",
    "run_bench",
    "check_same_tokenizer",
    "parse_tasks",
    "LOGIT_MEASURES",
]

DEFAULT_TASKS: tuple[str, ...] = ("kl", "ppl", "qa")
#: What an OpenAI-compatible backend (text in, text out) cannot give: everything computed from logits.
LOGIT_MEASURES = "KL divergence, top-1 agreement, first-token KL, perplexity, option log-likelihood accuracy, lm-eval"


def parse_tasks(spec: str | Sequence[str] | None) -> list[str]:
    """`"kl,ppl,qa,lmeval:arc_easy"` -> ["kl", "ppl", "qa", "lmeval:arc_easy"]; None -> the default tasks.

    Args:
        spec: a comma list, a sequence of names (each may itself be a comma list), or None.

    Returns:
        The task names, deduplicated, in order.

    Raises:
        CheckError: an unknown task name, or no task at all.
    """
    if spec is None:
        return list(DEFAULT_TASKS)
    parts = spec.split(",") if isinstance(spec, str) else [p for s in spec for p in str(s).split(",")]
    tasks: list[str] = []
    for part in (p.strip() for p in parts):
        if not part:
            continue
        if part not in DEFAULT_TASKS and not (part.startswith("lmeval:") and len(part) > len("lmeval:")):
            raise CheckError(f"tasks: unknown task {part!r}", hint="use kl, ppl, qa or lmeval:<task>[,...]")
        if part not in tasks:
            tasks.append(part)
    if not tasks:
        raise CheckError("tasks: no task given", hint="use kl, ppl, qa or lmeval:<task>")
    return tasks


class BenchSettings(BaseModel):
    """Every option of a bench run, in one frozen object (the `patchkit bench` flags are derived from it).

    Why one object: `patchkit bench`, `patchkit check`, the demo and scripts all run the same measurement; one
    typed object keeps their options from drifting apart. `tasks` left unset comes from the recipe's
    `checks.bench.tasks` (see `with_gate_defaults`), else kl, ppl, qa.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    tasks: tuple[str, ...] | None = Field(
        None,
        description="Comma list of kl, ppl, qa, lmeval:<task> (default: "
        "the recipe's checks.bench.tasks, else kl,ppl,qa). lmeval:patchkit_qa runs "
        "offline.",
        json_schema_extra={"metavar": "LIST"},
    )
    limit: int | None = Field(
        None,
        ge=1,
        description="Cap items per source (control prompts, corpus texts, questions per kind, lm-eval docs).",
    )
    dtype: str = Field(
        "auto",
        description="Load dtype: auto (the checkpoint's own dtype from config.json; float16 becomes float32 on "
        "CPU), f32, bf16 or f16. [default: auto]",
    )
    device: str = Field(
        "auto",
        description="auto (CUDA, else MPS, else CPU; several GPUs share the model layer by layer), cpu, cuda, "
        "cuda:1 or mps. [default: auto]",
    )
    chat: bool = Field(
        True,
        description="Send the prompts (bench: the control prompts behind first-token KL) through the tokenizer's "
        "chat template (--no-chat: as raw text, for a base model without one). [default: chat]",
    )
    task_file: Path | None = Field(
        None,
        description="Question set YAML instead of the bundled one (format: docs/bench.md).",
        json_schema_extra={"path": {"dir_okay": False}},
    )
    lmeval_include: Path | None = Field(
        None, description="Directory of extra lm-eval task YAMLs.", json_schema_extra={"path": {"file_okay": False}}
    )
    lmeval_limit: int | None = Field(None, ge=1, description="Documents per lm-eval task. [default: --limit]")
    control_max_new_tokens: int = Field(
        48,
        ge=1,
        description="Tokens of the base model's greedy answer to each "
        "control prompt (the texts first-token and control KL are measured on).",
    )
    corpus_code: int = Field(16, ge=0, description="Python stdlib chunks in the teacher-forced corpus.")
    corpus_prose: int = Field(16, ge=0, description="Prose paragraphs in the teacher-forced corpus.")
    max_text_tokens: int = Field(256, ge=2, description="Tokens kept of each corpus text.")
    token_budget: int = Field(2048, ge=1, description="Tokens per forward batch (padding included).")

    @field_validator("tasks", mode="before")
    @classmethod
    def _parse_tasks(cls, value: Any) -> Any:
        """A comma list or a list of names; unknown names are a CheckError (one line, exit 2) at once."""
        return None if value is None else tuple(parse_tasks(value))

    def with_gate_defaults(self, gates: BenchGates | None) -> BenchSettings:
        """These settings, with `tasks` taken from the recipe's `checks.bench.tasks` when the caller set none.

        Args:
            gates: the recipe's `checks.bench` (None: nothing to fill in).

        Returns:
            A new BenchSettings (or this one when there is nothing to fill in).
        """
        if gates is None or self.tasks is not None or not gates.tasks:
            return self
        return self.model_validate({**self.model_dump(exclude_unset=True), "tasks": gates.tasks})

    def task_list(self) -> list[str]:
        """The tasks to run (the defaults when none are set)."""
        return list(self.tasks) if self.tasks is not None else list(DEFAULT_TASKS)


@dataclass
class BenchReport:
    """Base vs patched: one `Comparison` per measure, gate failures, details, timings and provenance."""

    base: str
    patched: str
    tasks: list[str]
    comparisons: list[Comparison] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)
    gates: BenchGates | None = None
    failures: list[str] = field(default_factory=list)

    def comparison(self, key: str) -> Comparison | None:
        """The row with `key` ("kl.mean", "ppl.ratio", "qa.acc", ...), or None when it was not measured."""
        return next((c for c in self.comparisons if c.key == key), None)

    def gate(self, gates: BenchGates | None) -> list[str]:
        """Failed thresholds, each message naming the threshold, the measured value and the limit."""
        if gates is None:
            return []
        failures: list[str] = []

        def check(name: str, key: str, label: str, limit: float | None, *, minimum: bool = False, task: str) -> None:
            if limit is None:
                return
            row = self.comparison(key)
            value = None if row is None else row.delta.value
            if value is None or np.isnan(value):
                failures.append(f"{name}: {label} was not measured (run with --tasks {task})")
            elif (value < limit) if minimum else (value > limit):
                failures.append(f"{name}: {label} {value:.4g} {'<' if minimum else '>'} {limit:g}")

        check("max_kl", "kl.mean", "mean per-token KL(base||patched)", gates.max_kl, task="kl")
        check("max_token_kl", "kl.max", "max per-token KL", gates.max_token_kl, task="kl")
        check("max_first_token_kl", "kl.first_token", "first-token KL on controls", gates.max_first_token_kl, task="kl")
        check("min_top1_agreement", "kl.top1", "top-1 agreement", gates.min_top1_agreement, minimum=True, task="kl")
        check("max_ppl_ratio", "ppl.ratio", "perplexity ratio patched/base", gates.max_ppl_ratio, task="ppl")
        if gates.max_accuracy_drop is not None:
            drops = [
                (c.label, -c.delta.value)
                for c in self.comparisons  # delta = patched - base
                if c.is_accuracy and c.delta.value is not None
            ]
            if not drops:
                failures.append("max_accuracy_drop: no accuracy was measured (run with --tasks qa)")
            for label, drop in drops:
                if drop > gates.max_accuracy_drop:
                    failures.append(f"max_accuracy_drop: {label} dropped by {drop:.4g} > {gates.max_accuracy_drop:g}")
        return failures

    @property
    def passed(self) -> bool:
        """No gate failed (also true when there were no gates)."""
        return not self.failures

    def to_json(self) -> dict[str, Any]:
        """The `patchkit bench --json` / bench.json document; each Comparison under "figures" in its flat shape."""
        return {
            "base": self.base,
            "patched": self.patched,
            "tasks": self.tasks,
            "figures": [c.to_json() for c in self.comparisons],
            "details": self.details,
            "skipped": self.skipped,
            "timings_s": {k: round(v, 3) for k, v in self.timings.items()},
            "provenance": self.provenance,
            "gates": None if self.gates is None else self.gates.model_dump(exclude_none=True),
            "failures": self.failures,
            "passed": self.passed,
        }


# ----------------------------------------------------------------------------------------------- inputs

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(@[\w./-]+)?$")


def _load(
    ref: Any, role: str, dtype: str, device: str, log: Callable[[str], None] | None = None
) -> tuple[Any, Any, str, dict[str, Any] | None]:
    """(model, tokenizer, label, placement) from a loaded pair, a checkpoint dir, a .gguf file or org/name[@rev].

    The placement (device, dtype and why, see `patchkit.generate.loading.resolve_placement`) is None for a
    pair the caller loaded.
    """
    if isinstance(ref, tuple):
        return ref[0], ref[1], getattr(ref[0], "name_or_path", role) or role, None
    text = _check_ref(ref, role)
    from patchkit.generate.loading import load_checkpoint

    try:
        loaded = load_checkpoint(text, dtype=dtype, device=device, log=log)
    except ImportError as exc:
        raise ModelError(f"{role} {text}: cannot resolve this model reference here ({exc})") from None
    except OSError as exc:
        raise ModelError(f"{role} {text}: cannot load ({' '.join(str(exc).split())[:200]})") from None
    return loaded.model, loaded.tokenizer, text, loaded.placement.to_json()


def _check_ref(ref: Any, role: str) -> str:
    """Reject references that cannot work before anything heavy runs (URLs, missing paths)."""
    text = str(ref)
    if text.startswith(("http://", "https://")):
        raise CheckError(
            f"{role} {text}: bench needs next-token logits, which an OpenAI-compatible backend does not "
            f"return ({LOGIT_MEASURES})",
            hint="pass a local checkpoint directory or Hub id; use "
            "`patchkit loops` for generation-level checks over HTTP",
        )
    path = Path(text)
    if not path.exists() and not _HUB_ID.match(text):
        raise ModelError(
            f"{role} {text}: no such checkpoint directory or file",
            hint="pass a directory with config.json + *.safetensors, a .gguf file or org/name[@revision]",
        )
    return text


def check_same_tokenizer(base_tok: Any, patched_tok: Any, base_model: Any = None, patched_model: Any = None) -> None:
    """Base and patched must tokenize identically, or the comparison is meaningless: vocab, specials, sizes."""
    vb, vp = base_tok.get_vocab(), patched_tok.get_vocab()
    if vb != vp:
        only_b = len(set(vb) - set(vp))
        only_p = len(set(vp) - set(vb))
        moved = sum(1 for k in set(vb) & set(vp) if vb[k] != vp[k])
        raise CheckError(
            f"tokenizers differ between base and patched: vocab sizes {len(vb)} vs {len(vp)} "
            f"({only_b} tokens only in base, {only_p} only in patched, {moved} with other ids)",
            hint="compare a patched checkpoint with the exact base it was made from",
        )
    for attr in ("bos_token_id", "eos_token_id", "unk_token_id"):  # pad may be set at load time (= eos)
        a, b = getattr(base_tok, attr, None), getattr(patched_tok, attr, None)
        if a != b:
            raise CheckError(
                f"tokenizers differ between base and patched: {attr} {a} vs {b}",
                hint="compare a patched checkpoint with the exact base it was made from",
            )
    if base_model is not None and patched_model is not None:
        eb = base_model.get_input_embeddings().weight.shape[0]
        ep = patched_model.get_input_embeddings().weight.shape[0]
        if eb != ep:
            raise CheckError(
                f"models differ in embedding rows: base {eb} vs patched {ep}",
                hint="compare a patched checkpoint with the exact base it was made from",
            )


def load_control_prompts(limit: int | None = None) -> tuple[list[str], str]:
    """The packaged `controls` suite's prompts, one wording per item (a second wording mostly repeats the answer).

    Args:
        limit: at most this many prompts (None: all).

    Returns:
        (prompts, source label for the report).
    """
    prompts = [p.prompt for p in load_suite("controls").probes if p.kind == "control" and p.prompt_index == 0]
    return (prompts[:limit] if limit is not None else prompts), "probes:controls"


def _chat_ids(tok: Any, prompt: str, chat: bool = True) -> list[int]:
    """The prompt's token ids: as a chat user message (a tokenizer without a template is refused), or raw text."""
    if not chat:
        return list(tok(prompt)["input_ids"])
    from patchkit.generate.transformers_backend import require_chat_template

    require_chat_template(tok)
    ids = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=True)
    if isinstance(ids, dict) or hasattr(ids, "keys"):
        ids = ids["input_ids"]
    return list(ids)


def greedy_answers(
    model: Any,
    tok: Any,
    prompts: Sequence[str],
    max_new_tokens: int,
    batch_size: int = 16,
    *,
    chat: bool = True,
) -> list[tuple[list[int], list[int]]]:
    """(prompt ids, answer ids up to and including the first EOS) of the model's greedy answer to each prompt.

    `chat`: ask each prompt through the tokenizer's chat template (CheckError when it has none), else as raw text.
    """
    import torch

    device = next(model.parameters()).device
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    eos = set(_eos_ids(model, tok))
    out: list[tuple[list[int], list[int]]] = []
    encoded = [_chat_ids(tok, p, chat) for p in prompts]
    for start in range(0, len(encoded), batch_size):
        chunk = encoded[start : start + batch_size]
        width = max(len(c) for c in chunk)
        ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, c in enumerate(chunk):
            ids[row, width - len(c) :] = torch.tensor(c)
            mask[row, width - len(c) :] = 1
        with torch.inference_mode():
            gen = model.generate(
                input_ids=ids.to(device),
                attention_mask=mask.to(device),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=pad,
            )
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


# ----------------------------------------------------------------------------------------------- measures


def _accuracy(key: str, label: str, a: np.ndarray, b: np.ndarray) -> Comparison:
    """Paired accuracy: Wilson intervals per model, paired-bootstrap interval of the difference, McNemar p."""
    n = int(a.size)
    ka, kb = int(a.sum()), int(b.sum())
    pb = stats.paired_bootstrap(a.astype(float), b.astype(float))
    mc = stats.mcnemar_exact(a, b)
    return Comparison(
        key=key,
        label=label,
        kind="paired",
        unit="acc",
        base=Figure.rate(ka, n, name=f"{key}.base", unit="acc"),
        patched=Figure.rate(kb, n, name=f"{key}.patched", unit="acc"),
        delta=Figure(value=(kb - ka) / n, n=n, ci=(pb["lo"], pb["hi"]), name=key, unit="acc"),
        p_value=mc["p"],
        test="McNemar exact",
        higher_is_better=True,
        is_accuracy=True,
    )


def _kl_comparisons(tf: Any, groups: dict[str, list[int]]) -> tuple[list[Comparison], dict[str, Any]]:
    """KL mean / max / p99, top-1 agreement over all teacher-forced tokens, first-token KL on the controls."""
    cols = tf.arrays()
    n_tok = int(cols["n"].sum())
    n_seq = len(tf.sequences)

    def single(
        key: str,
        label: str,
        value: float,
        n: int,
        unit: str,
        ci: tuple[float, float] | None = None,
        *,
        k: int | None = None,
        test: str | None = None,
        higher_is_better: bool,
    ) -> Comparison:
        return Comparison(
            key=key,
            label=label,
            kind="comparison",
            unit=unit,
            delta=Figure(value=value, n=n, k=k, ci=ci, name=key, unit=unit),
            test=test,
            higher_is_better=higher_is_better,
        )

    rows = [
        single(
            "kl.mean",
            "KL mean",
            float(cols["kl_sum"].sum() / max(n_tok, 1)),
            n_tok,
            "nats",
            stats.ratio_ci(cols["kl_sum"], cols["n"]),
            test="cluster bootstrap over texts",
            higher_is_better=False,
        ),
        single(
            "kl.max",
            "KL max (token)",
            float(cols["kl_max"].max(initial=0.0)),
            n_tok,
            "nats",
            stats.bootstrap_ci(cols["kl_max"], stat=np.max),
            higher_is_better=False,
        ),
        single(
            "kl.p99",
            "KL p99 (token)",
            float(np.percentile(tf.token_kl, 99)) if tf.token_kl.size else 0.0,
            n_tok,
            "nats",
            higher_is_better=False,
        ),
        single(
            "kl.top1",
            "top-1 agreement",
            float(cols["agree"].sum() / max(n_tok, 1)),
            n_tok,
            "share",
            stats.ratio_ci(cols["agree"], cols["n"]),
            k=int(cols["agree"].sum()),
            higher_is_better=True,
        ),
    ]
    ctrl = groups.get("controls", [])
    if ctrl:
        first = cols["kl_first"][ctrl]
        rows.append(
            single(
                "kl.first_token",
                "KL 1st token (controls)",
                float(first.mean()),
                len(ctrl),
                "nats",
                stats.bootstrap_ci(first),
                higher_is_better=False,
            )
        )
    per_source = {}
    for name, idx in groups.items():
        if not idx:
            continue
        n = cols["n"][idx].sum()
        per_source[name] = {
            "texts": len(idx),
            "tokens": int(n),
            "kl_mean": float(cols["kl_sum"][idx].sum() / max(n, 1)),
            "kl_max": float(cols["kl_max"][idx].max()),
            "top1": float(cols["agree"][idx].sum() / max(n, 1)),
        }
    return rows, {"texts": n_seq, "tokens": n_tok, "by_source": per_source}


def _ppl_comparisons(tf: Any) -> tuple[list[Comparison], dict[str, Any]]:
    """Perplexity of both models on the same texts and their ratio, with a sign-flip test on per-text NLL."""
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
    row = Comparison(
        key="ppl.ratio",
        label="perplexity",
        kind="ratio",
        unit="ppl",
        base=Figure(value=ppl_b, n=n_tok, ci=ci_b, name="ppl.base", unit="ppl"),
        patched=Figure(value=ppl_p, n=n_tok, ci=ci_p, name="ppl.patched", unit="ppl"),
        delta=Figure(value=ppl_p / ppl_b, n=n_tok, ci=ci_r, name="ppl.ratio", unit="ratio"),
        p_value=p,
        test="sign-flip permutation on per-text NLL",
        higher_is_better=False,
    )
    return [row], {"base_ppl": ppl_b, "patched_ppl": ppl_p}


def _qa_comparisons(scores: list[Any]) -> tuple[list[Comparison], dict[str, Any]]:
    """Question-set accuracies (log-lik, log-lik per token, exact match) and the answer's log-likelihood."""
    b, p = scores
    rows = [
        _accuracy("qa.acc", "QA acc (log-lik)", b.acc, p.acc),
        _accuracy("qa.acc_norm", "QA acc (log-lik/token)", b.acc_norm, p.acc_norm),
    ]
    if b.exact_match is not None and p.exact_match is not None:
        rows.append(_accuracy("qa.exact_match", "QA exact match", b.exact_match, p.exact_match))
    n = len(b.items)
    pb = stats.paired_bootstrap(b.gold_logprob, p.gold_logprob)
    rows.append(
        Comparison(
            key="qa.gold_logprob",
            label="QA log-lik of answer",
            kind="paired",
            unit="nats",
            base=Figure(value=float(b.gold_logprob.mean()), n=n, ci=stats.bootstrap_ci(b.gold_logprob), unit="nats"),
            patched=Figure(value=float(p.gold_logprob.mean()), n=n, ci=stats.bootstrap_ci(p.gold_logprob), unit="nats"),
            delta=Figure(value=pb["diff"], n=n, ci=(pb["lo"], pb["hi"]), name="qa.gold_logprob", unit="nats"),
            p_value=stats.sign_flip_test(b.gold_logprob, p.gold_logprob),
            test="sign-flip permutation",
            higher_is_better=True,
        )
    )
    by_kind: dict[str, Any] = {}
    for kind in sorted({it.kind for it in b.items}):
        idx = [i for i, it in enumerate(b.items) if it.kind == kind]
        by_kind[kind] = {
            "n": len(idx),
            "base_acc": float(b.acc[idx].mean()),
            "patched_acc": float(p.acc[idx].mean()),
            "base_acc_norm": float(b.acc_norm[idx].mean()),
            "patched_acc_norm": float(p.acc_norm[idx].mean()),
        }
        if b.exact_match is not None and p.exact_match is not None:
            by_kind[kind]["base_exact_match"] = float(b.exact_match[idx].mean())
            by_kind[kind]["patched_exact_match"] = float(p.exact_match[idx].mean())
    changed = [it.id for i, it in enumerate(b.items) if b.acc[i] != p.acc[i]]
    return rows, {"items": len(b.items), "by_kind": by_kind, "acc_flipped_items": changed[:50]}


# ----------------------------------------------------------------------------------------------- driver


def run_bench(
    base: Any,
    patched: Any = None,
    *,
    recipe: str | Path | Recipe | None = None,
    settings: BenchSettings | None = None,
    gates: BenchGates | None = None,
    progress: Progress | None = None,
    log: Callable[[str], None] | None = None,
) -> BenchReport:
    """Compare `patched` with `base` on `settings.tasks`: KL, perplexity, question accuracy, lm-eval.

    Why: a loop fix is only worth publishing if everything else still works; every measure comes with its n,
    a 95% interval and, where the models are compared item by item, a paired p-value.

    Args:
        base: the base model: a checkpoint dir, org/name[@rev], a .gguf file, or a loaded (model, tokenizer).
        patched: the patched model in the same forms; None with a `recipe` applies the recipe to `base` first.
        recipe: a Recipe or recipe path. Its `checks.bench` are the default `gates` and its `checks.bench.tasks`
            the default tasks; given together with `patched` (already applied) it only supplies those.
        settings: tasks, limits, dtype/device and the measurement sizes (default: BenchSettings()).
        gates: thresholds; the report's `.failures` lists the failed ones.
        progress: `progress(stage, done, total)` with stages "controls", "teacher-forced" and "qa".
        log: receives one line per model it loads: the device and dtype chosen (`settings.dtype` /
            `settings.device` "auto" pick them from the machine and the checkpoint) and why. The report's
            `provenance["placement"]` records them.

    Returns:
        The BenchReport (`.comparisons`, `.failures`, `.to_json()`).

    Raises:
        CheckError: no patched model and no recipe, an HTTP model reference, different tokenizers, a bad task
            file or task name, or chat control prompts (`settings.chat`) for a tokenizer without a chat template.
        ModelError: a model reference that does not exist or cannot be loaded.
    """
    settings = settings if settings is not None else BenchSettings()
    if patched is None and recipe is None:
        raise CheckError("bench needs a patched model: pass --patched DIR or --recipe RECIPE")
    if recipe is not None:
        recipe = load_recipe(recipe) if isinstance(recipe, (str, Path)) else recipe
        if gates is None and recipe.checks is not None:
            gates = recipe.checks.bench
    if recipe is not None and patched is None:
        from patchkit.generate.loading import patched_checkpoint

        if isinstance(base, tuple):
            raise CheckError("a recipe needs the base as a checkpoint reference, not a loaded model")
        _check_ref(base, "base model")
        with patched_checkpoint(recipe, base) as out:
            report = run_bench(base, out, settings=settings, gates=gates, progress=progress, log=log)
            report.patched = f"{getattr(recipe, 'name', 'recipe')} applied to {base}"
            return report

    settings = settings.with_gate_defaults(gates)
    task_list = settings.task_list()
    limit = settings.limit
    timings: dict[str, float] = {}
    t0, c0 = time.perf_counter(), time.process_time()
    # validate cheap inputs before loading anything heavy
    task_set = None
    if "qa" in task_list:
        from patchkit.checks.tasks import load_tasks

        task_set = load_tasks(settings.task_file).limited(limit)
    base_model, base_tok, base_label, base_place = _load(base, "base model", settings.dtype, settings.device, log)
    if settings.chat and ("kl" in task_list or "ppl" in task_list):
        from patchkit.generate.transformers_backend import require_chat_template

        require_chat_template(base_tok)  # the control prompts are chat messages: refuse before the second load
    patched_model, patched_tok, patched_label, patched_place = _load(
        patched, "patched model", settings.dtype, settings.device, log
    )
    check_same_tokenizer(base_tok, patched_tok, base_model, patched_model)
    timings["load"] = time.perf_counter() - t0
    report = BenchReport(base=base_label, patched=patched_label, tasks=task_list)
    report.provenance = _provenance(base_model)
    placement = {role: p for role, p in (("base", base_place), ("patched", patched_place)) if p is not None}
    if placement:
        report.provenance["placement"] = placement

    if "kl" in task_list or "ppl" in task_list:
        t = time.perf_counter()
        tf, groups, answers = _teacher_forced(
            base_model, base_tok, patched_model, settings, progress=progress, timings=timings
        )
        if "kl" in task_list:
            rows, det = _kl_comparisons(tf, groups)
            det["control_answers"] = answers
            report.comparisons += rows
            report.details["kl"] = det
        if "ppl" in task_list:
            rows, det = _ppl_comparisons(tf)
            report.comparisons += rows
            report.details["ppl"] = det
        timings["teacher_forced"] = time.perf_counter() - t
    if task_set is not None:
        from patchkit.checks.tasks import score_tasks

        t = time.perf_counter()
        scores = score_tasks(
            [(base_model, base_tok), (patched_model, patched_tok)],
            task_set,
            token_budget=settings.token_budget,
            progress=_merged("qa", progress) if progress else None,
            timings=timings,
        )
        rows, det = _qa_comparisons(scores)
        det["source"] = task_set.source
        report.comparisons += rows
        report.details["qa"] = det
        timings["qa"] = time.perf_counter() - t
    lm_tasks = [t[len("lmeval:") :] for t in task_list if t.startswith("lmeval:")]
    if lm_tasks:
        t = time.perf_counter()
        try:
            raw = run_lmeval(
                (base_model, base_tok),
                (patched_model, patched_tok),
                lm_tasks,
                include_path=settings.lmeval_include,
                limit=settings.lmeval_limit if settings.lmeval_limit is not None else limit,
            )
        except LmEvalMissing as exc:
            for name in lm_tasks:
                report.skipped[f"lmeval:{name}"] = str(exc)
        else:
            report.comparisons += lmeval_figures(raw)
            report.details["lmeval"] = raw
        timings["lmeval"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - t0
    timings["cpu_total"] = time.process_time() - c0
    report.timings = timings
    report.gates = gates
    report.failures = report.gate(gates)
    return report


class _merged:
    """One Progress stage summed from several sub-stages (score_tasks reports "qa-loglik" and "qa-generate";
    people see one "qa" bar whose total is the sum of the sub-stage totals)."""

    def __init__(self, stage: str, progress: Progress):
        self.stage, self.progress = stage, progress
        self.done: dict[str, int] = {}
        self.total: dict[str, int] = {}

    def __call__(self, sub: str, done: int, total: int) -> None:
        self.done[sub], self.total[sub] = done, total
        self.progress(self.stage, sum(self.done.values()), sum(self.total.values()))


def _teacher_forced(
    base_model: Any,
    tok: Any,
    patched_model: Any,
    settings: BenchSettings,
    *,
    progress: Progress | None,
    timings: dict[str, float],
) -> tuple[Any, dict[str, list[int]], list]:
    """Build the teacher-forced texts (base greedy control answers + corpus) and compare both models on them."""
    from patchkit.checks.corpus import load_corpus
    from patchkit.checks.teacher_forcing import ScoredSequence, compare_teacher_forced

    limit = settings.limit
    prompts, ctrl_source = load_control_prompts(limit)
    if progress is not None:
        progress("controls", 0, len(prompts))
    t0 = time.perf_counter()
    pairs = greedy_answers(base_model, tok, prompts, settings.control_max_new_tokens, chat=settings.chat)
    timings["controls_generate"] = time.perf_counter() - t0
    if progress is not None:
        progress("controls", len(prompts), len(prompts))
    seqs: list[ScoredSequence] = []
    groups: dict[str, list[int]] = {"controls": [], "stdlib": [], "prose": []}
    answers = []
    for i, (prompt_ids, answer_ids) in enumerate(pairs):
        if not answer_ids:
            continue
        groups["controls"].append(len(seqs))
        seqs.append(ScoredSequence(f"control:{i}", tuple(prompt_ids + answer_ids), len(prompt_ids)))
        answers.append(
            {
                "prompt": prompts[i],
                "answer": tok.decode(answer_ids, skip_special_tokens=True),
                "tokens": len(answer_ids),
                "source": ctrl_source,
            }
        )
    n_code = settings.corpus_code if limit is None else min(settings.corpus_code, limit)
    n_prose = settings.corpus_prose if limit is None else min(settings.corpus_prose, limit)
    for text in load_corpus(n_code, n_prose):
        ids = list(tok(text.text)["input_ids"])[: settings.max_text_tokens]
        if len(ids) < 2:
            continue
        groups["stdlib" if text.source.startswith("stdlib:") else "prose"].append(len(seqs))
        seqs.append(ScoredSequence(text.source, tuple(ids), 1))
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    t0 = time.perf_counter()
    tf = compare_teacher_forced(
        base_model, patched_model, seqs, pad_id=pad, token_budget=settings.token_budget, progress=progress
    )
    timings["teacher_forced_passes"] = time.perf_counter() - t0
    return tf, groups, answers


def _provenance(model: Any) -> dict[str, Any]:
    import platform

    import torch

    from patchkit._version import __version__
    from patchkit.checks.corpus import corpus_provenance

    return {
        "patchkit_version": __version__,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": platform.machine(),
        "dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
        "device": str(next(model.parameters()).device),
        **corpus_provenance(),
    }
