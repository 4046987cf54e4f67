"""Model references and what can be read about a model without loading it: local dirs, HF-cache snapshots and
Hub repos (`refs`), the shared Hub client (`hub_client`), safetensors and GGUF headers, size profiles of released
checkpoints, and the per-architecture adapters that map recipe units to tensors.
"""
