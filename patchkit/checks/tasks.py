"""The bundled question set (facts, arithmetic, reading comprehension) and how a model is scored on it.

Every item is scored three ways on the same prompt: (1) `acc`: the option with the highest summed
log-likelihood, (2) `acc_norm`: highest mean log-likelihood per option token (removes the bias towards
short options), (3) `exact_match`: the greedy continuation's first line equals the answer (or an alias)
after normalisation. `gold_logprob` (log-likelihood of the right option) is kept per item: it moves
before accuracy does, so it is the most sensitive paired measure of damage.

A task file (the bundled one, or `--task-file`) is validated by the strict pydantic models `TaskFile` /
`TaskSpec`: unknown keys, wrong types (a number where text is expected: quote it), an answer that is not one of
the options, duplicate ids or an unknown passage are each one CheckError line `file:line:column: field: problem`
(ruamel's round-trip loader keeps the positions, as for recipes and probe suites).
"""

from __future__ import annotations

import re
import string
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import date
from importlib import resources
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from patchkit._io.fs import read_capped
from patchkit._io.progress import Progress
from patchkit.errors import CheckError
from patchkit.recipe.schema import dotted, where_in

__all__ = [
    "TaskFile",
    "TaskItem",
    "TaskSet",
    "TaskSpec",
    "load_tasks",
    "parse_tasks",
    "item_prompt",
    "normalize_answer",
    "is_exact_match",
    "score_tasks",
    "TaskScores",
]

TaskKind = Literal["fact", "arithmetic", "reading"]
KINDS: tuple[str, ...] = get_args(TaskKind)


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


#: Values a task file may hold after YAML aliases are expanded (the bundled 210-item file has ~5,000): an
#: alias "billion laughs" stops here instead of exhausting memory.
MAX_TASK_NODES = 200_000
TASK_FILE_VERSION = 1

_STRICT = ConfigDict(extra="forbid", strict=True)
#: YAML's own tags for plain data (a date is refused by the schema, with a hint to quote it)
_PLAIN_TAGS = frozenset(
    f"tag:yaml.org,2002:{t}" for t in ("str", "int", "float", "bool", "null", "map", "seq", "timestamp")
)


class TaskSpec(BaseModel):
    """One entry of `items:` in a task file."""

    model_config = _STRICT

    id: str = Field(min_length=1, description="unique within the file")
    kind: TaskKind
    question: str = Field(min_length=1)
    options: list[str] = Field(description="two or more distinct answers, scored by log-likelihood")
    answer: str = Field(min_length=1, description="one of `options`; also the exact-match target")
    accept: list[str] | None = Field(None, description="other spellings accepted by exact match")
    passage: str | None = Field(None, description="key of the passage (under `passages:`) the question is about")

    @field_validator("options")
    @classmethod
    def _distinct(cls, value: list[str]) -> list[str]:
        if len(value) < 2 or len(set(value)) != len(value):
            raise ValueError("needs at least two distinct options")
        return value

    @field_validator("answer")
    @classmethod
    def _one_of_the_options(cls, value: str, info: ValidationInfo) -> str:
        options = info.data.get("options")
        if options is not None and value not in options:
            raise ValueError(f"{value!r} is not one of the options")
        return value


class TaskFile(BaseModel):
    """A whole task file: an optional `version` (1), passages by key, and the items."""

    model_config = _STRICT

    version: int | None = Field(None, description=f"task file format version ({TASK_FILE_VERSION})")
    passages: dict[str, str] | None = Field(None, description="passage key -> text, for reading items")
    items: list[TaskSpec]

    @field_validator("version")
    @classmethod
    def _known_version(cls, value: int | None) -> int | None:
        if value is not None and value != TASK_FILE_VERSION:
            raise ValueError(f"{value} is not supported (this patchkit reads version {TASK_FILE_VERSION})")
        return value


def parse_tasks(text: str, source: str = "<tasks>") -> TaskSet:
    """Validate task YAML text; every refusal is one CheckError line `source:line:column: field: problem`."""
    data, positions = _load_yaml(text, source)
    if not isinstance(data, dict):
        raise CheckError(
            f"{source}: task file is empty or not a mapping", hint="expected keys `version`, `passages`, `items`"
        )
    if not data.get("items"):
        where = where_in(source, positions, ("items",))
        raise CheckError(f"{where}: task file has no items", hint="add at least one entry under `items:`")
    try:
        spec = TaskFile.model_validate(data)
    except ValidationError as exc:
        raise _validation_error(exc, positions, source) from None
    passages = spec.passages or {}
    seen: dict[str, int] = {}
    items: list[TaskItem] = []
    for i, it in enumerate(spec.items):
        if it.id in seen:
            where = where_in(source, positions, ("items", i, "id"))
            raise CheckError(f"{where}: items[{i}].id: duplicate id {it.id!r} (first in items[{seen[it.id]}])")
        seen[it.id] = i
        if it.passage is not None and it.passage not in passages:
            where = where_in(source, positions, ("items", i, "passage"))
            known = ", ".join(sorted(passages)[:8]) or "none: add a `passages:` mapping"
            raise CheckError(f"{where}: items[{i}].passage: unknown passage {it.passage!r}", hint=f"known: {known}")
        items.append(
            TaskItem(
                it.id,
                it.kind,
                it.question,
                tuple(it.options),
                it.answer,
                tuple(it.accept or ()),
                passages[it.passage] if it.passage is not None else None,
            )
        )
    return TaskSet(source, items)


def load_tasks(path: str | Path | None = None) -> TaskSet:
    """Load a task YAML (default: the bundled `checks/data/tasks.yaml`); CheckError names file:line and field."""
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
    return parse_tasks(text, source)


def _load_yaml(text: str, source: str) -> tuple[Any, dict[tuple, tuple[int, int]]]:
    """(plain data, {location: (line, column)}) of a YAML document, read with ruamel's position-keeping loader."""
    from ruamel.yaml import YAML, YAMLError

    try:
        doc = YAML(typ="rt").load(text)
    except RecursionError:
        raise CheckError(f"{source}: nested too deeply to be a task file") from None
    except YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark is not None else source
        problem = " ".join(str(getattr(exc, "problem", None) or exc).split())[:160]
        raise CheckError(f"{where}: not valid YAML ({problem})") from None
    positions: dict[tuple, tuple[int, int]] = {}
    budget = [MAX_TASK_NODES]
    try:
        return _plain(doc, (), positions, budget, source), positions
    except RecursionError:
        raise CheckError(f"{source}: nested too deeply to be a task file") from None


def _plain(node: Any, loc: tuple, positions: dict, budget: list[int], source: str) -> Any:
    """ruamel's containers -> plain dict / list / scalars, recording the line and column of every key and item."""
    from ruamel.yaml.comments import CommentedMap, CommentedSeq

    budget[0] -= 1
    if budget[0] < 0:
        raise CheckError(
            f"{where_in(source, positions, loc)}: the task file expands to more than {MAX_TASK_NODES:,} values",
            hint="remove the YAML aliases (*name) that multiply the data, or split the file",
        )
    tag = getattr(getattr(node, "tag", None), "value", None)
    if tag and tag not in _PLAIN_TAGS:
        raise CheckError(
            f"{where_in(source, positions, loc)}: {dotted(loc) or 'task file'}: YAML tag {_show(tag, 40)} is not allowed",
            hint="task files are plain data; remove the tag",
        )
    if isinstance(node, CommentedMap):
        out: dict[Any, Any] = {}
        for key in node:
            try:
                line, col = node.lc.key(key)
                positions[loc + (key,)] = (line + 1, col + 1)
            except (KeyError, TypeError, AttributeError, IndexError):
                pass
            out[key if isinstance(key, (str, int, float, bool)) else str(key)] = _plain(
                node[key], loc + (key,), positions, budget, source
            )
        return out
    if isinstance(node, CommentedSeq):
        items = []
        for i, item in enumerate(node):
            try:
                line, col = node.lc.item(i)
                positions[loc + (i,)] = (line + 1, col + 1)
            except (KeyError, TypeError, AttributeError, IndexError):
                pass
            items.append(_plain(item, loc + (i,), positions, budget, source))
        return items
    if isinstance(node, str):
        return str(node)  # ruamel's quoted-string subclasses -> str
    if isinstance(node, bool) or node is None:
        return node
    if isinstance(node, int):
        return int(node)
    if isinstance(node, float):
        return float(node)
    return node  # dates, tagged values ...: the schema refuses them with their position


def _validation_error(exc: ValidationError, positions: dict, source: str) -> CheckError:
    """The first pydantic error as one line: source:line:column, the dotted field, what is wrong, and a hint."""
    errors = exc.errors()
    err = errors[0]
    loc = tuple(part for part in err["loc"] if part != "[key]")
    field = dotted(loc) or "task file"
    value = err.get("input")
    kind, hint = err["type"], None
    if kind == "extra_forbidden":
        parent = TaskSpec if len(loc) == 3 and loc[0] == "items" else TaskFile
        message = f"unknown key {_show(loc[-1])}"
        hint = f"allowed keys: {', '.join(parent.model_fields)}"
        field = dotted(loc[:-1]) or "task file"
    elif kind == "missing":
        message = "is required"
    elif kind in ("string_type", "int_type"):
        want = "text" if kind == "string_type" else "a whole number"
        message = f"must be {want}, got {_kind_of(value)}"
        if kind == "string_type" and isinstance(value, (int, float, bool, date)):
            read_as = "a boolean" if isinstance(value, bool) else "a date" if isinstance(value, date) else "a number"
            hint = f"put it in quotes: unquoted, YAML reads it as {read_as}"
    elif kind == "list_type":
        message = f"must be a list, got {_kind_of(value)}"
    elif kind in ("dict_type", "model_type"):
        message = f"must be a mapping, got {_kind_of(value)}"
    elif kind == "literal_error" and loc[-1:] == ("kind",):
        message = f"{_show(value)} is not one of {', '.join(KINDS)}"
    elif kind == "string_too_short":
        message = "must not be empty"
    else:
        message = str(err["msg"]).removeprefix("Value error, ")
    more = f" (and {len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
    return CheckError(f"{where_in(source, positions, loc)}: {field}: {message}{more}", hint=hint)


def _show(value: Any, limit: int = 60) -> str:
    """A value for an error message: YAML spelling for true/false/null, else repr, cut to `limit` characters."""
    if value is True or value is False or value is None:
        return {True: "true", False: "false", None: "null"}[value]
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _kind_of(value: Any) -> str:
    if value is True or value is False:
        return f"{_show(value)} (a boolean)"
    if value is None:
        return "nothing (null)"
    if isinstance(value, (int, float)):
        return f"{_show(value)} (a number)"
    if isinstance(value, date):
        return f"{value} (a date)"
    if isinstance(value, str):
        return f"{_show(value)} (text)"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return _show(value)


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
