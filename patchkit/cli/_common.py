"""Shared CLI plumbing: one-line errors with the command's own flag hints, --json output, consoles.

Library errors name the *parameter* that fixes them (`PatchkitError.fix`); `handle_errors` renders it as the
running command's flag ("pass --force to replace it"), so no library message hard-codes a flag. Exit codes
follow `patchkit.errors`: 1 gate failed, 2 bad input, 3 internal error.
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

#: Human output (tables, progress) goes to stderr when --json is set, so stdout stays machine-readable.
console = Console()
err_console = Console(stderr=True)

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


def ui_console(as_json: bool) -> Console:
    """Console for progress and tables: stderr under --json, stdout otherwise."""
    return err_console if as_json else console
