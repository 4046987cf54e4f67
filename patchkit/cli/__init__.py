"""The `patchkit` command: a click group whose commands live in small modules and are imported lazily.

Importing torch/transformers costs seconds, so `patchkit schema` must not pay for `patchkit loops`.
Each entry maps a command name to "module:attribute"; a module that is not there yet hides its commands.
"""

from __future__ import annotations

import importlib
import importlib.util

import click

from patchkit._version import __version__

COMMANDS: dict[str, str] = {
    # core engine: recipes (cli/recipe_cli.py) and checkpoints (cli/core.py)
    "validate": "patchkit.cli.recipe_cli:validate_cmd",
    "schema": "patchkit.cli.recipe_cli:schema_cmd",
    "new": "patchkit.cli.recipe_cli:new_cmd",
    "apply": "patchkit.cli.core:apply_cmd",
    "diff": "patchkit.cli.core:diff_cmd",
    "verify": "patchkit.cli.core:verify_cmd",
    "recipe": "patchkit.cli.recipe_cmds:recipe_group",
    # shipped recipes and the tiny offline model (cli/packaged.py)
    "recipes": "patchkit.cli.packaged:recipes_group",
    "tiny-model": "patchkit.cli.packaged:tiny_model_cmd",
    # checks
    "detect": "patchkit.cli.loops:detect_cmd",
    "loops": "patchkit.cli.loops:loops_cmd",
    "bench": "patchkit.cli.bench:bench_cmd",
    "check": "patchkit.cli.bench:check_cmd",
    # hub
    "push": "patchkit.cli.hub:push_cmd",
    "pull": "patchkit.cli.hub:pull_cmd",
    "card": "patchkit.cli.hub:card_cmd",
    # locate, gguf, demo
    "locate": "patchkit.cli.locate:locate_cmd",
    "import-gguf": "patchkit.cli.gguf:import_gguf_cmd",
    "demo": "patchkit.cli.demo:demo_cmd",
}


def _module_exists(target: str) -> bool:
    module = target.split(":")[0]
    return importlib.util.find_spec(module) is not None


class LazyGroup(click.Group):
    """Resolve subcommands on first use so start-up stays fast."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(name for name, target in COMMANDS.items() if _module_exists(target))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = COMMANDS.get(cmd_name)
        if target is None or not _module_exists(target):
            return None
        module_name, attr = target.split(":")
        return getattr(importlib.import_module(module_name), attr)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="patchkit")
def main() -> None:
    """Fix released LLM checkpoints with small, auditable weight edits.

    \b
    Exit codes: 0 ok · 1 a gate or check failed · 2 bad input or usage · 3 internal error (a bug;
    PATCHKIT_DEBUG=1 prints the traceback) · 130 interrupted. Every command takes --json.
    """
