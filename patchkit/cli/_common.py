"""Shared CLI plumbing: one-line errors, --json output, a rich console on stderr for humans."""

from __future__ import annotations

import functools
import json
import sys
from typing import Any, Callable

import click
from rich.console import Console

from patchkit.errors import PatchkitError

#: Human output (tables, progress) goes to stderr when --json is set, so stdout stays machine-readable.
console = Console()
err_console = Console(stderr=True)

json_option = click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout for scripts.")


def handle_errors(func: Callable[..., Any]) -> Callable[..., Any]:
    """Turn PatchkitError (and a few OS errors) into `error: ...` on stderr and a non-zero exit."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except PatchkitError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(exc.exit_code)
        except (PermissionError, OSError) as exc:
            if isinstance(exc, (BrokenPipeError,)):
                raise
            target = f" {exc.filename}" if getattr(exc, "filename", None) else ""
            click.echo(f"error:{target}: {exc.strerror or exc}", err=True)
            sys.exit(2)

    return wrapper


def emit_json(payload: Any) -> None:
    """Write a JSON document to stdout (paths and other objects rendered as strings)."""
    click.echo(json.dumps(payload, indent=2, sort_keys=False, default=str))


def ui_console(as_json: bool) -> Console:
    """Console for progress and tables: stderr under --json, stdout otherwise."""
    return err_console if as_json else console
