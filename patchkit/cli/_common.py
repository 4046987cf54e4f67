"""Shared CLI plumbing: one-line errors with the command's own flag hints, --json output, consoles.

Library errors name the *parameter* that fixes them (`PatchkitError.fix`); `handle_errors` renders it as the
running command's flag ("pass --force to replace it"), so no library message hard-codes a flag. Exit codes
follow `patchkit.errors`: 1 gate failed, 2 bad input, 3 internal error.

Every command prints through `ui_console`: on a terminal rich fits text and tables to its width; anywhere else
(CI, `| tee`, a file) nothing is wrapped, because there is no width to fit and a path, URL or tensor name split
over two lines can no longer be copied, grepped or parsed.
"""

from __future__ import annotations

import functools
import json
import os
import sys
import traceback
from collections.abc import Callable
from typing import Any

import click
from rich.console import Console

from patchkit.errors import EXIT_BAD_INPUT, EXIT_GATE_FAILED, EXIT_INTERNAL, EXIT_INTERRUPTED, Fix, PatchkitError

json_option = click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout for scripts.")


def flag_for(fix: Fix, command: click.Command | None) -> str:
    """Render a Fix as the command's own option: `pass --force to replace it`, `pass --model REF`."""
    param = next((p for p in (command.params if command else []) if p.name == fix.option), None)
    if not isinstance(param, click.Option):
        return fix.for_library()
    flag = max(param.opts, key=len)
    if param.is_flag:
        text = flag if fix.value is True or param.flag_value == fix.value else (param.secondary_opts or [flag])[0]
    else:
        value = fix.value if fix.value is not True else (param.metavar or param.name or "VALUE").upper()
        text = f"{flag} {value}"
    return " ".join(part for part in (f"pass {text}", fix.why) if part)


def _debug() -> bool:
    return os.environ.get("PATCHKIT_DEBUG", "") not in ("", "0")


def handle_errors(func: Callable[..., Any]) -> Callable[..., Any]:
    """Turn every failure into `error: ...` (one line) on stderr and the documented exit code.

    PatchkitError: its own code (1 gate failed, 2 bad input). OSError: 2, naming the file. Anything else is a bug:
    one line and exit 3; `PATCHKIT_DEBUG=1` prints the traceback. Under `--json` the error is also printed on
    stdout as `{"ok": false, "error": {...}}` so scripts never parse stderr — except for a failed gate or check
    (exit 1), whose command has already printed its report as the one JSON document.
    """

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        as_json = bool(kwargs.get("as_json"))
        try:
            return func(*args, **kwargs)
        except PatchkitError as exc:
            ctx = click.get_current_context(silent=True)
            fix_text = flag_for(exc.fix, ctx.command if ctx else None) if exc.fix else None
            # a failed gate or check (exit 1) is a result: the command already printed its report
            _fail(
                exc.render(fix_text),
                exc.exit_code,
                as_json and exc.exit_code != EXIT_GATE_FAILED,
                exc.to_json(fix_text),
            )
        except KeyboardInterrupt:
            # Ctrl-C: not a failed gate (1) and not a bug (3); 130 is the shell's own code for SIGINT
            click.echo("error: interrupted (nothing half-written is left: outputs appear only when complete)", err=True)
            sys.exit(EXIT_INTERRUPTED)
        except (click.exceptions.Exit, click.ClickException, SystemExit, BrokenPipeError):
            raise
        except OSError as exc:
            target = f" {exc.filename}" if getattr(exc, "filename", None) else ""
            message = f"{target.strip()}: {exc.strerror or exc}" if target else str(exc.strerror or exc)
            _fail(
                message,
                EXIT_BAD_INPUT,
                as_json,
                {"type": type(exc).__name__, "message": message, "exit_code": EXIT_BAD_INPUT},
            )
        except Exception as exc:  # noqa: BLE001 - a bug: one line, documented exit code, traceback on request
            if _debug():
                traceback.print_exc()
            first = (str(exc).strip().splitlines() or [""])[0][:300]
            message = (
                f"internal error: {type(exc).__name__}: {first} (this is a patchkit bug; "
                "PATCHKIT_DEBUG=1 prints the traceback)"
            )
            _fail(
                message,
                EXIT_INTERNAL,
                as_json,
                {"type": type(exc).__name__, "message": message, "exit_code": EXIT_INTERNAL},
            )

    return wrapper


def _fail(message: str, code: int, as_json: bool, payload: dict[str, Any]) -> None:
    click.echo(f"error: {message}", err=True)
    if as_json:
        click.echo(json.dumps({"ok": False, "error": payload}, default=str))
    sys.exit(code)


def emit_json(payload: Any) -> None:
    """Write a JSON document to stdout (paths and other objects rendered as strings)."""
    click.echo(json.dumps(payload, indent=2, sort_keys=False, default=str))


#: Width of a console off a terminal: wide enough that a table keeps every column at its natural width (rich
#: squeezes, folds or elides cells to fit 80 columns), never a width anything is padded to (see `_LogConsole`).
UNWRAPPED_WIDTH = 10_000
#: what a horizontal rule is drawn at off a terminal (a rule fills the console's width)
RULE_WIDTH = 80


class _LogConsole(Console):
    """A console for output that is not a terminal: text is not wrapped, tables take their natural width.

    rich sizes a console off a terminal at 80 columns and wraps to it; at `UNWRAPPED_WIDTH` a printed line stays
    whole (a path in "ok: <path> matches ..." stays on one line) and a table lays out without squeezing. Nothing
    printed by patchkit pads to the full width except rules, which are drawn at `RULE_WIDTH`. Colour follows
    rich's own detection (off unless forced).
    """

    def __init__(self, *, stderr: bool) -> None:
        super().__init__(stderr=stderr, width=UNWRAPPED_WIDTH)

    def rule(self, title: Any = "", *, characters: str = "─", style: Any = "rule.line", align: Any = "center") -> None:
        from rich.rule import Rule

        self.print(Rule(title=title, characters=characters, style=style, align=align), width=RULE_WIDTH)


def ui_console(as_json: bool) -> Console:
    """Console for tables, reports and progress: stderr under --json (stdout stays one JSON document), else stdout.

    Made per call, so it follows the streams of the moment (click's CliRunner swaps them). On an interactive
    terminal (rich's `is_interactive`: a tty that is not TERM=dumb, or forced by TTY_INTERACTIVE / FORCE_COLOR)
    it is rich's plain Console; anywhere else a `_LogConsole`, which wraps nothing.
    """
    console = Console(stderr=as_json)
    return console if console.is_interactive else _LogConsole(stderr=as_json)
