"""A small Hugging Face Hub stand-in for the tests: the HTTP endpoints huggingface_hub calls to create a repo, commit
files, and read them back (`from_pretrained`, `snapshot_download`, `ModelCard.load`), served on 127.0.0.1 only.
Model repos and Spaces (`repo_type="space"`, kept under the key `spaces/<id>`) answer alike.

Repos live in memory as a list of commits per repo (branch `main` only); file content is sent inline ("regular"
upload mode), so no LFS or Xet endpoints are needed. Knobs the tests turn: `required_token` (requests without
`Authorization: Bearer <token>` are refused, as the real Hub refuses writes), `fail_commits` (commits answer 500).
"""

import base64
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Dict, List, Optional
from urllib.parse import parse_qs, unquote, urlparse

DEFAULT_NAMESPACE = "diffkit-tester"


@dataclass
class Commit:
    oid: str
    summary: str
    files: Dict[str, bytes]


@dataclass
class Repo:
    private: bool
    sdk: Optional[str] = None  # a Space's `sdk` ("gradio", ...), as given when it was created
    commits: List[Commit] = field(default_factory=list)

    def find_commit(self, revision: str) -> Optional[Commit]:
        if revision == "main":
            return self.commits[-1]
        return next((c for c in self.commits if c.oid == revision), None)


class HubServer:
    """`with HubServer() as hub:` serves on `hub.endpoint` (an ephemeral port) until the block ends."""

    def __init__(self, required_token: Optional[str] = None):
        self.required_token = required_token
        self.fail_commits = False
        self.repos: Dict[str, Repo] = {}
        self.requests: List[str] = []
        self.lock = threading.Lock()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(self))
        self.endpoint = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()

    def files(self, repo_id: str, revision: str = "main") -> Dict[str, bytes]:
        return self.repos[repo_id].find_commit(revision).files


def _make_handler(hub: HubServer):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):  # keep pytest output clean; hub.requests records every call
            pass

        # -- helpers -------------------------------------------------------------------------------------
        def send(self, status, body=b"", headers=None, content_type="application/json"):
            if not isinstance(body, bytes):
                body = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def error(self, status, code, message):
            self.send(status, {"error": message}, headers={"X-Error-Code": code, "X-Error-Message": message})

        def body(self) -> bytes:
            return self.rfile.read(int(self.headers.get("Content-Length", 0)))

        def authorised(self) -> bool:
            return hub.required_token is None or self.headers.get("Authorization") == f"Bearer {hub.required_token}"

        def readable_repo(self, repo_id) -> Optional[Repo]:
            """The repo, or None after answering as the Hub does for a missing or hidden one."""
            repo = hub.repos.get(repo_id)
            if repo is None or (repo.private and not self.authorised()):
                self.error(401, "RepoNotFound", "Repository not found")
                return None
            return repo

        def readable_commit(self, repo_id, revision) -> Optional[Commit]:
            repo = self.readable_repo(repo_id)
            if repo is None:
                return None
            commit = repo.find_commit(revision)
            if commit is None:
                self.error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
            return commit

        # -- routes --------------------------------------------------------------------------------------
        def do_HEAD(self):
            self.do_GET()

        def do_GET(self):
            path = unquote(urlparse(self.path).path)
            hub.requests.append(f"{self.command} {path}")
            if m := re.fullmatch(r"/api/(models|spaces)/([^/]+/[^/]+)(?:/revision/([^/]+))?", path):
                repo_id, revision = m.group(2), m.group(3) or "main"
                commit = self.readable_commit(_key(m.group(1), repo_id), revision)
                if commit:
                    repo = hub.repos[_key(m.group(1), repo_id)]
                    siblings = [{"rfilename": p} for p in sorted(commit.files)]
                    info = {"id": repo_id, "modelId": repo_id, "sha": commit.oid, "siblings": siblings}
                    if repo.sdk:
                        info["sdk"] = repo.sdk
                    self.send(200, {**info, "private": repo.private, "tags": [], "downloads": 0})
            elif m := re.fullmatch(r"/api/(models|spaces)/([^/]+/[^/]+)/tree/([^/]+)(?:/(.*))?", path):
                commit = self.readable_commit(_key(m.group(1), m.group(2)), m.group(3))
                if commit:
                    prefix = (m.group(4) or "").strip("/")
                    # huggingface_hub < 1.0 sends "True", later releases "true"
                    recursive = parse_qs(urlparse(self.path).query).get("recursive", ["false"])[0].lower() == "true"
                    self.send(200, _tree(commit.files, prefix, recursive))
            elif m := re.fullmatch(r"/(spaces/)?([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path):
                commit = self.readable_commit((m.group(1) or "") + m.group(2), m.group(3))
                if commit is None:
                    return
                content = commit.files.get(m.group(4))
                if content is None:
                    self.error(404, "EntryNotFound", f"{m.group(4)} does not exist on {m.group(3)}")
                    return
                headers = {"X-Repo-Commit": commit.oid, "ETag": f'"{_git_blob_oid(content)}"'}
                self.send(200, content, headers=headers, content_type="application/octet-stream")
            else:
                self.error(404, "NotFound", f"no route for GET {path}")

        def do_POST(self):
            path = unquote(urlparse(self.path).path)
            hub.requests.append(f"POST {path}")
            body = self.body()
            if path == "/api/validate-yaml":
                self.send(200, {"errors": [], "warnings": []})
                return
            if not self.authorised():
                self.error(401, "Unauthorized", "Invalid credentials in Authorization header")
                return
            if path == "/api/repos/create":
                request = json.loads(body)
                repo_id = f"{request.get('organization') or DEFAULT_NAMESPACE}/{request['name']}"
                key = _key(request.get("type", "model") + "s", repo_id)
                url = {"url": f"{hub.endpoint}/{key}"}
                with hub.lock:
                    if key in hub.repos:
                        self.send(409, {**url, "error": "You already created this model repo"})
                        return
                    initial = Commit(_new_oid(repo_id, 0), "initial commit", {".gitattributes": b"*.bin filter=lfs\n"})
                    # huggingface_hub 2.x sends `visibility`; older clients send `private`
                    private = request.get("visibility") == "private" or bool(request.get("private"))
                    hub.repos[key] = Repo(private=private, sdk=request.get("sdk"), commits=[initial])
                self.send(200, url)
            elif m := re.fullmatch(r"/api/(models|spaces)/([^/]+/[^/]+)/preupload/([^/]+)", path):
                key = _key(m.group(1), m.group(2))
                if self.readable_commit(key, m.group(3)):
                    files = json.loads(body)["files"]
                    modes = [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]
                    self.send(200, {"files": modes, "commitOid": hub.repos[key].commits[-1].oid})
            elif m := re.fullmatch(r"/api/(models|spaces)/([^/]+/[^/]+)/paths-info/([^/]+)", path):
                commit = self.readable_commit(_key(m.group(1), m.group(2)), m.group(3))
                if commit:
                    paths = parse_qs(body.decode()).get("paths", []) or json.loads(body or b"{}").get("paths", [])
                    entries = [e for e in _tree(commit.files, "", True) if e["path"] in paths]
                    self.send(200, entries)
            elif m := re.fullmatch(r"/api/(models|spaces)/([^/]+/[^/]+)/commit/([^/]+)", path):
                self.commit(_key(m.group(1), m.group(2)), m.group(3), body)
            else:
                self.error(404, "NotFound", f"no route for POST {path}")

        def commit(self, repo_id, revision, body):
            if hub.fail_commits:
                self.error(500, "InternalError", "Internal Error (the test Hub was told to fail commits)")
                return
            with hub.lock:
                commit = self.readable_commit(repo_id, revision)
                if commit is None:
                    return
                files, summary = dict(commit.files), ""
                for line in body.decode().splitlines():
                    operation = json.loads(line)
                    key, value = operation["key"], operation["value"]
                    if key == "header":
                        summary = value.get("summary", "")
                    elif key == "file":
                        files[value["path"]] = base64.b64decode(value["content"])
                    elif key == "deletedFile":
                        files.pop(value["path"], None)
                    elif key == "deletedFolder":
                        prefix = value["path"].rstrip("/") + "/"
                        files = {p: c for p, c in files.items() if not p.startswith(prefix)}
                    else:
                        self.error(400, "BadRequest", f"operation {key!r} is not supported by the test Hub")
                        return
                repo = hub.repos[repo_id]
                new_commit = Commit(_new_oid(repo_id, len(repo.commits)), summary, files)
                repo.commits.append(new_commit)
            commit_url = f"{hub.endpoint}/{repo_id}/commit/{new_commit.oid}"
            self.send(200, {"commitUrl": commit_url, "commitOid": new_commit.oid, "pullRequestUrl": None})

    return Handler


def _key(kind: str, repo_id: str) -> str:
    """Where a repo is kept: model repos by id, Spaces as `spaces/<id>` (the path of their web pages)."""
    return f"spaces/{repo_id}" if kind == "spaces" else repo_id


def _new_oid(repo_id: str, index: int) -> str:
    return hashlib.sha1(f"{repo_id}@{index}".encode()).hexdigest()


def _git_blob_oid(content: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


def _tree(files: Dict[str, bytes], prefix: str, recursive: bool) -> List[dict]:
    """Entries under `prefix`, as the Hub's tree endpoint lists them."""
    entries, folders = [], set()
    start = f"{prefix}/" if prefix else ""
    for path, content in sorted(files.items()):
        if not path.startswith(start):
            continue
        parts = path[len(start) :].split("/")
        for depth in range(1, len(parts)):
            if recursive or depth == 1:
                folders.add(start + "/".join(parts[:depth]))
        if recursive or len(parts) == 1:
            entries.append({"type": "file", "path": path, "size": len(content), "oid": _git_blob_oid(content)})
    entries += [{"type": "directory", "path": f, "oid": _git_blob_oid(f.encode()), "size": 0} for f in sorted(folders)]
    return entries
