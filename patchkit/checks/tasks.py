"""The bundled question set (facts, arithmetic, reading comprehension) and how a model is scored on it.

Every item is scored three ways on the same prompt: (1) `acc`: the option with the highest summed
log-likelihood, (2) `acc_norm`: highest mean log-likelihood per option token (removes the bias towards
short options), (3) `exact_match`: the greedy continuation's first line equals the answer (or an alias)
after normalisation. `gold_logprob` (log-likelihood of the right option) is kept per item: it moves
before accuracy does, so it is the most sensitive paired measure of damage.
"""

from __future__ import annotations

import re
import string
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from patchkit._io.fs import read_capped
from patchkit._io.progress import Progress
from patchkit.errors import CheckError

__all__ = [
    "TaskItem",
    "TaskSet",
    "load_tasks",
    "item_prompt",
    "normalize_answer",
    "is_exact_match",
    "score_tasks",
    "TaskScores",
]

KINDS = ("fact", "arithmetic", "reading")


@dataclass(frozen=True)
class TaskItem:
    id: str
    kind: str
    question: str
    options: tuple[str, ...]
    answer: str
    accept: tuple[str, ...] = ()
    passage: str | None = None  # the passage text (resolved from its key)

    @property
    def gold(self) -> int:
        return self.options.index(self.answer)


@dataclass
class TaskSet:
    source: str
    items: list[TaskItem]

    def limited(self, limit: int | None) -> TaskSet:
        """The first `limit` items of each kind (keeps the mix of kinds when the set is cut down)."""
        if limit is None:
            return self
        kept: list[TaskItem] = []
        counts: dict[str, int] = {}
        for item in self.items:
            if counts.get(item.kind, 0) < limit:
                kept.append(item)
                counts[item.kind] = counts.get(item.kind, 0) + 1
        return TaskSet(self.source, kept)


def _fail(source: str, where: str, msg: str) -> CheckError:
    return CheckError(f"{source}: {where}: {msg}")


def _parse(data: Any, source: str) -> TaskSet:
    if not isinstance(data, dict):
        raise CheckError(
            f"{source}: task file is empty or not a mapping", hint="expected keys `version`, `passages`, `items`"
        )
    passages = data.get("passages") or {}
    if not isinstance(passages, dict):
        raise _fail(source, "passages", "must be a mapping of key -> text")
    raw_items = data.get("items")
    if not raw_items:
        raise CheckError(f"{source}: task file has no items", hint="add at least one entry under `items:`")
    if not isinstance(raw_items, list):
        raise _fail(source, "items", "must be a list")
    items: list[TaskItem] = []
    seen: set[str] = set()
    for i, raw in enumerate(raw_items):
        where = f"items[{i}]"
        if not isinstance(raw, dict):
            raise _fail(source, where, "must be a mapping")
        unknown = set(raw) - {"id", "kind", "question", "options", "answer", "accept", "passage"}
        if unknown:
            raise _fail(source, where, f"unknown key(s) {sorted(unknown)}")
        for key in ("id", "kind", "question", "options", "answer"):
            if raw.get(key) in (None, "", []):
                raise _fail(source, f"{where}.{key}", "is required")
        item_id = str(raw["id"])
        if item_id in seen:
            raise _fail(source, f"{where}.id", f"duplicate id {item_id!r}")
        seen.add(item_id)
        if raw["kind"] not in KINDS:
            raise _fail(source, f"{where}.kind", f"{raw['kind']!r} is not one of {', '.join(KINDS)}")
        options = tuple(str(o) for o in raw["options"])
        if len(options) < 2 or len(set(options)) != len(options):
            raise _fail(source, f"{where}.options", "needs at least two distinct options")
        answer = str(raw["answer"])
        if answer not in options:
            raise _fail(source, f"{where}.answer", f"{answer!r} is not one of the options")
        passage = None
        if raw.get("passage") is not None:
            key = str(raw["passage"])
            if key not in passages:
                raise _fail(source, f"{where}.passage", f"unknown passage {key!r}")
            passage = str(passages[key])
        items.append(
            TaskItem(
                item_id,
                raw["kind"],
                str(raw["question"]),
                options,
                answer,
                tuple(str(a) for a in raw.get("accept") or ()),
                passage,
            )
        )
    return TaskSet(source, items)


def load_tasks(path: str | Path | None = None) -> TaskSet:
    """Load a task YAML (default: the bundled `checks/data/tasks.yaml`); CheckError names file and field."""
    from ruamel.yaml import YAML, YAMLError

    if path is None:
        text = resources.files("patchkit.checks").joinpath("data/tasks.yaml").read_text(encoding="utf-8")
        source = "patchkit/checks/data/tasks.yaml"
    else:
        p = Path(path)
        if not p.is_symlink() and not p.exists():
            raise CheckError(f"{p}: task file not found")
        raw = read_capped(p, 16 << 20, what="task file", error=CheckError)
        try:
            text, source = raw.decode("utf-8"), str(p)
        except UnicodeDecodeError as exc:
            raise CheckError(f"{p}: task file is not UTF-8 text (byte {exc.start})") from None
    try:
        data = YAML(typ="safe").load(text)
    except YAMLError as exc:
        raise CheckError(f"{source}: not valid YAML ({' '.join(str(exc).split())[:160]})") from None
    return _parse(data, source)


#: One worked example before the question, so base and instruct models alike answer tersely on one line
#: (zero-shot, SmolLM2-135M-Instruct mostly answered with an empty line or a sentence).
FEW_SHOT = "Question: What is the capital of Peru?\nAnswer: Lima\n\n"


def item_prompt(item: TaskItem) -> str:
    """Plain completion prompt (no chat template), the same for option scoring and the greedy answer:
    one worked example, the passage if any, the question, `Answer:`."""
    head = f"Passage: {item.passage}\n\n" if item.passage else ""
    return f"{FEW_SHOT}{head}Question: {item.question}\nAnswer:"


_PUNCT = re.compile(f"[{re.escape(string.punctuation)}]")


def normalize_answer(text: str) -> str:
    """Lower-case, drop punctuation (a decimal comma in '3,000' too) and leading articles, squeeze spaces."""
    text = _PUNCT.sub("", text.lower().replace(",", ""))
    words = text.split()
    while words and words[0] in ("the", "a", "an"):
        words = words[1:]
    return " ".join(words)


def is_exact_match(generated: str, item: TaskItem) -> bool:
    """First non-empty line, normalised, is the answer (or an alias), or starts or ends with it as whole words
    ("Paris", "Paris is the capital", "The capital of France is Paris.")."""
    line = next((ln for ln in generated.strip().splitlines() if ln.strip()), "")
    got = normalize_answer(line)
    for target in (item.answer, *item.accept):
        want = normalize_answer(target)
        if want and (got == want or got.startswith(want + " ") or got.endswith(" " + want)):
            return True
    return False


@dataclass
class TaskScores:
    """Per-item results for one model (arrays aligned with `items`)."""

    items: list[TaskItem]
    acc: np.ndarray
    acc_norm: np.ndarray
    exact_match: np.ndarray | None
    gold_logprob: np.ndarray
    generations: list[str] = field(default_factory=list)


def _encode(tokenizer: Any, text: str, *, specials: bool) -> list[int]:
    return list(tokenizer(text, add_special_tokens=specials)["input_ids"])


def _option_requests(tokenizer: Any, items: Sequence[TaskItem]) -> list[tuple[int, int, list[int], int]]:
    """(item index, option index, context+continuation ids, continuation length) for every option."""
    requests = []
    for i, item in enumerate(items):
        ctx = _encode(tokenizer, item_prompt(item), specials=True)
        for j, option in enumerate(item.options):
            cont = _encode(tokenizer, " " + option, specials=False)
            if not cont:
                raise CheckError(f"task {item.id}: option {option!r} tokenizes to nothing")
            requests.append((i, j, ctx + cont, len(cont)))
    return requests


def _loglik_batches(
    models: Sequence[Any],
    requests: list[tuple[int, int, list[int], int]],
    pad_id: int,
    token_budget: int,
    advance: Callable[[int], None] | None,
) -> list[np.ndarray]:
    """Summed continuation log-likelihood per request, for each model, from identical left-padded batches.

    `advance(n)` is told how many requests each finished batch held."""
    import torch

    from patchkit.checks.teacher_forcing import pack_batches

    out = [np.zeros(len(requests)) for _ in models]
    for batch in pack_batches([len(r[2]) for r in requests], token_budget):
        width = max(len(requests[k][2]) for k in batch)
        keep = max(requests[k][3] for k in batch) + 1
        ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, k in enumerate(batch):
            seq = requests[k][2]
            ids[row, width - len(seq) :] = torch.tensor(seq)
            mask[row, width - len(seq) :] = 1
        pos = (mask.cumsum(-1) - 1).clamp_min(0)
        for m, model in enumerate(models):
            device = next(model.parameters()).device
            with torch.inference_mode():
                try:
                    logits = model(
                        input_ids=ids.to(device),
                        attention_mask=mask.to(device),
                        position_ids=pos.to(device),
                        use_cache=False,
                        logits_to_keep=keep,
                    ).logits
                except TypeError:  # models without logits_to_keep
                    logits = model(
                        input_ids=ids.to(device),
                        attention_mask=mask.to(device),
                        position_ids=pos.to(device),
                        use_cache=False,
                    ).logits[:, -keep:]
            logp = torch.log_softmax(logits.float(), dim=-1)
            for row, k in enumerate(batch):
                n = requests[k][3]
                # the last n tokens are the continuation; logits[:, t] predicts token t+1 -> rows keep-1-n .. keep-2
                target = ids[row, width - n :].to(logp.device)
                out[m][k] = logp[row, keep - 1 - n : keep - 1].gather(-1, target[:, None]).sum().item()
        if advance is not None:
            advance(len(batch))
    return out


def _stop_ids(model: Any, tokenizer: Any) -> list[int]:
    """EOS ids plus single tokens that are pure newlines: only the first line of an answer is scored."""
    ids: list[int] = []
    cfg = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    for v in (cfg if isinstance(cfg, list) else [cfg]) + [tokenizer.eos_token_id]:
        if v is not None and int(v) not in ids:
            ids.append(int(v))
    for text in ("\n", "\n\n"):
        enc = _encode(tokenizer, text, specials=False)
        if len(enc) == 1 and enc[0] not in ids:
            ids.append(enc[0])
    return ids


def _cache_kwarg(model: Any, cache: Any) -> dict[str, Any]:
    """transformers renamed `past_key_values` to `cache`; pass whichever this model's forward takes."""
    import inspect

    params = inspect.signature(model.forward).parameters
    return {"cache": cache} if "cache" in params else {"past_key_values": cache}


def _greedy_from_cache(
    model: Any, cache: Any, first_logits: Any, mask: Any, max_new_tokens: int, stop_ids: Sequence[int]
) -> list[list[int]]:
    """Greedy continuation of a left-padded batch whose context is already in `cache` (modified in place)."""
    import torch

    device = first_logits.device
    next_tok = first_logits.argmax(-1)
    rows = next_tok.shape[0]
    out: list[list[int]] = [[] for _ in range(rows)]
    done = [False] * rows
    cur_mask = mask.to(device)
    cur_pos = cur_mask.sum(-1)
    stops = set(int(t) for t in stop_ids)
    for step in range(max_new_tokens):
        for r, t in enumerate(next_tok.tolist()):
            if not done[r]:
                if t in stops:
                    done[r] = True
                else:
                    out[r].append(t)
        if all(done) or step == max_new_tokens - 1:
            break
        cur_mask = torch.cat([cur_mask, torch.ones((rows, 1), dtype=cur_mask.dtype, device=device)], dim=1)
        with torch.inference_mode():
            step_out = model(
                input_ids=next_tok[:, None],
                attention_mask=cur_mask,
                position_ids=cur_pos[:, None],
                use_cache=True,
                **_cache_kwarg(model, cache),
            )
        cur_pos = cur_pos + 1
        next_tok = step_out.logits[:, -1].argmax(-1)
    return out


def _loglik_shared(
    models: Sequence[Any],
    requests: list[tuple[int, int, list[int], int]],
    pad_id: int,
    token_budget: int,
    advance: Callable[[int], None] | None,
    *,
    generate: int = 0,
    stop_ids: Sequence[Sequence[int]] = (),
    gen_advance: Callable[[int], None] | None = None,
) -> tuple[list[np.ndarray], list[dict[int, list[int]]]]:
    """Same numbers as `_loglik_batches`, but each item's context runs once: its KV cache is copied to every
    option (the context is most of the tokens, so this is ~options-times cheaper). With `generate > 0` the
    same context pass also seeds each model's greedy answer (up to `generate` tokens, stopping at that
    model's `stop_ids`), returned as {item index: token ids} per model. `advance(n)` / `gen_advance(n)` are told
    how many requests / answers each finished batch held."""
    import copy

    import torch

    from patchkit.checks.teacher_forcing import pack_batches

    # group requests by item: one context, several continuations
    items: dict[int, list[int]] = {}
    for k, (i, _, _, _) in enumerate(requests):
        items.setdefault(i, []).append(k)
    item_ids = list(items)
    ctx = {i: requests[items[i][0]][2][: len(requests[items[i][0]][2]) - requests[items[i][0]][3]] for i in item_ids}
    cont = {k: requests[k][2][len(requests[k][2]) - requests[k][3] :] for k in range(len(requests))}
    out = [np.zeros(len(requests)) for _ in models]
    generated: list[dict[int, list[int]]] = [{} for _ in models]
    for batch_pos in pack_batches([len(ctx[i]) for i in item_ids], token_budget):
        batch = [item_ids[b] for b in batch_pos]
        width = max(len(ctx[i]) for i in batch)
        ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, i in enumerate(batch):
            ids[row, width - len(ctx[i]) :] = torch.tensor(ctx[i])
            mask[row, width - len(ctx[i]) :] = 1
        pos = (mask.cumsum(-1) - 1).clamp_min(0)
        rows = [(row, k) for row, i in enumerate(batch) for k in items[i]]
        select = torch.tensor([row for row, _ in rows])
        tail = max(len(cont[k]) for _, k in rows) - 1  # continuation tokens fed after the context
        opt_ids = torch.full((len(rows), max(tail, 1)), pad_id, dtype=torch.long)
        opt_mask = torch.zeros_like(opt_ids)
        for r, (_, k) in enumerate(rows):
            fed = cont[k][:-1]
            if fed:
                opt_ids[r, : len(fed)] = torch.tensor(fed)
                opt_mask[r, : len(fed)] = 1
        for m, model in enumerate(models):
            device = next(model.parameters()).device
            with torch.inference_mode():
                first = model(
                    input_ids=ids.to(device),
                    attention_mask=mask.to(device),
                    position_ids=pos.to(device),
                    use_cache=True,
                    logits_to_keep=1,
                )
                first_logp = torch.log_softmax(first.logits[:, -1].float(), dim=-1)
                cache = getattr(first, "cache", None) or first.past_key_values
                if generate > 0:
                    answers = _greedy_from_cache(
                        model,
                        copy.deepcopy(cache),
                        first.logits[:, -1],
                        mask,
                        generate,
                        stop_ids[m] if m < len(stop_ids) else (),
                    )
                    for row, i in enumerate(batch):
                        generated[m][i] = answers[row]
                    if gen_advance is not None:
                        gen_advance(len(batch))
                rest_logp = None
                if tail > 0:
                    cache.reorder_cache(select.to(device))
                    full_mask = torch.cat([mask[select], opt_mask], dim=1)
                    opt_pos = mask[select].sum(-1, keepdim=True) + torch.arange(opt_ids.shape[1])[None, :]
                    rest = model(
                        input_ids=opt_ids.to(device),
                        attention_mask=full_mask.to(device),
                        position_ids=opt_pos.to(device),
                        use_cache=True,
                        **_cache_kwarg(model, cache),
                    )
                    rest_logp = torch.log_softmax(rest.logits.float(), dim=-1)
            for r, (row, k) in enumerate(rows):
                toks = cont[k]
                total = first_logp[row, toks[0]].item()
                if len(toks) > 1:
                    if rest_logp is None:  # tail > 0 whenever a continuation has more than one token
                        raise CheckError("internal error: multi-token continuation without its continuation pass")
                    target = torch.tensor(toks[1:], device=rest_logp.device)
                    total += rest_logp[r, : len(toks) - 1].gather(-1, target[:, None]).sum().item()
                out[m][k] = total
        if advance is not None:
            advance(len(rows))
    return out, generated


def _greedy_answers(
    model: Any,
    tokenizer: Any,
    items: Sequence[TaskItem],
    max_new_tokens: int,
    batch_size: int,
    advance: Callable[[int], None] | None,
) -> list[str]:
    """Each item's greedy answer (plain `generate`); `advance(n)` is told how many each finished chunk held."""
    import torch

    prompts = [item_prompt(item) for item in items]
    answers: list[str] = [""] * len(prompts)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    device = next(model.parameters()).device
    tokenizer.padding_side = "left"
    stop = _stop_ids(model, tokenizer)
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        enc = tokenizer([prompts[i] for i in chunk], return_tensors="pt", padding=True)
        with torch.inference_mode():
            out = model.generate(
                **{k: v.to(device) for k, v in enc.items()},
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=stop,
            )
        new = out[:, enc["input_ids"].shape[1] :]
        for row, i in enumerate(chunk):
            answers[i] = tokenizer.decode(new[row], skip_special_tokens=True)
        if advance is not None:
            advance(len(chunk))
    return answers


def _counter(progress: Progress | None, stage: str, total: int) -> Callable[[int], None] | None:
    """An `advance(n)` for the batch loops that reports the running (absolute) count to `progress`."""
    if progress is None:
        return None
    done = 0
    progress(stage, 0, total)

    def advance(n: int) -> None:
        nonlocal done
        done += n
        progress(stage, done, total)

    return advance


def score_tasks(
    models: Sequence[tuple[Any, Any]],
    tasks: TaskSet,
    *,
    exact_match: bool = True,
    max_new_tokens: int = 8,
    token_budget: int = 2048,
    batch_size: int = 32,
    progress: Progress | None = None,
    timings: dict[str, float] | None = None,
) -> list[TaskScores]:
    """Score every (model, tokenizer) on the same items; option log-likelihoods come from identical batches.

    `progress(stage, done, total)` reports stage "qa-loglik" (options scored, for all models at once) and, with
    `exact_match`, "qa-generate" (greedy answers, items x models). `timings`, when given, receives the seconds
    spent in "qa_loglik" and "qa_generate"."""
    import time

    timings = timings if timings is not None else {}
    if not tasks.items:
        raise CheckError(f"{tasks.source}: task file has no items", hint="add at least one entry under `items:`")
    tok = models[0][1]
    requests = _option_requests(tok, tasks.items)
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0
    cb = _counter(progress, "qa-loglik", len(requests))
    gen_cb = _counter(progress, "qa-generate", len(tasks.items) * len(models)) if exact_match else None
    t0 = time.perf_counter()
    generated: list[dict[int, list[int]]] | None = None
    try:
        logliks, generated = _loglik_shared(
            [m for m, _ in models],
            requests,
            pad_id,
            token_budget,
            cb,
            generate=max_new_tokens if exact_match else 0,
            stop_ids=[_stop_ids(m, t) for m, t in models],
            gen_advance=gen_cb,
        )
    except (AttributeError, NotImplementedError, TypeError):  # a model/cache without KV reuse: score plainly
        # the counts start again with the plain passes
        cb = _counter(progress, "qa-loglik", len(requests))
        gen_cb = _counter(progress, "qa-generate", len(tasks.items) * len(models)) if exact_match else None
        logliks = _loglik_batches([m for m, _ in models], requests, pad_id, token_budget, cb)
        generated = None
    timings["qa_loglik"] = time.perf_counter() - t0  # includes the greedy answers when they share the pass
    t0 = time.perf_counter()
    results: list[TaskScores] = []
    for (model, tokenizer), ll in zip(models, logliks, strict=True):
        n = len(tasks.items)
        raw = [np.full(len(it.options), -np.inf) for it in tasks.items]
        norm = [np.full(len(it.options), -np.inf) for it in tasks.items]
        for k, (i, j, _, n_cont) in enumerate(requests):
            raw[i][j] = ll[k]
            norm[i][j] = ll[k] / n_cont
        gold = np.array([it.gold for it in tasks.items])
        acc = np.array([int(np.argmax(raw[i]) == gold[i]) for i in range(n)], dtype=bool)
        acc_norm = np.array([int(np.argmax(norm[i]) == gold[i]) for i in range(n)], dtype=bool)
        gold_lp = np.array([raw[i][gold[i]] for i in range(n)])
        gens: list[str] = []
        em = None
        if exact_match:
            if generated is not None:
                gens = [tokenizer.decode(generated[len(results)][i], skip_special_tokens=True) for i in range(n)]
            else:
                gens = _greedy_answers(model, tokenizer, tasks.items, max_new_tokens, batch_size, gen_cb)
            em = np.array([is_exact_match(g, it) for g, it in zip(gens, tasks.items, strict=True)], dtype=bool)
        results.append(TaskScores(list(tasks.items), acc, acc_norm, em, gold_lp, gens))
    timings["qa_generate"] = time.perf_counter() - t0
    return results
