"""The docs cannot drift from the CLI: every `patchkit ...` command in a fenced block of README.md and docs/*.md
names a real command and only its real options, and every block marked runnable offline runs.

Marking a block runnable offline: put the HTML comment `<!-- runnable-offline -->` alone on the line right
before the block's opening fence (no blank line between); the block must be ```bash (or sh). GitHub does not
render the comment, so readers see an ordinary block. Mark an example when it needs no network, no GPU and no
model download and runs in a few seconds (a tiny model from `patchkit tiny-model` is fine; the whole file should
stay under a minute on 2 shared cores).

How a marked block runs (`test_runnable_block`): the block's text as one bash script under `set -euo pipefail`,
in a fresh empty directory, with the running venv's `bin/` first on PATH (its `patchkit` and `python`),
`PATCHKIT_CACHE` and `HF_HOME` in temporary directories, `HF_HUB_OFFLINE=1`; it must exit 0. A command whose
documented exit status is not 0 says so in the block: `patchkit diff a b --exit-code || test $? -eq 1` (1
accepted, 2 or 3 still fail). Note that bash's `set -e` ignores a command negated with `!` unless it is the last
one, so `!` is no check in the middle of a block.

What is checked in every block, marked or not (`test_commands_in_docs_are_real`): in ```bash / ```sh blocks
every line (heredoc bodies and comments skipped), in ```console and unlabelled blocks the lines starting with
`$ `. Each `patchkit` command in them must resolve to a command of `patchkit --help` (groups walked: `patchkit
recipe extract`), and each `-x` / `--flag` after it must be one of that command's visible options (a hidden,
earlier name such as `locate --output` counts as drift). Positional arguments and option values are not checked.

Not marked, on purpose: GGUF examples (no patchkit command writes a tiny .gguf: `patchkit tiny-model` writes
safetensors only), anything that needs the Hub, a GPU or the embedded model (`loops`, `bench`, `check`, `locate`,
`demo`, `import-gguf`).
"""

from __future__ import annotations

import ast
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import click
import pytest

from patchkit.cli import main

ROOT = Path(__file__).resolve().parents[1]
DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
MARKER = "<!-- runnable-offline -->"
SHELL = {"bash", "sh", "shell", "zsh"}
PROMPTED = {"console", "", "text"}  # only `$ ` lines are commands there; the rest is output
_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})(?P<info>[^`]*)$")
_HEREDOC = re.compile(r"<<-?\s*(['\"]?)(?P<word>[A-Za-z_][A-Za-z0-9_]*)\1")
_SEPARATORS = {";", "&&", "||", "|", "&", "(", ")", "|&", ";;"}
_ENV_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
BLOCK_TIMEOUT_S = 120


@dataclass(frozen=True)
class Block:
    path: Path
    line: int  # 1-based line of the opening fence
    info: str  # first word of the info string ("" when none)
    text: str
    runnable: bool

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def fenced_blocks(path: Path) -> list[Block]:
    """Every fenced code block of a Markdown file, with whether the line before it marks it runnable."""
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        opening = _FENCE.match(lines[i])
        if not opening:
            i += 1
            continue
        indent, fence = opening["indent"], opening["fence"]
        info = opening["info"].strip().split()[0] if opening["info"].strip() else ""
        body: list[str] = []
        j = i + 1
        while j < len(lines):
            closing = _FENCE.match(lines[j])
            if closing and closing["fence"][0] == fence[0] and len(closing["fence"]) >= len(fence):
                if not closing["info"].strip():
                    break
            body.append(lines[j][len(indent) :] if lines[j].startswith(indent) else lines[j].lstrip())
            j += 1
        runnable = i > 0 and lines[i - 1].strip() == MARKER
        blocks.append(Block(path, i + 1, info, "\n".join(body) + "\n", runnable))
        i = j + 1
    return blocks


ALL_BLOCKS = [b for path in DOC_FILES for b in fenced_blocks(path)]
RUNNABLE = [b for b in ALL_BLOCKS if b.runnable]


# ------------------------------------------------------------------------------------------------ the commands


def command_lines(block: Block) -> list[str]:
    """The shell command lines of a block: continuations joined, heredoc bodies left out."""
    if block.info in SHELL:
        raw = block.text.splitlines()
    elif block.info in PROMPTED:
        raw = []
        lines = block.text.splitlines()
        k = 0
        while k < len(lines):  # a `$ ` line and the lines its trailing backslashes continue onto
            if lines[k].lstrip().startswith("$ "):
                raw.append(lines[k].lstrip()[2:])
                while raw[-1].rstrip().endswith("\\") and k + 1 < len(lines):
                    k += 1
                    raw.append(lines[k])
            k += 1
    else:
        return []
    out: list[str] = []
    pending = ""
    heredoc: str | None = None
    for line in raw:
        if heredoc is not None:
            if line.strip() == heredoc:
                heredoc = None
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        full = pending + line
        pending = ""
        found = _HEREDOC.search(full)
        if found:
            heredoc = found["word"]
        out.append(full)
    if pending:
        out.append(pending)
    return out


def patchkit_invocations(line: str) -> list[list[str]]:
    """The argument lists of every `patchkit` command on one shell line (pipes, `&&`, `;` and `||` split it)."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    try:
        tokens = list(lexer)
    except ValueError:  # an unbalanced quote in prose-like text: nothing to check
        return []
    segments: list[list[str]] = [[]]
    for token in tokens:
        if token in _SEPARATORS:
            segments.append([])
        else:
            segments[-1].append(token)
    found = []
    for segment in segments:
        words = list(segment)
        while words and (words[0] in {"!", "time", "then", "do", "else", "exec"} or _ENV_ASSIGNMENT.match(words[0])):
            words.pop(0)
        if words and Path(words[0]).name == "patchkit":
            found.append(words[1:])
    return found


def _visible_flags(cmd: click.Command) -> set[str]:
    flags = {"--help", "-h"}
    for param in cmd.params:
        if isinstance(param, click.Option) and not param.hidden:
            flags.update(param.opts)
            flags.update(param.secondary_opts)
    return flags


def check_invocation(args: list[str]) -> list[str]:
    """What is wrong with `patchkit ARGS` (empty when the command and every option exist)."""
    ctx = click.Context(main)
    cmd: click.Command = main
    path = "patchkit"
    rest = list(args)
    while isinstance(cmd, click.Group):
        if not rest or rest[0].startswith("-"):
            unknown = [a for a in rest if a.startswith("-") and a not in {"--help", "-h", "--version"}]
            return [f"`{path}`: unknown option {unknown[0]}"] if unknown else []
        name = rest.pop(0)
        if name in {"...", "…"}:  # `patchkit ...`: a placeholder, not a command
            return []
        sub = cmd.get_command(ctx, name)
        if sub is None:
            return [f"`{path} {name}`: no such command (see `{path} --help`)"]
        cmd, path = sub, f"{path} {name}"
    flags = _visible_flags(cmd)
    problems = []
    for token in rest:
        if token == "--":
            break
        word = token.strip("[]")
        if not word.startswith("-") or word == "-" or re.match(r"^-\d", word):
            continue
        for flag in word.split("/"):  # `-o/--out` in a placeholder
            name = flag.split("=", 1)[0]
            if name and name not in flags:
                problems.append(f"`{path}`: no option {name}")
    return problems


def _inline_invocations(path: Path) -> list[tuple[str, list[str]]]:
    """`patchkit ...` in inline code spans of the prose (outside fenced blocks), and the README's command table,
    whose first column leaves out the `patchkit` (`| `diff A B [--as-recipe]` | ...`)."""
    found: list[tuple[str, list[str]]] = []
    in_fence: str | None = None  # the opening fence while inside a block
    top = set(main.list_commands(click.Context(main)))
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        fence = _FENCE.match(line)
        if fence and in_fence is None:
            in_fence = fence["fence"]
            continue
        if in_fence is not None:
            if fence and fence["fence"][0] == in_fence[0] and len(fence["fence"]) >= len(in_fence):
                if not fence["info"].strip():
                    in_fence = None
            continue
        spans = re.findall(r"`([^`]+)`", line)
        if path.name == "README.md" and line.startswith("| `"):
            first_cell = line.split("|")[1]
            spans += [f"patchkit {s}" for s in re.findall(r"`([^`]+)`", first_cell) if s.split()[0] in top]
        for span in spans:
            if span.startswith("patchkit ") and "{" not in span:
                found += [(f"{path.relative_to(ROOT)}:{n}", args) for args in patchkit_invocations(span)]
    return found


def _all_invocations() -> list[tuple[str, list[str]]]:
    fenced = [
        (block.where, args)
        for block in ALL_BLOCKS
        for line in command_lines(block)
        for args in patchkit_invocations(line)
    ]
    return fenced + [found for path in DOC_FILES for found in _inline_invocations(path)]


def _unresolved_shipped() -> dict[str, str | None]:
    """Short name -> resolution method of every shipped recipe that has no edits yet."""
    from patchkit.recipe import load_recipe
    from patchkit.recipe.packaged import shipped_recipes

    out: dict[str, str | None] = {}
    for shipped in shipped_recipes():
        recipe = load_recipe(shipped.path)
        if not recipe.is_resolved:
            out[shipped.name] = recipe.resolution.method if recipe.resolution else None
    return out


def recipes_applied(args: list[str]) -> list[tuple[str, str]]:
    """(command, RECIPE) for each recipe `patchkit ARGS` applies: the RECIPE of apply / check / verify, the
    `--recipe` of loops / bench / demo."""
    ctx = click.Context(main)
    if not args or args[0] not in {"apply", "check", "verify", "loops", "bench", "demo"}:
        return []
    cmd = main.get_command(ctx, args[0])
    assert cmd is not None
    takes_value = {
        opt for p in cmd.params if isinstance(p, click.Option) and not p.is_flag for opt in [*p.opts, *p.secondary_opts]
    }
    positionals: list[str] = []
    found = []
    rest = args[1:]
    k = 0
    while k < len(rest):
        token = rest[k].split("=", 1)[0]
        if token in takes_value:
            value = rest[k].split("=", 1)[1] if "=" in rest[k] else (rest[k + 1] if k + 1 < len(rest) else "")
            if token == "--recipe":
                found.append((args[0], value))
            k += 1 if "=" in rest[k] else 2
            continue
        if not token.startswith("-"):
            positionals.append(token)
        k += 1
    if args[0] in {"apply", "check", "verify"} and positionals:
        found.append((args[0], positionals[0]))
    return found


def test_the_parser_finds_the_commands():
    """Guards the checker itself: it sees commands in every kind of block, and not inside heredocs or comments."""
    block = Block(
        ROOT / "README.md",
        1,
        "bash",
        "cat > f.yaml <<'YAML'\npatchkit: 1\nYAML\n"
        "patchkit apply f.yaml \\\n  --model m -o out   # patchkit push --nope\n"
        "HF_HUB_OFFLINE=1 patchkit pull org/x && patchkit diff a b --exit-code || test $? -eq 1\n",
        False,
    )
    found = [args for line in command_lines(block) for args in patchkit_invocations(line)]
    assert found == [
        ["apply", "f.yaml", "--model", "m", "-o", "out"],
        ["pull", "org/x"],
        ["diff", "a", "b", "--exit-code"],
    ]
    console = Block(
        ROOT / "README.md", 1, "console", "$ patchkit verify r.yaml \\\n  --patched out\nok: patchkit x\n", False
    )
    assert [a for line in command_lines(console) for a in patchkit_invocations(line)] == [
        ["verify", "r.yaml", "--patched", "out"]
    ]
    assert check_invocation(["diff", "a", "b", "--as-recipe", "-o", "f.yaml"]) == []
    assert check_invocation(["recipes", "list", "--json"]) == []
    assert check_invocation(["locate", "m", "--output", "r.yaml"]) == ["`patchkit locate`: no option --output"]
    assert check_invocation(["recipe", "nope"]) == [
        "`patchkit recipe nope`: no such command (see `patchkit recipe --help`)"
    ]
    assert len(_all_invocations()) > 50  # the docs are full of examples: finding few means the parser broke


def test_commands_in_docs_are_real():
    problems = [f"{where}: {problem}" for where, args in _all_invocations() for problem in check_invocation(args)]
    assert not problems, "docs name commands or options patchkit does not have:\n" + "\n".join(problems)


def test_no_example_applies_an_unresolved_shipped_recipe():
    """The shipped recipes that have no edits yet cannot be applied, checked or benched: an example that does so
    fails for everyone who copies it (`apply` never resolves one: that is `patchkit recipe resolve`)."""
    unresolved = _unresolved_shipped()
    bad = []
    for where, args in _all_invocations():
        for _command, recipe in recipes_applied(args):
            name = re.sub(r"^(?:\./)?recipes/(.+)\.yaml$", r"\1", recipe)
            if name in unresolved:
                bad.append(f"{where}: patchkit {' '.join(args)}  ({recipe} is unresolved: it has no edits)")
    assert not bad, "examples that apply an unresolved recipe:\n" + "\n".join(bad)


def test_markers_sit_on_shell_blocks():
    text_lines = {path: path.read_text(encoding="utf-8").splitlines() for path in DOC_FILES}
    stray = []
    for path, lines in text_lines.items():
        for n, line in enumerate(lines, 1):
            if line.strip() == MARKER and not (n < len(lines) and _FENCE.match(lines[n])):
                stray.append(f"{path.relative_to(ROOT)}:{n}: {MARKER} is not right before a fenced block")
    stray += [f"{b.where}: a runnable block must be ```bash, not ```{b.info}" for b in RUNNABLE if b.info not in SHELL]
    assert not stray, "\n".join(stray)


def test_readme_tiny_example_is_runnable_and_matches_the_wheel_check():
    """The README's offline example is marked runnable, and its fix.yaml is the one tests/test_packaging.py runs
    from the installed wheel (so both tests run the same example)."""
    tree = ast.parse((ROOT / "tests" / "test_packaging.py").read_text(encoding="utf-8"))
    readme_fix = next(
        node.value.value
        for node in tree.body
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "README_FIX" for t in node.targets)
    )
    tiny = [b for b in RUNNABLE if b.path.name == "README.md" and "patchkit tiny-model tiny" in b.text]
    assert len(tiny) == 1, "the README's tiny example must be one block marked " + MARKER
    assert readme_fix in tiny[0].text
    for command in ("patchkit new --model tiny -o starter.yaml", "patchkit validate fix.yaml --model tiny"):
        assert command in tiny[0].text


def test_readme_tells_users_to_run_only_make_demo_and_make_test():
    """The README's own project commands are `make demo` and `make test` (CI runs the same `make test`); every
    `make` target any doc names exists."""
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    targets = set(re.findall(r"^([A-Za-z][\w-]*):", makefile, re.MULTILINE))
    readme = [b for b in ALL_BLOCKS if b.path.name == "README.md"]
    told = {m for b in readme for line in command_lines(b) for m in re.findall(r"(?:^|[;&|]\s*)make\s+([\w-]+)", line)}
    assert told == {"demo", "test"}
    named = {m for path in DOC_FILES for m in re.findall(r"`make ([\w-]+)`", path.read_text(encoding="utf-8"))}
    assert named - targets == set(), f"docs name make targets the Makefile does not have: {named - targets}"
    assert "make test" in (ROOT / ".ci" / "run").read_text(encoding="utf-8")


# ------------------------------------------------------------------------------------------------ run them


@pytest.mark.parametrize("block", RUNNABLE, ids=[b.where for b in RUNNABLE])
def test_runnable_block(block: Block, tmp_path):
    venv_bin = Path(sys.executable).parent
    assert (venv_bin / "patchkit").exists(), f"no patchkit script next to {sys.executable}"
    work = tmp_path / "work"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "HF_TOKEN", "HF_ENDPOINT")}
    env.update(
        PATH=f"{venv_bin}{os.pathsep}{env.get('PATH', '')}",
        VIRTUAL_ENV=str(venv_bin.parent),
        PATCHKIT_CACHE=str(tmp_path / "patchkit-cache"),
        HF_HOME=str(tmp_path / "hf-home"),
        HF_HUB_OFFLINE="1",
        HF_HUB_DISABLE_TELEMETRY="1",
        TOKENIZERS_PARALLELISM="false",
        OMP_NUM_THREADS="1",
    )
    script = "set -euo pipefail\n" + block.text
    proc = subprocess.run(
        ["bash", "-c", script], cwd=work, env=env, capture_output=True, text=True, timeout=BLOCK_TIMEOUT_S
    )
    assert proc.returncode == 0, (
        f"{block.where}: the block exited {proc.returncode}\n--- block\n{block.text}"
        f"--- stdout (tail)\n{proc.stdout[-3000:]}\n--- stderr (tail)\n{proc.stderr[-3000:]}"
    )
