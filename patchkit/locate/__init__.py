"""The paper's localisation method as a command: find the neurons that drive loops and write a recipe."""

from patchkit.locate.pipeline import LocateFailed, LocateResult, LocateSettings, run_locate

__all__ = ["LocateFailed", "LocateResult", "LocateSettings", "run_locate"]
