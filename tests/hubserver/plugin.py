"""pytest fixtures for the local Hub server. Use with `pytest_plugins = ["hubserver.plugin"]` in a test module.

`hub_server` (session): one uvicorn server for the whole run. `hub` (function): a wiped server plus an
environment pointing `huggingface_hub` at it — endpoint, token, a fresh HF_HOME, online mode, Xet off —
patched both in os.environ and in `huggingface_hub.constants` (which reads them once, at import).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from pathlib import Path

import pytest

from hubserver.server import Account, HubServer


@dataclass
class HubHandle:
    """What a test gets: the server, its URL, the tokens it accepts, and the per-test HF_HOME."""

    server: HubServer
    url: str
    token: str
    read_token: str
    user: str
    org: str
    hf_home: Path

    def __getattr__(self, name):  # log, requests(), inject(), lfs_objects(), store ...
        return getattr(self.server, name)


@pytest.fixture(scope="session")
def hub_server(tmp_path_factory):
    write_token = "hf_" + secrets.token_hex(16)
    read_token = "hf_" + secrets.token_hex(16)
    accounts = {
        write_token: Account("alice", write=True, orgs=["patchkit-org"]),
        read_token: Account("bob", write=False),
    }
    server = HubServer(tmp_path_factory.mktemp("hubserver"), accounts).start()
    server.tokens = (write_token, read_token)
    yield server
    server.stop()


@pytest.fixture
def hub(hub_server, tmp_path, monkeypatch):
    import huggingface_hub.constants as constants

    hub_server.wipe()
    write_token, read_token = hub_server.tokens
    hf_home = tmp_path / "hf_home"
    hf_home.mkdir()
    env = {
        "HF_ENDPOINT": hub_server.url,
        "HF_TOKEN": write_token,
        "HF_HOME": str(hf_home),
        "HF_HUB_CACHE": str(hf_home / "hub"),
        "HF_HUB_OFFLINE": "0",
        "HF_HUB_DISABLE_XET": "1",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        "PATCHKIT_CACHE": str(tmp_path / "patchkit-cache"),  # apply/push digest cache stays in the test
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    patches = {
        "ENDPOINT": hub_server.url,
        "HUGGINGFACE_CO_URL_TEMPLATE": hub_server.url + "/{repo_id}/resolve/{revision}/{filename}",
        "HF_HUB_OFFLINE": False,
        "HF_HUB_DISABLE_XET": True,
        "HF_HOME": str(hf_home),
        "HF_HUB_CACHE": str(hf_home / "hub"),
        "HF_TOKEN_PATH": str(hf_home / "token"),
        "HF_STORED_TOKENS_PATH": str(hf_home / "stored_tokens"),
        "HF_HUB_DISABLE_PROGRESS_BARS": True,
    }
    for name, value in patches.items():
        if hasattr(constants, name):
            monkeypatch.setattr(constants, name, value)
    yield HubHandle(
        server=hub_server,
        url=hub_server.url,
        token=write_token,
        read_token=read_token,
        user="alice",
        org="patchkit-org",
        hf_home=hf_home,
    )
    hub_server.reset()
