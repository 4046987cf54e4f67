"""Probe suites: YAML files of enumeration prompts (with their ground-truth lists) and control prompts.

A suite file (the packaged ones live in `patchkit/checks/probes/*.yaml`)::

    suite: enumeration
    version: 1
    description: "..."
    probes:
      - id: iau-constellations        # unique, kebab-case
        kind: enumeration             # enumeration | control
        split: train                  # train | heldout (rewordings of one item share it)
        category: astronomy
        source: "IAU list of the 88 constellations"
        truth: [Andromeda, Antlia, ...]            # enumeration only
        aliases: {"Ursa Major": ["Great Bear"]}    # optional
        prompts: ["List all 88 IAU constellations.", "Name every one of the 88 constellations."]
      - id: capital-france
        kind: control
        split: train
        category: geography
        prompts: ["What is the capital of France?"]
        answer: {any: ["Paris"]}      # or {number: 19} or {regex: "..."}
        max_new_tokens: 64            # optional

Each (item, prompt) pair is one probe, with id "<item id>#<prompt index>".
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from patchkit.errors import CheckError

__all__ = ["Answer", "ItemSpec", "SuiteFile", "Probe", "Suite", "load_suite", "packaged_suites", "parse_suite"]

_KEBAB = re.compile(r"^[a-z0-9]+(?:-[a-z0-9]+)*$")


class Answer(BaseModel):
    """How a control answer is checked: exactly one of `any`, `number`, `regex`."""

    model_config = ConfigDict(extra="forbid")

    any: list[str] | None = Field(None, min_length=1, description="correct if any of these phrases occurs")
    number: float | None = Field(
        None, description="correct if the answer's final number (not copied from the prompt) equals this"
    )
    regex: str | None = Field(None, description="correct if this regular expression matches (case-insensitive)")

    @model_validator(mode="after")
    def _exactly_one(self) -> Answer:
        given = [k for k in ("any", "number", "regex") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of any / number / regex (got {', '.join(given) or 'none'})")
        if self.regex is not None:
            try:
                re.compile(self.regex)
            except re.error as exc:
                raise ValueError(f"regex does not compile: {exc}") from None
        return self


class ItemSpec(BaseModel):
    """One entry of `probes:` in a suite file (one item, one or more prompt wordings)."""

    model_config = ConfigDict(extra="forbid")

    id: str
    kind: Literal["enumeration", "control"]
    split: Literal["train", "heldout"]
    category: str = Field(min_length=1)
    source: str | None = None
    truth: list[str] | None = None
    aliases: dict[str, list[str]] | None = None
    prompts: list[str] = Field(min_length=1)
    answer: Answer | None = None
    max_new_tokens: int | None = Field(None, ge=1, le=32768)

    @field_validator("id")
    @classmethod
    def _kebab(cls, value: str) -> str:
        if not _KEBAB.match(value):
            raise ValueError(f"{value!r} is not kebab-case (lowercase letters, digits, single hyphens)")
        return value

    @field_validator("prompts")
    @classmethod
    def _prompts(cls, value: list[str]) -> list[str]:
        for i, prompt in enumerate(value):
            if not prompt.strip():
                raise ValueError(f"prompt {i} is empty")
        if len(set(value)) != len(value):
            raise ValueError("the same prompt is listed twice")
        return value

    @model_validator(mode="after")
    def _by_kind(self) -> ItemSpec:
        if self.kind == "enumeration":
            if not self.truth:
                raise ValueError("an enumeration item needs `truth:` (its ground-truth list)")
            if self.answer is not None:
                raise ValueError("`answer:` is for controls; an enumeration item is scored against `truth:`")
            dupes = sorted({t for t in self.truth if self.truth.count(t) > 1})
            if dupes:
                raise ValueError(f"truth lists {', '.join(dupes[:3])} more than once")
            unknown = sorted(set(self.aliases or {}) - set(self.truth))
            if unknown:
                raise ValueError(f"aliases name {', '.join(unknown[:3])}, which is not in truth")
        else:
            if self.answer is None:
                raise ValueError("a control item needs `answer:` ({any: [...]}, {number: N} or {regex: ...})")
            if self.truth is not None or self.aliases is not None:
                raise ValueError("`truth:`/`aliases:` are for enumeration items; a control is scored by `answer:`")
        return self


class SuiteFile(BaseModel):
    """A whole suite file."""

    model_config = ConfigDict(extra="forbid")

    suite: str = Field(min_length=1)
    version: Literal[1]
    description: str = ""
    probes: list[ItemSpec] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique_ids(self) -> SuiteFile:
        seen: set[str] = set()
        for item in self.probes:
            if item.id in seen:
                raise ValueError(f"probe id {item.id!r} is used twice")
            seen.add(item.id)
        return self


@dataclass(frozen=True)
class Probe:
    """One prompt to run: an (item, wording) pair."""

    id: str  # "<item id>#<prompt index>"
    item_id: str
    prompt_index: int
    kind: str  # "enumeration" | "control"
    prompt: str
    split: str  # "train" | "heldout"
    category: str
    source: str | None = None
    truth: tuple[str, ...] | None = None
    aliases: dict[str, list[str]] | None = None
    answer: dict[str, Any] | None = None
    max_new_tokens: int | None = None


@dataclass
class Suite:
    """A loaded suite: the probes to run (controls included, see `load_suite`)."""

    name: str
    version: int
    description: str
    probes: list[Probe]
    sources: list[str] = field(default_factory=list)  # files the probes came from

    def select(self, *, split: str | None = None, limit: int | None = None, kind: str | None = None) -> Suite:
        """Probes of one split ("train" | "heldout" | None/"all"), at most `limit` per kind, in file order."""
        if split not in (None, "all", "train", "heldout"):
            raise CheckError(f"unknown split {split!r}", hint="use train, heldout or all")
        chosen: list[Probe] = []
        per_kind: dict[str, int] = {}
        for probe in self.probes:
            if split not in (None, "all") and probe.split != split:
                continue
            if kind is not None and probe.kind != kind:
                continue
            if limit is not None and per_kind.get(probe.kind, 0) >= limit:
                continue
            per_kind[probe.kind] = per_kind.get(probe.kind, 0) + 1
            chosen.append(probe)
        return Suite(self.name, self.version, self.description, chosen, list(self.sources))

    def by_kind(self, kind: str) -> list[Probe]:
        return [p for p in self.probes if p.kind == kind]


def packaged_suites() -> list[str]:
    """Names of the suites shipped with patchkit."""
    folder = resources.files("patchkit.checks") / "probes"
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))


def _packaged_path(name: str) -> Path | None:
    path = Path(str(resources.files("patchkit.checks") / "probes" / f"{name}.yaml"))
    return path if path.is_file() else None


def load_suite(name_or_path: str | Path, *, controls: bool | None = None) -> Suite:
    """Load a packaged suite by name ("enumeration", "controls", "smoke") or a suite YAML file.

    `controls=None` (default): a suite without control probes also gets the packaged `controls` suite, so a loop
    run always reports whether normal prompts still work. `False` never adds them, `True` always does.
    """
    text = str(name_or_path)
    path = Path(text)
    if not (text.endswith((".yaml", ".yml")) or path.is_file()):
        packaged = _packaged_path(text)
        if packaged is None:
            raise CheckError(
                f"unknown suite {text!r}",
                hint=f"use one of {', '.join(packaged_suites()) or '(none installed)'} or a path to a suite YAML file",
            )
        path = packaged
    suite = parse_suite(_read(path), str(path))
    has_controls = any(p.kind == "control" for p in suite.probes)
    if controls or (controls is None and not has_controls and suite.name != "controls"):
        extra_path = _packaged_path("controls")
        if extra_path is not None and extra_path.resolve() != path.resolve():
            extra = parse_suite(_read(extra_path), str(extra_path))
            known = {p.id for p in suite.probes}
            clash = sorted({p.item_id for p in extra.probes if p.id in known})
            if clash:
                raise CheckError(
                    f"{path}: probe id {clash[0]!r} is also used by the packaged controls suite",
                    hint="rename it, or load with controls=False",
                )
            suite.probes.extend(extra.probes)
            suite.sources.extend(extra.sources)
    return suite


#: a suite file is YAML text; the packaged 164-probe suite is ~60 KB
MAX_SUITE_BYTES = 4 << 20


def _read(path: Path) -> str:
    """The suite file's text: a regular file (no FIFOs, devices, links out), capped before reading, UTF-8."""
    from patchkit._io.fs import read_capped

    try:
        data = read_capped(path, MAX_SUITE_BYTES, what="suite file", error=CheckError)
    except FileNotFoundError:
        raise CheckError(f"{path}: suite file not found") from None
    except OSError as exc:
        raise CheckError(f"{path}: cannot read suite file ({exc.strerror or exc})") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CheckError(f"{path}: suite file is not UTF-8 text (byte {exc.start})") from None


def parse_suite(text: str, filename: str = "<suite>") -> Suite:
    """Validate suite YAML text; errors name `file:line: field.path: problem`."""
    from ruamel.yaml import YAML
    from ruamel.yaml.error import YAMLError

    yaml = YAML(typ="rt")
    try:
        data = yaml.load(text)
    except RecursionError:
        raise CheckError(f"{filename}: nested too deeply to be a suite file") from None
    except YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{filename}:{mark.line + 1}" if mark is not None else filename
        raise CheckError(f"{where}: not valid YAML ({getattr(exc, 'problem', None) or exc})") from None
    if not isinstance(data, dict):
        raise CheckError(
            f"{filename}: a suite file is a mapping with suite, version, probes",
            hint="see docs/loops.md for the format",
        )
    try:
        spec = SuiteFile.model_validate(_plain(data))
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = [x for x in err["loc"] if not (isinstance(x, str) and x.startswith("function-"))]
        field_path = _dotted(loc)
        line = _line_of(data, loc)
        where = f"{filename}:{line}" if line else filename
        msg = err["msg"].removeprefix("Value error, ")
        more = f" (and {len(exc.errors()) - 1} more problem(s))" if len(exc.errors()) > 1 else ""
        raise CheckError(f"{where}: {field_path or 'suite'}: {msg}{more}") from None
    probes: list[Probe] = []
    for item in spec.probes:
        for i, prompt in enumerate(item.prompts):
            probes.append(
                Probe(
                    id=f"{item.id}#{i}",
                    item_id=item.id,
                    prompt_index=i,
                    kind=item.kind,
                    prompt=prompt,
                    split=item.split,
                    category=item.category,
                    source=item.source,
                    truth=tuple(item.truth) if item.truth else None,
                    aliases=item.aliases,
                    answer=item.answer.model_dump(exclude_none=True) if item.answer else None,
                    max_new_tokens=item.max_new_tokens,
                )
            )
    return Suite(spec.suite, spec.version, spec.description, probes, [filename])


def _plain(node: Any) -> Any:
    """ruamel's commented containers -> plain dict/list (pydantic sees ordinary data)."""
    if isinstance(node, dict):
        return {str(k) if not isinstance(k, (str, int, float, bool)) else k: _plain(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_plain(v) for v in node]
    return node


def _dotted(loc: list[Any]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _line_of(data: Any, loc: list[Any]) -> int | None:
    """1-based line of the deepest node on `loc` that ruamel recorded a position for."""
    node, line = data, None
    for part in loc:
        lc = getattr(node, "lc", None)
        try:
            if isinstance(node, dict) and part in node:
                if lc is not None:
                    line = lc.key(part)[0] + 1
                node = node[part]
            elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
                if lc is not None:
                    line = lc.item(part)[0] + 1
                node = node[part]
            else:
                break
        except (KeyError, IndexError, TypeError, AttributeError):
            break
    return line
