"""Recipes: the schema (strict pydantic types), YAML loading with file:line:column errors, resolution, validation.

The names below are the stage's public surface; import them from here.
"""

from patchkit.recipe.loader import dump_recipe, json_schema, load_recipe, parse_recipe, recipe_to_yaml
from patchkit.recipe.schema import (
    SCHEMA_VERSION,
    Constraints,
    ExpertEdit,
    ModelSpec,
    NeuronEdit,
    PartialEdit,
    Publish,
    Recipe,
    Resolution,
    ResolvedEdit,
    Source,
)

__all__ = [
    "SCHEMA_VERSION",
    "Constraints",
    "ExpertEdit",
    "ModelSpec",
    "NeuronEdit",
    "PartialEdit",
    "Publish",
    "Recipe",
    "Resolution",
    "ResolvedEdit",
    "Source",
    "dump_recipe",
    "json_schema",
    "load_recipe",
    "parse_recipe",
    "recipe_to_yaml",
]
