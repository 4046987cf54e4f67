"""Generation backends: local transformers (batched, early loop stop) and OpenAI-compatible HTTP."""
