"""patchkit: small, auditable weight edits for released LLM checkpoints."""

__version__ = "0.1.0"
