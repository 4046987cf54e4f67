"""One CLI: every command of `patchkit` (the lazy group's COMMANDS, subgroups included) spells its options the same
way. Every option has help; `-o` is always `--out`; no concept has two spellings across commands (`--out` vs
`--output`, `--report` vs `--report-dir`); one parameter name is one flag everywhere; every command takes --json;
a `--dtype` states its default in a spelling its help lists.

Each test collects every violation and names them all (command, flag, what is wrong), so one run says what to fix.
"""

from __future__ import annotations

import re
from collections import defaultdict

import click
import pytest

from patchkit.cli import COMMANDS, main

#: Spellings of one concept: a CLI uses at most one of each set (the first is the one patchkit chose).
SYNONYMS = (
    ("--out", "--output", "--output-dir", "--out-dir", "--outdir", "--dest"),
    ("--report", "--report-dir", "--reports", "--report-directory"),
    ("--json", "--as-json", "--format-json"),
    ("--force", "--overwrite", "--replace"),
    ("--dry-run", "--dryrun", "--plan-only"),
    ("--max-new-tokens", "--max-tokens", "--max-length"),
    ("--revision", "--rev"),
    ("--repo", "--repo-id"),
    ("--dtype", "--torch-dtype", "--precision"),
    ("--limit", "--max-items", "--max-probes"),
)
_DTYPES = r"\b(auto|f32|f16|bf16|float32|float16|bfloat16)\b"


def _commands() -> list[tuple[str, click.Command]]:
    """(`patchkit sub cmd`, command) for every command reachable from `patchkit`, groups walked."""
    ctx = click.Context(main)
    out: list[tuple[str, click.Command]] = []

    def walk(group: click.Group, path: str) -> None:
        for name in group.list_commands(ctx):
            cmd = group.get_command(ctx, name)
            assert cmd is not None, f"{path} {name}: listed but not loadable"
            if isinstance(cmd, click.Group):
                walk(cmd, f"{path} {name}")
            else:
                out.append((f"{path} {name}", cmd))

    walk(main, "patchkit")
    return out


COMMAND_LIST = _commands()


def _options(cmd: click.Command, *, hidden: bool = True) -> list[click.Option]:
    """The command's options (not --help); `hidden=False` leaves out hidden ones (old names kept for scripts:
    they are in no help text, so they are not a second spelling anyone is shown)."""
    return [
        p for p in cmd.params if isinstance(p, click.Option) and "--help" not in p.opts and (hidden or not p.hidden)
    ]


def _long(opt: click.Option) -> list[str]:
    return [o for o in [*opt.opts, *opt.secondary_opts] if o.startswith("--")]


def _where(name: str, opt: click.Option) -> str:
    return f"{name} {'/'.join(opt.opts + opt.secondary_opts)}"


def test_every_top_level_command_is_walked():
    top = {name.split()[1] for name, _ in COMMAND_LIST}
    assert top == set(COMMANDS) and len(COMMAND_LIST) >= len(COMMANDS)


def test_every_option_has_help():
    missing = [_where(name, opt) for name, cmd in COMMAND_LIST for opt in _options(cmd) if not (opt.help or "").strip()]
    assert not missing, "options without help text: " + "; ".join(missing)


def test_short_o_always_means_out():
    wrong = [
        f"{_where(name, opt)} (expected -o, --out)"
        for name, cmd in COMMAND_LIST
        for opt in _options(cmd)
        if "-o" in opt.opts and "--out" not in opt.opts
    ]
    assert not wrong, "-o must be --out: " + "; ".join(wrong)


def test_no_concept_is_spelled_two_ways():
    used: dict[str, set[str]] = defaultdict(set)  # flag -> commands
    for name, cmd in COMMAND_LIST:
        for opt in _options(cmd, hidden=False):
            for flag in _long(opt):
                used[flag].add(name)
    clashes = []
    for group in SYNONYMS:
        spelled = [flag for flag in group if flag in used]
        if len(spelled) > 1:
            detail = ", ".join(f"{flag} in {', '.join(sorted(used[flag]))}" for flag in spelled)
            clashes.append(f"{' vs '.join(spelled)} ({detail}; use {spelled[0]})")
    assert not clashes, "one concept, several spellings: " + "; ".join(clashes)


def test_one_parameter_name_is_one_flag():
    """The same parameter (the library keyword the option feeds) must not get a different flag per command."""
    flags: dict[str, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))  # param -> long flag -> commands
    for name, cmd in COMMAND_LIST:
        for opt in _options(cmd, hidden=False):
            primary = max(opt.opts, key=len)
            flags[opt.name or ""][primary].add(name)
    clashes = [
        f"{param}: " + " vs ".join(f"{flag} ({', '.join(sorted(cmds))})" for flag, cmds in sorted(spellings.items()))
        for param, spellings in sorted(flags.items())
        if len(spellings) > 1
    ]
    assert not clashes, "parameters with several flags: " + "; ".join(clashes)


def test_every_command_takes_json():
    missing = [name for name, cmd in COMMAND_LIST if not any("--json" in o.opts for o in _options(cmd))]
    assert not missing, "commands without --json: " + ", ".join(missing)


def test_dtype_help_states_its_default_in_a_listed_spelling():
    problems = []
    for name, cmd in COMMAND_LIST:
        for opt in _options(cmd):
            if "--dtype" not in opt.opts:
                continue
            text = opt.help or ""
            stated = re.search(r"\[default: ([^\]]+)\]", text)
            default = stated.group(1).strip() if stated else opt.default if opt.show_default else None
            listed = set(re.findall(_DTYPES, re.sub(r"\[default: [^\]]*\]", "", text)))
            if isinstance(opt.type, click.Choice):
                listed |= {str(c) for c in opt.type.choices}
            if default is None:
                problems.append(f"{name} --dtype: the help does not say the default")
            elif str(default) not in listed:
                problems.append(
                    f"{name} --dtype: default {default!r} is not one of the spellings it lists {sorted(listed)}"
                )
    assert not problems, "; ".join(problems)


@pytest.mark.parametrize("name, cmd", COMMAND_LIST, ids=[n for n, _ in COMMAND_LIST])
def test_help_renders(name, cmd):
    """`--help` of every command renders (a broken help string is a crash, exit 3, for the user who asks)."""
    from click.testing import CliRunner

    result = CliRunner().invoke(main, [*name.split()[1:], "--help"])
    assert result.exit_code == 0, result.output
