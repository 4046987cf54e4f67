"""Every bound patchkit puts on a recipe, in one place, with the reason for its value.

A recipe comes from someone else (a paper's repo, a pull request, a Hub card), so reading it must never cost
more than a recipe can legitimately need: each limit below is far above what any real recipe uses and far below
what would make `validate` or `apply` slow, hang, or run out of memory. Crossing one is a one-line RecipeError
naming `file:line:column` where there is a place to name.

What real recipes need, for scale: the largest published fix (Gemma 4 31B) edits 1,100 neurons; a recipe
extracted from a diff of it records one checksum mapping per edited slice (~230 bytes, 13 YAML nodes each), so
about 250 KB and 15,000 nodes. Hand-written recipes are a few hundred bytes.
"""

from __future__ import annotations

#: Bytes of a recipe file. Checked with stat before reading, and the read itself stops at the cap (a FIFO,
#: /dev/zero or a file that grows while being read is refused, not read forever). 1 MiB holds a diff-extracted
#: recipe of ~4,000 edited slices with their checksums.
MAX_RECIPE_BYTES = 1 << 20

#: YAML nodes (scalars, keys, lists, mappings) the recipe may contain, counted while composing and again after
#: expanding aliases (`*name`), so an alias "billion laughs" is refused early. Pure-Python YAML parsing costs
#: ~50 µs a node: 100,000 nodes bound the worst case to a few seconds.
MAX_NODES = 100_000

#: Nesting depth of the data (aliases included). Real recipes nest 6 levels (source.scores.train.base...);
#: the bound keeps every recursive step (YAML composer, conversion, pydantic) far from Python's recursion limit.
MAX_DEPTH = 64

#: Characters in one YAML number (sign, digits, `0x`, `_`, exponent). Python refuses to convert decimal integers
#: of more than 4,300 digits (a ValueError, not a YAML error) and even huge hex integers cannot be printed in an
#: error message; 64 characters hold any 128-bit integer and any float with all its digits.
MAX_NUMBER_CHARS = 64

#: Largest layer / neuron / expert index. Real models have < 1,000 layers and < 10^6 neurons per MLP; an index
#: beyond the int32 range is a typo or an attack, and is refused even when validating without a model.
MAX_INDEX = 2**31 - 1

#: (layer, neuron|expert) slices one recipe may expand to (lists multiply: `{layer: [0..99], neuron:
#: [0..99999]}` is 10^7). Checked from the list lengths before anything is expanded. 100,000 is ~90x the largest
#: real fix (1,100 neurons) and five full MLP layers of the largest Gemma 4; apply records one provenance entry
#: (~300 bytes) per slice, so 100,000 slices already make a 30 MB patchkit.json.
MAX_EXPANDED_EDITS = 100_000

#: Characters in `name` (it becomes the output directory and a Hub repo name: the Hub's limit is 96).
MAX_NAME_CHARS = 96

#: Characters in `model.revision` (a 40-hex commit sha, or a branch or tag name; git caps ref names near 255).
MAX_REVISION_CHARS = 255

#: `checks.loops.samples`: generations per probe. 1,000 samples per probe is beyond any real check; more would
#: make `patchkit check` run for days on a recipe's say-so.
MAX_SAMPLES = 1000

#: `checks.loops.max_new_tokens`: tokens per generation; 262,144 (256 Ki) is the longest context of the supported
#: models.
MAX_NEW_TOKENS = 262_144

__all__ = [
    "MAX_DEPTH",
    "MAX_EXPANDED_EDITS",
    "MAX_INDEX",
    "MAX_NAME_CHARS",
    "MAX_NEW_TOKENS",
    "MAX_NODES",
    "MAX_NUMBER_CHARS",
    "MAX_RECIPE_BYTES",
    "MAX_REVISION_CHARS",
    "MAX_SAMPLES",
]
