"""The byte engine: plan a recipe's edits as byte ranges, apply them exactly in the checkpoint's own dtype
(new directory or in place), verify and diff checkpoints, extract a recipe from a diff, write provenance.

No network, no CLI and no torch (the runtime-hook equivalents in `runtime` excepted): these are enforced by the
import-linter contracts in pyproject.toml. Hub references are fetched by `patchkit.workflows.resolve` first.
"""
