"""ASGI app speaking the Hub protocol subset `huggingface_hub` uses, and a uvicorn runner for tests.

Routing works on the raw (still percent-encoded) path: revisions such as `refs%2Fpr%2F1` contain encoded
slashes that a decoded path would split. LFS content is served from a second origin (`localhost` instead of
`127.0.0.1`), like the Hub's CDN, so the client sees a real cross-host redirect and drops its auth header.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from hubserver.store import FileEntry, Repo, Store, git_blob_sha1, lfs_pointer

LFS_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pt", ".pth", ".ckpt", ".h5", ".onnx", ".msgpack", ".npy", ".model")
LFS_SIZE_THRESHOLD = 10 * 1024 * 1024
ALLOWED_RELATIONS = ("adapter", "merge", "quantized", "finetune")
PIPELINE_TAGS = ("text-generation", "text2text-generation", "image-text-to-text", "feature-extraction")


@dataclass
class RequestRecord:
    """One request as the server saw it (the token itself is never recorded, only who it belonged to)."""

    method: str
    path: str
    query: str
    status: int = 0
    user: str | None = None
    fault: str | None = None
    body_bytes: int = 0
    range: str | None = None  # the Range header, to see downloads resume


@dataclass
class Fault:
    """Fail the `nth` request (1-based) matching `method` and the `path` regex, `times` times in a row.

    action: "500" / "503" / "409" / "400" / "403" (answer that status) or "drop" (read part of the body, then
    send a truncated response and close the connection mid-transfer).
    """

    action: str
    path: str = ".*"
    method: str | None = None
    nth: int = 1
    times: int = 1
    seen: int = 0
    fired: int = 0

    def check(self, method: str, path: str) -> bool:
        if self.method and self.method != method:
            return False
        if not re.search(self.path, path):
            return False
        self.seen += 1
        if self.seen >= self.nth and self.fired < self.times:
            self.fired += 1
            return True
        return False


@dataclass
class Account:
    name: str
    write: bool = True
    orgs: list[str] = field(default_factory=list)


class _Drop(Exception):
    """Raised inside the app to abort a response mid-body (uvicorn then closes the connection)."""


def _error(status: int, message: str, code: str | None = None, headers: dict | None = None) -> JSONResponse:
    hdrs = dict(headers or {})
    if code:
        hdrs["X-Error-Code"] = code
    hdrs["X-Error-Message"] = message
    return JSONResponse({"error": message}, status_code=status, headers=hdrs)


def _parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """`bytes=a-b` / `bytes=a-` / `bytes=-n` -> inclusive (start, end), clipped to the file."""
    if not header:
        return None
    match = re.fullmatch(r"\s*bytes=(\d*)-(\d*)\s*", header)
    if not match or (match.group(1) == "" and match.group(2) == ""):
        return None
    if match.group(1) == "":
        n = int(match.group(2))
        return max(0, size - n), size - 1
    start = int(match.group(1))
    end = int(match.group(2)) if match.group(2) else size - 1
    return start, min(end, size - 1)


class HubApp:
    """The ASGI application. State lives in `store`; `faults` and `log` are for the tests."""

    def __init__(self, store: Store, accounts: dict[str, Account]):
        self.store = store
        self.accounts = accounts  # token -> account
        self.faults: list[Fault] = []
        #: path -> sha256 to report in tree listings instead of the truth (simulates a corrupted remote store)
        self.tree_overrides: dict[str, str] = {}
        self.log: list[RequestRecord] = []
        self.base_url = ""  # set by HubServer once the port is known
        self.cdn_url = ""
        self._sig = secrets.token_hex(8)
        self._routes: list[tuple[str, re.Pattern, Callable]] = [
            ("GET", re.compile(r"^/api/whoami-v2$"), self.whoami),
            ("GET", re.compile(r"^/api/agent-harnesses$"), self.agent_harnesses),
            ("POST", re.compile(r"^/api/repos/create$"), self.create_repo),
            ("DELETE", re.compile(r"^/api/repos/delete$"), self.delete_repo),
            ("POST", re.compile(r"^/api/validate-yaml$"), self.validate_yaml),
            ("GET", re.compile(r"^/api/models/(?P<repo>[^/]+/[^/]+)(?:/revision/(?P<rev>[^/]+))?$"), self.model_info),
            ("POST", re.compile(r"^/api/models/(?P<repo>[^/]+/[^/]+)/preupload/(?P<rev>[^/]+)$"), self.preupload),
            ("POST", re.compile(r"^/api/models/(?P<repo>[^/]+/[^/]+)/commit/(?P<rev>[^/]+)$"), self.commit),
            ("GET", re.compile(r"^/api/models/(?P<repo>[^/]+/[^/]+)/refs$"), self.refs),
            ("POST", re.compile(r"^/api/models/(?P<repo>[^/]+/[^/]+)/branch/(?P<branch>[^/]+)$"), self.create_branch),
            (
                "GET",
                re.compile(r"^/api/models/(?P<repo>[^/]+/[^/]+)/tree/(?P<rev>[^/]+)(?:/(?P<path>.*))?$"),
                self.tree,
            ),
            ("POST", re.compile(r"^/api/models/(?P<repo>[^/]+/[^/]+)/paths-info/(?P<rev>[^/]+)$"), self.paths_info),
            ("GET", re.compile(r"^/api/models/(?P<repo>[^/]+/[^/]+)/discussions$"), self.discussions),
            ("GET", re.compile(r"^/api/models/(?P<repo>[^/]+/[^/]+)/discussions/(?P<num>\d+)$"), self.discussion),
            ("POST", re.compile(r"^/(?P<repo>[^/]+/[^/]+)\.git/info/lfs/objects/batch$"), self.lfs_batch),
            ("POST", re.compile(r"^/(?P<repo>[^/]+/[^/]+)\.git/info/lfs/objects/verify$"), self.lfs_verify),
            ("PUT", re.compile(r"^/lfs-upload/(?P<oid>[0-9a-f]{64})$"), self.lfs_upload),
            ("GET", re.compile(r"^/cdn/lfs/(?P<oid>[0-9a-f]{64})$"), self.cdn),
            ("HEAD", re.compile(r"^/cdn/lfs/(?P<oid>[0-9a-f]{64})$"), self.cdn),
            ("GET", re.compile(r"^/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<path>.+)$"), self.resolve),
            ("HEAD", re.compile(r"^/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<path>.+)$"), self.resolve),
        ]

    # ---- ASGI entry ----------------------------------------------------------------------------------
    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return
        raw_path = scope.get("raw_path") or scope["path"].encode()
        path = raw_path.decode("latin-1").split("?", 1)[0]
        query = scope.get("query_string", b"").decode("latin-1")
        method = scope["method"]
        record = RequestRecord(method=method, path=unquote(path), query=query)
        self.log.append(record)
        request = Request(scope, receive)
        record.user = self._user_name(request)
        record.range = request.headers.get("range")

        fault = next((f for f in self.faults if f.check(method, unquote(path))), None)
        if fault is not None:
            record.fault = fault.action
            if fault.action == "drop" and method == "GET":
                await self._drop_download(method, path, request, send, record)
                return
            if fault.action == "drop":
                await self._drop(request, send, record)
                return
            record.status = int(fault.action)
            response = _error(int(fault.action), f"injected fault {fault.action}")
            await response(scope, receive, send)
            return

        response = await self._dispatch(method, path, request, record)
        record.status = response.status_code
        await response(scope, receive, send)

    async def _drop(self, request: Request, send, record: RequestRecord) -> None:
        """Consume part of the upload, start a response, then abort it: the client sees a broken connection."""
        async for chunk in request.stream():
            record.body_bytes += len(chunk)
            if record.body_bytes > 1024:
                break
        record.status = -1
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"4096")]})
        await send({"type": "http.response.body", "body": b"partial", "more_body": True})
        raise _Drop("connection dropped by fault injection")

    async def _drop_download(self, method: str, path: str, request: Request, send, record: RequestRecord) -> None:
        """Send the real headers and the first half of the real body, then cut the connection."""
        response = await self._dispatch(method, path, request, record)
        record.status = -1
        body = getattr(response, "body", b"") or b""
        await send({"type": "http.response.start", "status": response.status_code, "headers": response.raw_headers})
        await send({"type": "http.response.body", "body": body[: len(body) // 2], "more_body": True})
        raise _Drop("connection dropped by fault injection")

    async def _dispatch(self, method: str, path: str, request: Request, record: RequestRecord) -> Response:
        token = self._bearer(request)
        if token is not None and token not in self.accounts:
            return _error(401, "Invalid credentials in Authorization header")
        for route_method, pattern, handler in self._routes:
            if route_method != method:
                continue
            match = pattern.match(path)
            if match:
                params = {k: unquote(v) for k, v in match.groupdict().items() if v is not None}
                return await handler(request, record=record, **params)
        return _error(404, f"no route for {method} {unquote(path)}")

    # ---- auth ----------------------------------------------------------------------------------------
    @staticmethod
    def _bearer(request: Request) -> str | None:
        value = request.headers.get("authorization")
        if not value or not value.lower().startswith("bearer "):
            return None
        return value.split(" ", 1)[1].strip()

    def _account(self, request: Request) -> Account | None:
        token = self._bearer(request)
        return self.accounts.get(token) if token else None

    def _user_name(self, request: Request) -> str | None:
        account = self._account(request)
        return account.name if account else None

    def _readable(self, request: Request, repo_id: str) -> tuple[Repo | None, Response | None]:
        repo = self.store.repos.get(repo_id)
        account = self._account(request)
        if repo is None or (repo.private and (account is None or not self._owns(account, repo_id))):
            status = 401 if account is None else 404
            return None, _error(status, f"Repository Not Found for url: {repo_id}", "RepoNotFound")
        return repo, None

    @staticmethod
    def _owns(account: Account, repo_id: str) -> bool:
        namespace = repo_id.split("/")[0]
        return namespace == account.name or namespace in account.orgs

    def _writable(self, request: Request, repo_id: str) -> tuple[Repo | None, Response | None]:
        account = self._account(request)
        if account is None:
            return None, _error(401, "You must be authenticated to write", None)
        repo, error = self._readable(request, repo_id)
        if error:
            return None, error
        if not account.write or not self._owns(account, repo_id):
            return None, _error(403, f"You don't have the rights to write to {repo_id}")
        return repo, None

    def _revision(self, repo: Repo, rev: str) -> tuple[str | None, Response | None]:
        oid = repo.resolve(rev)
        if oid is None:
            return None, _error(404, f"Invalid rev id: {rev}", "RevisionNotFound")
        return oid, None

    # ---- API handlers --------------------------------------------------------------------------------
    async def whoami(self, request: Request, record) -> Response:
        account = self._account(request)
        if account is None:
            return _error(401, "Invalid credentials in Authorization header")
        role = "write" if account.write else "read"
        return JSONResponse(
            {
                "type": "user",
                "name": account.name,
                "fullname": account.name,
                "orgs": [{"name": org, "type": "org"} for org in account.orgs],
                "auth": {"type": "access_token", "accessToken": {"displayName": "test", "role": role}},
            }
        )

    async def agent_harnesses(self, request: Request, record) -> Response:
        """The client fetches this registry once a day to tag its user agent; an empty one detects nothing."""
        return JSONResponse({"standardEnvVars": [], "harnesses": {}})

    async def create_repo(self, request: Request, record) -> Response:
        account = self._account(request)
        if account is None:
            return _error(401, "You must be authenticated to create a repo")
        body = await request.json()
        namespace = body.get("organization") or account.name
        repo_id = f"{namespace}/{body['name']}"
        if not account.write or not self._owns(account, repo_id):
            return _error(403, f"You don't have the rights to create a model under the namespace {namespace}")
        if repo_id in self.store.repos:  # like the Hub, a 409 still tells where the repo is
            return JSONResponse(
                {"error": "You already created this model repo", "url": f"{self.base_url}/{repo_id}"}, status_code=409
            )
        private = body.get("private") or body.get("visibility") == "private"
        self.store.create_repo(repo_id, private=bool(private), owner=account.name)
        return JSONResponse({"url": f"{self.base_url}/{repo_id}", "name": repo_id})

    async def delete_repo(self, request: Request, record) -> Response:
        body = await request.json()
        account = self._account(request)
        namespace = body.get("organization") or (account.name if account else "")
        repo_id = f"{namespace}/{body['name']}"
        _, error = self._writable(request, repo_id)
        if error:
            return error
        with self.store.lock:
            del self.store.repos[repo_id]
            self.store.save()
        return JSONResponse({})

    async def validate_yaml(self, request: Request, record) -> Response:
        """A stand-in for the Hub's card metadata validator: the rules patchkit's cards must satisfy."""
        body = await request.json()
        errors = validate_card_metadata(body.get("content", ""))
        if errors:
            return JSONResponse({"errors": [{"message": e} for e in errors]}, status_code=400)
        return JSONResponse({"errors": [], "warnings": []})

    async def model_info(self, request: Request, record, repo: str, rev: str = "main") -> Response:
        repo_obj, error = self._readable(request, repo)
        if error:
            return error
        oid, error = self._revision(repo_obj, rev)
        if error:
            return error
        commit = repo_obj.commits[oid]
        blobs = request.query_params.get("blobs") in ("1", "true", "True")
        siblings = []
        for path, entry in sorted(commit.files.items()):
            item: dict[str, Any] = {"rfilename": path}
            if blobs:
                item.update(size=entry.size, blobId=entry.oid)
                if entry.lfs_sha256:
                    item["lfs"] = {"size": entry.size, "sha256": entry.lfs_sha256, "pointerSize": entry.pointer_size}
            siblings.append(item)
        return JSONResponse(
            {
                "id": repo,
                "modelId": repo,
                "sha": oid,
                "private": repo_obj.private,
                "disabled": False,
                "gated": False,
                "lastModified": commit.date,
                "createdAt": repo_obj.commits[min(repo_obj.commits)].date,
                "tags": [],
                "downloads": 0,
                "likes": 0,
                "siblings": siblings,
            }
        )

    def _is_lfs(self, path: str, size: int, sample: bytes) -> bool:
        return path.endswith(LFS_SUFFIXES) or size >= LFS_SIZE_THRESHOLD or b"\0" in sample

    async def preupload(self, request: Request, record, repo: str, rev: str) -> Response:
        repo_obj, error = self._writable(request, repo)
        if error:
            return error
        head = repo_obj.resolve(rev)
        if head is None and request.query_params.get("create_pr") != "1":
            return _error(404, f"Invalid rev id: {rev}", "RevisionNotFound")
        files = (await request.json()).get("files", [])
        current = repo_obj.commits[head].files if head else {}
        answer = []
        for item in files:
            sample = base64.b64decode(item.get("sample", ""))
            mode = "lfs" if self._is_lfs(item["path"], int(item["size"]), sample) else "regular"
            existing = current.get(item["path"])
            remote_oid = None
            if existing is not None:
                remote_oid = existing.lfs_sha256 if existing.lfs_sha256 else existing.oid
            answer.append({"path": item["path"], "uploadMode": mode, "shouldIgnore": False, "oid": remote_oid})
        return JSONResponse({"files": answer, "commitOid": head})

    async def commit(self, request: Request, record, repo: str, rev: str) -> Response:
        repo_obj, error = self._writable(request, repo)
        if error:
            return error
        create_pr = request.query_params.get("create_pr") == "1"
        head, error = self._revision(repo_obj, rev)
        if error:
            return error
        lines = [json.loads(line) for line in (await request.body()).splitlines() if line.strip()]
        record.body_bytes = sum(len(json.dumps(x)) for x in lines)
        header = next((x["value"] for x in lines if x["key"] == "header"), None)
        if header is None:
            return _error(400, "commit payload has no header line")
        if header.get("parentCommit") and header["parentCommit"] != head:
            return _error(412, "A commit has happened since. Please refresh and try again.")
        files = dict(repo_obj.commits[head].files)
        for item in lines:
            key, value = item["key"], item.get("value", {})
            if key == "file":
                data = base64.b64decode(value["content"])
                files[value["path"]] = FileEntry(size=len(data), oid=self.store.put_blob(data))
            elif key == "lfsFile":
                sha, size = value["oid"], value.get("size")
                if not self.store.has_lfs(sha):
                    return _error(400, f"LFS pointer for {value['path']} points to a missing object {sha}")
                size = self.store.lfs_path(sha).stat().st_size if size is None else int(size)
                pointer = lfs_pointer(sha, size)
                files[value["path"]] = FileEntry(
                    size=size, oid=git_blob_sha1(pointer), lfs_sha256=sha, pointer_size=len(pointer)
                )
            elif key == "deletedFile":
                if value["path"] not in files:
                    return _error(404, f"A file with this name doesn't exist: {value['path']}", "EntryNotFound")
                files.pop(value["path"])
            elif key == "deletedFolder":
                prefix = value["path"].rstrip("/") + "/"
                for path in [p for p in files if p.startswith(prefix)]:
                    files.pop(path)
        account = self._account(request)
        new = self.store.commit(repo_obj, head, header.get("summary", ""), header.get("description", ""), files)
        answer: dict[str, Any] = {
            "success": True,
            "commitOid": new.oid,
            "commitUrl": f"{self.base_url}/{repo}/commit/{new.oid}",
        }
        with self.store.lock:
            if create_pr:
                disc = self.store.open_pr(repo_obj, new.oid, title=new.title, author=account.name, base=rev)
                answer["pullRequestUrl"] = f"{self.base_url}/{repo}/discussions/{disc.num}"
            else:
                match = re.fullmatch(r"refs/pr/(\d+)", rev)
                if match:
                    repo_obj.pr_refs[int(match.group(1))] = new.oid
                else:
                    repo_obj.branches[rev.removeprefix("refs/heads/")] = new.oid
            self.store.save()
        return JSONResponse(answer)

    async def refs(self, request: Request, record, repo: str) -> Response:
        repo_obj, error = self._readable(request, repo)
        if error:
            return error
        body: dict[str, Any] = {
            "branches": [
                {"name": n, "ref": f"refs/heads/{n}", "targetCommit": c} for n, c in repo_obj.branches.items()
            ],
            "tags": [],
            "converts": [],
        }
        if request.query_params.get("include_prs") in ("1", "true", "True"):
            body["pullRequests"] = [
                {"name": str(n), "ref": f"refs/pr/{n}", "targetCommit": c} for n, c in repo_obj.pr_refs.items()
            ]
        return JSONResponse(body)

    async def create_branch(self, request: Request, record, repo: str, branch: str) -> Response:
        repo_obj, error = self._writable(request, repo)
        if error:
            return error
        if branch in repo_obj.branches:
            return _error(409, f"Reference already exists: refs/heads/{branch}")
        try:
            body = await request.json()
        except Exception:  # noqa: BLE001 - empty body means "from main"
            body = {}
        start, error = self._revision(repo_obj, (body or {}).get("startingPoint") or "main")
        if error:
            return error
        with self.store.lock:
            repo_obj.branches[branch] = start
            self.store.save()
        return JSONResponse({})

    def _entry_json(self, path: str, entry: FileEntry) -> dict[str, Any]:
        item: dict[str, Any] = {"type": "file", "path": path, "size": entry.size, "oid": entry.oid}
        if entry.lfs_sha256:
            sha = self.tree_overrides.get(path, entry.lfs_sha256)
            item["lfs"] = {"oid": sha, "size": entry.size, "pointerSize": entry.pointer_size}
        return item

    async def tree(self, request: Request, record, repo: str, rev: str, path: str = "") -> Response:
        repo_obj, error = self._readable(request, repo)
        if error:
            return error
        oid, error = self._revision(repo_obj, rev)
        if error:
            return error
        recursive = request.query_params.get("recursive") in ("1", "true", "True")
        prefix = path.strip("/") + "/" if path.strip("/") else ""
        files = repo_obj.commits[oid].files
        out, folders = [], set()
        for file_path, entry in sorted(files.items()):
            if not file_path.startswith(prefix):
                continue
            rest = file_path[len(prefix) :]
            parts = rest.split("/")
            for depth in range(1, len(parts)):
                folder = prefix + "/".join(parts[:depth])
                if (recursive or depth == 1) and folder not in folders:
                    folders.add(folder)
                    out.append({"type": "directory", "path": folder, "oid": hashlib.sha1(folder.encode()).hexdigest()})
            if recursive or len(parts) == 1:
                out.append(self._entry_json(file_path, entry))
        if prefix and not out:
            return _error(404, f"{path} does not exist on {rev}", "EntryNotFound")
        return JSONResponse(out)

    async def paths_info(self, request: Request, record, repo: str, rev: str) -> Response:
        repo_obj, error = self._readable(request, repo)
        if error:
            return error
        oid, error = self._revision(repo_obj, rev)
        if error:
            return error
        form = await request.form()
        files = repo_obj.commits[oid].files
        out = []
        for wanted in form.getlist("paths"):
            if wanted in files:
                out.append(self._entry_json(wanted, files[wanted]))
            elif any(p.startswith(wanted.rstrip("/") + "/") for p in files):
                out.append({"type": "directory", "path": wanted, "oid": hashlib.sha1(wanted.encode()).hexdigest()})
        return JSONResponse(out)

    def _discussion_json(self, repo: Repo, disc) -> dict[str, Any]:
        return {
            "num": disc.num,
            "title": disc.title,
            "status": disc.status,
            "author": {"name": disc.author},
            "createdAt": disc.created_at,
            "isPullRequest": disc.is_pull_request,
            "numComments": 0,
            "pinned": False,
            "repo": {"name": repo.repo_id, "type": "model"},
        }

    async def discussions(self, request: Request, record, repo: str) -> Response:
        repo_obj, error = self._readable(request, repo)
        if error:
            return error
        items = [self._discussion_json(repo_obj, d) for d in reversed(repo_obj.discussions)]
        return JSONResponse({"discussions": items, "count": len(items), "start": 0, "numClosedDiscussions": 0})

    async def discussion(self, request: Request, record, repo: str, num: str) -> Response:
        repo_obj, error = self._readable(request, repo)
        if error:
            return error
        disc = next((d for d in repo_obj.discussions if d.num == int(num)), None)
        if disc is None:
            return _error(404, f"Discussion {num} not found")
        body = self._discussion_json(repo_obj, disc)
        body.update(events=[], changes={"base": f"refs/heads/{disc.base}"}, filesWithConflicts=[])
        return JSONResponse(body)

    # ---- LFS -----------------------------------------------------------------------------------------
    def _upload_sig(self, oid: str, size: int) -> str:
        return hashlib.sha256(f"{self._sig}:{oid}:{size}".encode()).hexdigest()[:32]

    async def lfs_batch(self, request: Request, record, repo: str) -> Response:
        repo_obj, error = self._writable(request, repo)
        if error:
            return error
        body = await request.json()
        if body.get("operation") != "upload":
            return _error(400, "only the upload operation is supported")
        objects = []
        for obj in body.get("objects", []):
            oid, size = obj["oid"], int(obj["size"])
            item: dict[str, Any] = {"oid": oid, "size": size}
            if not self.store.has_lfs(oid, size):
                sig = self._upload_sig(oid, size)
                item["actions"] = {
                    "upload": {"href": f"{self.base_url}/lfs-upload/{oid}?size={size}&sig={sig}"},
                    "verify": {"href": f"{self.base_url}/{repo}.git/info/lfs/objects/verify"},
                }
            objects.append(item)
        # never advertise xet: the client must use the basic LFS transfer
        return JSONResponse({"transfer": "basic", "objects": objects, "hash_algo": "sha256"})

    async def lfs_upload(self, request: Request, record, oid: str) -> Response:
        query = parse_qs(request.url.query)
        size = int(query.get("size", ["-1"])[0])
        if query.get("sig", [""])[0] != self._upload_sig(oid, size):
            return _error(403, "bad upload signature")
        digest = hashlib.sha256()
        tmp = self.store.root / "tmp" / f"{oid}.{secrets.token_hex(4)}"
        received = 0
        with open(tmp, "wb") as handle:
            async for chunk in request.stream():
                digest.update(chunk)
                handle.write(chunk)
                received += len(chunk)
        record.body_bytes = received
        if received != size or digest.hexdigest() != oid:
            tmp.unlink()
            return _error(400, f"uploaded content does not match oid {oid} / size {size}")
        os.replace(tmp, self.store.lfs_path(oid))
        return Response(status_code=200, headers={"ETag": f'"{oid}"'})

    async def lfs_verify(self, request: Request, record, repo: str) -> Response:
        _, error = self._writable(request, repo)
        if error:
            return error
        body = await request.json()
        if not self.store.has_lfs(body["oid"], int(body["size"])):
            return _error(404, f"object {body['oid']} not found")
        return JSONResponse({"success": True})

    # ---- downloads -----------------------------------------------------------------------------------
    def _file_response(self, request: Request, path: Path, headers: dict[str, str]) -> Response:
        size = path.stat().st_size
        headers = {**headers, "Accept-Ranges": "bytes"}
        span = _parse_range(request.headers.get("range"), size)
        if span is not None:
            start, end = span
            if start >= size or start > end:
                return Response(status_code=416, headers={"Content-Range": f"bytes */{size}"})
            headers["Content-Range"] = f"bytes {start}-{end}/{size}"
            status, length = 206, end - start + 1
        else:
            start, status, length = 0, 200, size
        headers["Content-Length"] = str(length)
        if request.method == "HEAD":
            return Response(status_code=status, headers=headers)
        with open(path, "rb") as handle:
            handle.seek(start)
            data = handle.read(length)
        response = Response(content=data, status_code=status, headers=headers, media_type="application/octet-stream")
        return response

    async def resolve(self, request: Request, record, repo: str, rev: str, path: str) -> Response:
        repo_obj, error = self._readable(request, repo)
        if error:
            return error
        oid, error = self._revision(repo_obj, rev)
        if error:
            return error
        entry = repo_obj.commits[oid].files.get(path)
        if entry is None:
            return _error(404, f"Entry not found: {path}", "EntryNotFound", headers={"X-Repo-Commit": oid})
        if entry.lfs_sha256:
            location = f"{self.cdn_url}/cdn/lfs/{entry.lfs_sha256}?sig={self._upload_sig(entry.lfs_sha256, entry.size)}"
            return Response(
                status_code=302,
                headers={
                    "Location": location,
                    "X-Repo-Commit": oid,
                    "ETag": f'"{entry.oid}"',
                    "X-Linked-Etag": f'"{entry.lfs_sha256}"',
                    "X-Linked-Size": str(entry.size),
                    "Content-Length": "0",
                },
            )
        return self._file_response(
            request, self.store.blob_path(entry.oid), {"ETag": f'"{entry.oid}"', "X-Repo-Commit": oid}
        )

    async def cdn(self, request: Request, record, oid: str) -> Response:
        if request.headers.get("authorization"):
            # a CDN must never receive the Hub token: the client is expected to drop it on cross-host redirects
            return _error(400, "authorization header sent to the CDN")
        path = self.store.lfs_path(oid)
        if not path.is_file():
            return _error(404, "no such object")
        return self._file_response(request, path, {"ETag": f'"{oid}"'})


def validate_card_metadata(content: str) -> list[str]:
    """The metadata rules this server enforces on README.md (a subset of the Hub's validator)."""
    import yaml  # PyYAML ships with huggingface_hub's dependencies

    match = re.match(r"^\s*---\r?\n(.*?)\r?\n---\s*(\r?\n|$)", content, re.DOTALL)
    if not match:
        return []
    try:
        meta = yaml.safe_load(match.group(1)) or {}
    except yaml.YAMLError as exc:
        return [f"YAML front matter does not parse: {exc}"]
    if not isinstance(meta, dict):
        return ["YAML front matter must be a mapping"]
    errors = []
    relation = meta.get("base_model_relation")
    if relation is not None:
        if relation not in ALLOWED_RELATIONS:
            errors.append(f'"base_model_relation" must be one of {ALLOWED_RELATIONS}')
        if not meta.get("base_model"):
            errors.append('"base_model_relation" requires "base_model"')
    base = meta.get("base_model")
    bases = base if isinstance(base, list) else [base] if base else []
    for item in bases:
        if not isinstance(item, str) or not re.fullmatch(r"[\w.-]+/[\w.-]+", item):
            errors.append(f'"base_model" must be a repo id, got {item!r}')
    if "tags" in meta and not (isinstance(meta["tags"], list) and all(isinstance(t, str) for t in meta["tags"])):
        errors.append('"tags" must be a list of strings')
    if "pipeline_tag" in meta and meta["pipeline_tag"] not in PIPELINE_TAGS:
        errors.append(f'"pipeline_tag" {meta["pipeline_tag"]!r} is not a known pipeline')
    if "license" in meta and not isinstance(meta["license"], str):
        errors.append('"license" must be a string')
    for index_entry in meta.get("model-index", []) or []:
        if not isinstance(index_entry, dict) or "name" not in index_entry or "results" not in index_entry:
            errors.append('"model-index" entries need "name" and "results"')
            continue
        for result in index_entry["results"]:
            if not {"task", "dataset", "metrics"} <= set(result):
                errors.append('"model-index" results need "task", "dataset" and "metrics"')
            for metric in result.get("metrics", []):
                if not {"type", "value"} <= set(metric):
                    errors.append('"model-index" metrics need "type" and "value"')
    return errors


class HubServer:
    """Runs `HubApp` under uvicorn on 127.0.0.1 (random port) in a background thread."""

    def __init__(self, root: Path, accounts: dict[str, Account]):
        self.store = Store(Path(root))
        self.app = HubApp(self.store, accounts)
        self._server = None
        self._thread: threading.Thread | None = None
        self.url = ""

    @property
    def log(self) -> list[RequestRecord]:
        return self.app.log

    def start(self) -> HubServer:
        import uvicorn

        config = uvicorn.Config(
            self.app, host="127.0.0.1", port=0, log_level="critical", access_log=False, lifespan="off", ws="none"
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name="hubserver", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 20
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("test Hub server did not start")
            time.sleep(0.01)
        port = self._server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        self.app.base_url = self.url
        self.app.cdn_url = f"http://localhost:{port}"
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)

    # ---- test helpers --------------------------------------------------------------------------------
    def reset(self) -> None:
        """Forget requests and faults (repos persist unless `wipe`)."""
        self.app.log.clear()
        self.app.faults.clear()
        self.app.tree_overrides.clear()

    def wipe(self) -> None:
        with self.store.lock:
            self.store.repos.clear()
            for path in (self.store.root / "lfs").iterdir():
                path.unlink()
        self.reset()

    def inject(
        self, action: str, *, path: str = ".*", method: str | None = None, nth: int = 1, times: int = 1
    ) -> Fault:
        fault = Fault(action=action, path=path, method=method, nth=nth, times=times)
        self.app.faults.append(fault)
        return fault

    def requests(self, method: str | None = None, path: str = ".*") -> list[RequestRecord]:
        return [r for r in self.app.log if (method is None or r.method == method) and re.search(path, r.path)]

    def lfs_objects(self) -> set[str]:
        return {p.name for p in (self.store.root / "lfs").iterdir()}
