"""Helpers for trying patchkit without a real model and for its tests: `patchkit.testing.tiny` builds tiny
random checkpoints from a config (`patchkit tiny-model DIR`). Nothing in the stage packages imports this."""
