"""A stand-in of the HuggingFace Hub's HTTP API on 127.0.0.1, for the publishing tests.

It serves the calls that `huggingface_hub.HfApi` makes to create a dataset repository, read
its head and tree, download a file, validate a card's YAML header and commit files inline.
Repositories live in memory, one full file map per commit, so a test can read what a commit
changed. `fail()` makes chosen requests answer an error status, to test retries.

The YAML check applies the Hub's documented dataset card rules that the portal relies on:
a plain YAML mapping, licence ids from the Hub's list (or `other` with an id-like
`license_name` and a `license_link`), size categories from the Hub's list and `configs`
whose data files are paths. NOTE: the real Hub checks more fields than these.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

import yaml

# A subset of the licence ids on the Hub's "Licenses" documentation page.
HUB_LICENCES = {
    "apache-2.0",
    "mit",
    "bsd-2-clause",
    "bsd-3-clause",
    "cc0-1.0",
    "cc-by-2.0",
    "cc-by-3.0",
    "cc-by-4.0",
    "cc-by-sa-3.0",
    "cc-by-sa-4.0",
    "cc-by-nc-4.0",
    "cc-by-nd-4.0",
    "cc-by-nc-sa-4.0",
    "cdla-permissive-2.0",
    "etalab-2.0",
    "gpl-3.0",
    "odc-by",
    "odbl",
    "pddl",
    "unlicense",
    "unknown",
    "other",
}
SIZE_CATEGORIES = {
    "n<1K",
    "1K<n<10K",
    "10K<n<100K",
    "100K<n<1M",
    "1M<n<10M",
    "10M<n<100M",
    "100M<n<1B",
    "1B<n<10B",
    "10B<n<100B",
    "100B<n<1T",
    "n>1T",
}
LICENCE_ID = re.compile(r"^[a-z0-9][a-z0-9.-]*$")
LFS_PATTERNS = (".parquet",)
REPO_CALL = re.compile(
    r"^/api/datasets/([^/]+/[^/]+)(?:/(tree|preupload|commit|revision)/([^/]+))?"
)
RESOLVE = re.compile(r"^/datasets/([^/]+/[^/]+)/resolve/([^/]+)/(.+)$")
INITIAL_ATTRIBUTES = b"*.parquet filter=lfs diff=lfs merge=lfs -text\n"


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class Commit:
    oid: str
    summary: str
    description: str
    changed: list[str]
    files: dict[str, bytes]


@dataclass
class Repository:
    repo_id: str
    private: bool
    commits: list[Commit] = field(default_factory=list)

    @property
    def head(self) -> Commit:
        return self.commits[-1]

    def at(self, revision: str) -> Commit | None:
        if revision == "main":
            return self.head
        return next((commit for commit in self.commits if commit.oid == revision), None)


@dataclass
class Fault:
    method: str
    path: re.Pattern
    status: int
    times: int | None
    headers: dict[str, str]


def validate_card_yaml(content: str) -> list[str]:
    """Return the errors the Hub's rules find in a dataset card's YAML header."""
    match = re.match(r"^---\n(.*?)\n---\n", content, re.DOTALL)
    if not match:
        return ["the card has no YAML header between --- lines"]
    try:
        header = yaml.safe_load(match.group(1))
    except yaml.YAMLError as error:
        return [f"the YAML header is not plain YAML: {error}"]
    if not isinstance(header, dict):
        return ["the YAML header is not a mapping"]

    errors = []
    licences = header.get("license", [])
    licences = [licences] if isinstance(licences, str) else licences
    errors += [
        f"license {value!r} is not a Hub licence id"
        for value in licences
        if value not in HUB_LICENCES
    ]
    if "other" in licences:
        name = header.get("license_name")
        if not isinstance(name, str) or not LICENCE_ID.match(name):
            errors.append(f"license_name {name!r} is not an id like my-license-1.0")
        link = header.get("license_link")
        if not isinstance(link, str) or not link:
            errors.append("license_link is missing for license other")
    if not isinstance(header.get("pretty_name", ""), str):
        errors.append("pretty_name is not a string")
    tags = header.get("tags", [])
    if not isinstance(tags, list) or not all(isinstance(tag, str) for tag in tags):
        errors.append("tags is not a list of strings")
    sizes = header.get("size_categories", [])
    sizes = [sizes] if isinstance(sizes, str) else sizes
    errors += [
        f"size category {value!r} is unknown" for value in sizes if value not in SIZE_CATEGORIES
    ]
    errors += config_errors(header.get("configs", []))
    return errors


def config_errors(configs: object) -> list[str]:
    if not isinstance(configs, list):
        return ["configs is not a list"]
    errors = []
    names = [config.get("config_name") for config in configs if isinstance(config, dict)]
    if len(names) != len(configs) or not all(isinstance(name, str) for name in names):
        errors.append("every entry of configs needs a config_name")
    if len(set(names)) != len(names):
        errors.append("config_name values repeat")
    for config in configs:
        files = config.get("data_files") if isinstance(config, dict) else None
        items = [files] if isinstance(files, str) else files
        if not isinstance(items, list) or not items:
            errors.append(f"config {config!r}: data_files is missing")
            continue
        for item in items:
            path = item.get("path") if isinstance(item, dict) else item
            if not isinstance(path, str | list) or not path:
                errors.append(f"config {config!r}: data_files entry {item!r} has no path")
    return errors


class HubStandin:
    """The stand-in server: `endpoint` is its base URL, `repos` its repositories by id."""

    def __init__(self, token: str) -> None:
        self.token = token
        self.repos: dict[str, Repository] = {}
        self.requests: list[tuple[str, str]] = []
        self.authorizations: list[str] = []
        self.faults: list[Fault] = []
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self.handler_class())
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> HubStandin:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def fail(
        self,
        method: str,
        path: str,
        status: int,
        times: int | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        """Respond with `status` to requests whose path matches the regex `path`, `times` times or
        for good when `times` is None."""
        self.faults.append(Fault(method, re.compile(path), status, times, headers or {}))

    def commits(self, repo_id: str) -> list[Commit]:
        """Commits after the repository's initial one, oldest first."""
        return self.repos[repo_id].commits[1:] if repo_id in self.repos else []

    def files(self, repo_id: str) -> dict[str, bytes]:
        return dict(self.repos[repo_id].head.files)

    def count(self, method: str, pattern: str) -> int:
        return sum(1 for seen, path in self.requests if seen == method and re.search(pattern, path))

    def handler_class(self) -> type[BaseHTTPRequestHandler]:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                hub.dispatch(self, "GET")

            def do_HEAD(self) -> None:
                hub.dispatch(self, "HEAD")

            def do_POST(self) -> None:
                hub.dispatch(self, "POST")

        return Handler

    def dispatch(self, request: BaseHTTPRequestHandler, method: str) -> None:
        length = int(request.headers.get("Content-Length") or 0)
        body = request.rfile.read(length) if length else b""
        path = unquote(urlsplit(request.path).path)
        with self.lock:
            self.requests.append((method, path))
            self.authorizations.append(request.headers.get("Authorization", ""))
            fault = self.matching_fault(method, path)
            if fault is not None:
                answer = (fault.status, {"error": f"stand-in fault {fault.status}"}, fault.headers)
            elif (
                path != "/api/validate-yaml"
                and request.headers.get("Authorization") != f"Bearer {self.token}"
            ):
                answer = (401, {"error": "Invalid credentials in Authorization header"}, {})
            else:
                answer = self.route(method, path, body)
        status, payload, headers = answer
        self.send(request, method, status, payload, headers)

    def matching_fault(self, method: str, path: str) -> Fault | None:
        for fault in self.faults:
            if fault.method == method and fault.path.search(path) and fault.times != 0:
                if fault.times is not None:
                    fault.times -= 1
                return fault
        return None

    def send(
        self,
        request: BaseHTTPRequestHandler,
        method: str,
        status: int,
        payload: object,
        headers: dict[str, str],
    ) -> None:
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        request.send_response(status)
        if not isinstance(payload, bytes):
            request.send_header("Content-Type", "application/json")
        request.send_header("Content-Length", str(len(data)))
        for name, value in headers.items():
            request.send_header(name, value)
        request.end_headers()
        if method != "HEAD":
            request.wfile.write(data)

    def route(self, method: str, path: str, body: bytes) -> tuple[int, object, dict[str, str]]:
        if method == "POST" and path == "/api/repos/create":
            return self.create_repo(json.loads(body))
        if method == "POST" and path == "/api/validate-yaml":
            errors = validate_card_yaml(json.loads(body)["content"])
            status = 400 if errors else 200
            return status, {"errors": [{"message": error} for error in errors], "warnings": []}, {}

        match = REPO_CALL.match(path)
        if match:
            repo_id, action, revision = match.groups()
            return self.repo_call(method, repo_id, action, revision or "main", body)
        match = RESOLVE.match(path)
        if match and method in ("GET", "HEAD"):
            return self.resolve(*match.groups())
        return 404, {"error": f"no route for {method} {path}"}, {}

    def create_repo(self, payload: dict) -> tuple[int, object, dict[str, str]]:
        repo_id = f"{payload['organization']}/{payload['name']}"
        url = f"{self.endpoint}/datasets/{repo_id}"
        if payload.get("type") != "dataset":
            return 400, {"error": "the stand-in hosts dataset repositories only"}, {}
        if repo_id in self.repos:
            return 409, {"error": "You already created this dataset repo", "url": url}, {}
        repo = Repository(repo_id, private=payload.get("visibility") == "private")
        files = {".gitattributes": INITIAL_ATTRIBUTES}
        repo.commits.append(
            Commit(self.new_oid(repo_id, 0), "initial commit", "", list(files), files)
        )
        self.repos[repo_id] = repo
        return 200, {"url": url, "name": repo_id}, {}

    def new_oid(self, repo_id: str, index: int) -> str:
        return hashlib.sha1(f"{repo_id}:{index}".encode()).hexdigest()

    def repo_call(
        self, method: str, repo_id: str, action: str | None, revision: str, body: bytes
    ) -> tuple[int, object, dict[str, str]]:
        repo = self.repos.get(repo_id)
        if repo is None:
            return 404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"}
        commit = repo.at(revision)
        if commit is None:
            return 404, {"error": "Invalid rev id"}, {"X-Error-Code": "RevisionNotFound"}

        if method == "GET" and action in (None, "revision"):
            siblings = [{"rfilename": name} for name in sorted(commit.files)]
            info = {"id": repo_id, "sha": commit.oid, "private": repo.private, "siblings": siblings}
            return 200, info, {}
        if method == "GET" and action == "tree":
            return (
                200,
                [self.tree_entry(name, data) for name, data in sorted(commit.files.items())],
                {},
            )
        if method == "POST" and action == "preupload":
            files = json.loads(body)["files"]
            modes = [
                {"path": item["path"], "uploadMode": "regular", "shouldIgnore": False}
                for item in files
            ]
            return 200, {"files": modes}, {}
        if method == "POST" and action == "commit":
            return self.commit(repo, body)
        return 404, {"error": f"no route for {method} {action}"}, {}

    def tree_entry(self, name: str, data: bytes) -> dict:
        entry = {"type": "file", "oid": git_blob_sha1(data), "size": len(data), "path": name}
        if name.endswith(LFS_PATTERNS):
            # The Hub keeps these in LFS, so its tree gives their sha256.
            entry["lfs"] = {
                "oid": hashlib.sha256(data).hexdigest(),
                "size": len(data),
                "pointerSize": 134,
            }
        return entry

    def commit(self, repo: Repository, body: bytes) -> tuple[int, object, dict[str, str]]:
        lines = [json.loads(line) for line in body.splitlines() if line.strip()]
        header = lines[0]["value"]
        parent = header.get("parentCommit")
        if parent is not None and parent != repo.head.oid:
            return 412, {"error": "A commit has happened since. Please refresh and try again."}, {}

        files = dict(repo.head.files)
        changed = []
        for line in lines[1:]:
            if line["key"] == "file":
                value = line["value"]
                files[value["path"]] = base64.b64decode(value["content"])
                changed.append(value["path"])
            elif line["key"] == "deletedFile":
                files.pop(line["value"]["path"], None)
                changed.append(line["value"]["path"])
            else:
                return 400, {"error": f"the stand-in cannot apply {line['key']} lines"}, {}
        oid = self.new_oid(repo.repo_id, len(repo.commits))
        repo.commits.append(Commit(oid, header["summary"], header["description"], changed, files))
        url = f"{self.endpoint}/datasets/{repo.repo_id}/commit/{oid}"
        return 200, {"commitUrl": url, "commitOid": oid}, {}

    def resolve(self, repo_id: str, revision: str, name: str) -> tuple[int, object, dict[str, str]]:
        repo = self.repos.get(repo_id)
        commit = repo.at(revision) if repo else None
        if commit is None or name not in commit.files:
            return 404, {"error": "Entry not found"}, {"X-Error-Code": "EntryNotFound"}
        data = commit.files[name]
        return 200, data, {"X-Repo-Commit": commit.oid, "ETag": f'"{git_blob_sha1(data)}"'}
