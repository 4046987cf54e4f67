"""The package version (a module of its own so every stage can read it without importing the facade)."""

__version__ = "0.1.0"
