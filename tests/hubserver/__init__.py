"""A small server that speaks the parts of the Hugging Face Hub protocol the real `huggingface_hub` client uses.

Tests run the real client against it (never a mock of `HfApi`): repos, commits, LFS, pull requests, resolve with
redirects and HTTP ranges, plus fault injection to prove retry, resume and error paths. See `plugin.py` for the
pytest fixtures (`hub_server`, `hub`).
"""

from hubserver.server import Fault, HubServer, RequestRecord

__all__ = ["Fault", "HubServer", "RequestRecord"]
