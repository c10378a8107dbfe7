"""Pushing releases to HuggingFace dataset repositories: one commit per repository per run.

`HuggingFacePublisher` is the Dagster resource behind the publish assets. It compares the
staged release with the repository's tree at its head, uploads only the files whose hash
differs (git blob sha1, or sha256 for LFS files) in one commit pinned to that head, and makes
no commit when nothing changed. The token is read from HF_TOKEN when a push starts; it is no
field of the resource, so it never reaches the run config, the metadata or a log line.
"""

from __future__ import annotations

import email.utils
import hashlib
import logging
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import huggingface_hub.constants
from huggingface_hub import CommitOperationAdd, HfApi
from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError
from huggingface_hub.hf_api import RepoFile

from portal.settings import HubSettings

# huggingface_hub 2.4 fetches a registry of agent harnesses from its import-time endpoint
# (huggingface.co unless HF_ENDPOINT was set first) while building request headers, unless
# telemetry is off. The portal sends nothing but its own calls, like its Dagster setup.
huggingface_hub.constants.HF_HUB_DISABLE_TELEMETRY = True

TOKEN_VARIABLE = "HF_TOKEN"
REPO_TYPE = "dataset"
# 412: another commit landed since the head we read; 429: rate limit or commit quota.
RETRIED_STATUSES = frozenset({412, 429, 500, 502, 503, 504})
LIBRARY_NAME = "barefoot-data-portal"


# Runs that already logged that they publish to the local folder only. NOTE: with the
# multiprocess executor each step runs in its own process, so such a run logs it once per step.
_LOCAL_ONLY_RUNS: set[str] = set()


class HubPublishError(RuntimeError):
    """A push to the Hub failed, and no commit was made by this run."""


def git_blob_sha1(data: bytes) -> str:
    """Return the id git gives a file's content, as the Hub's tree lists it for regular files."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def matches_remote(remote: RepoFile, data: bytes) -> bool:
    """Tell whether `data` is the content of the repository file `remote`."""
    if remote.lfs is not None:
        return remote.lfs.sha256 == hashlib.sha256(data).hexdigest()
    return remote.blob_id == git_blob_sha1(data)


class RemoteRelease:
    """The files of a repository at one commit, read lazily from its tree."""

    def __init__(self, api: HfApi, repo_id: str, head: str, tree: dict[str, RepoFile]):
        self.api = api
        self.repo_id = repo_id
        self.head = head
        self.tree = tree

    def holds(self, path: str, data: bytes) -> bool:
        return path in self.tree and matches_remote(self.tree[path], data)

    def read(self, path: str) -> bytes | None:
        if path not in self.tree:
            return None
        with tempfile.TemporaryDirectory(prefix="portal-hub-") as folder:
            local = self.api.hf_hub_download(
                self.repo_id, path, repo_type=REPO_TYPE, revision=self.head, local_dir=folder
            )
            return Path(local).read_bytes()


@dataclass(frozen=True)
class HubPush:
    """What a push did: the commit it made, or None when every file already matched."""

    repo_id: str
    page: str
    head: str
    commit_url: str | None
    uploaded: list[str]


Render = Callable[[RemoteRelease], dict[str, Path]]


class HuggingFacePublisher(dg.ConfigurableResource):
    """Pushes release folders to `<organisation>/<dataset>` dataset repositories on the Hub."""

    endpoint: str = "https://huggingface.co"
    organisation: str = ""
    private: bool = False
    attempts: int = 4
    retry_pause: float = 2.0
    max_pause: float = 60.0

    @classmethod
    def from_settings(cls, settings: HubSettings) -> HuggingFacePublisher:
        return cls(
            endpoint=settings.endpoint,
            organisation=settings.organisation,
            private=settings.private,
            attempts=settings.attempts,
            retry_pause=settings.retry_pause,
            max_pause=settings.max_pause,
        )

    @property
    def enabled(self) -> bool:
        """True when HF_TOKEN is set, so releases go to the Hub as well as the local folder."""
        return bool(os.environ.get(TOKEN_VARIABLE, "").strip())

    def repo_id(self, dataset_name: str) -> str:
        if not self.organisation:
            raise HubPublishError(
                f"{TOKEN_VARIABLE} is set but PORTAL_HF_ORG is empty, so the repository of "
                f"dataset {dataset_name} is unknown. Set PORTAL_HF_ORG to the user or "
                f"organisation that owns the repositories, or unset {TOKEN_VARIABLE} to publish "
                "to the local folder only."
            )
        return f"{self.organisation}/{dataset_name}"

    def page(self, repo_id: str) -> str:
        return f"{self.endpoint.rstrip('/')}/datasets/{repo_id}"

    def push(
        self, repo_id: str, render: Render, message: str, log: logging.Logger | dg.DagsterLogManager
    ) -> HubPush:
        """Commit the files that `render` stages, given the repository's current release.

        `render` runs again on every try, so a release built on a head that another commit
        has since replaced is rebuilt on the new one. Raises HubPublishError after the last
        try, or at once for a response that no retry can fix.
        """
        api = HfApi(
            endpoint=self.endpoint,
            token=os.environ[TOKEN_VARIABLE].strip(),
            library_name=LIBRARY_NAME,
        )
        for attempt in range(1, self.attempts + 1):
            try:
                return self.push_once(api, repo_id, render, message)
            except HfHubHTTPError as error:
                status = error.response.status_code if error.response is not None else None
                answer = describe_answer(error)
                pause = self.pause_before_retry(error, attempt)
                if status not in RETRIED_STATUSES or attempt == self.attempts or pause is None:
                    raise HubPublishError(
                        self.failure_message(repo_id, answer, attempt, error)
                    ) from error
                log.warning(
                    f"HuggingFace repository {repo_id}: the Hub answered {answer} (try {attempt} "
                    f"of {self.attempts}); trying again in {pause:g} s"
                )
                time.sleep(pause)
        raise AssertionError("unreachable: the last try returns or raises")

    def push_once(self, api: HfApi, repo_id: str, render: Render, message: str) -> HubPush:
        head = self.head_or_create(api, repo_id)
        tree = {
            entry.path: entry
            for entry in api.list_repo_tree(
                repo_id, repo_type=REPO_TYPE, revision=head, recursive=True
            )
            if isinstance(entry, RepoFile)
        }
        remote = RemoteRelease(api, repo_id, head, tree)
        staged = render(remote)

        changed = [
            name for name, path in staged.items() if not remote.holds(name, path.read_bytes())
        ]
        if not changed:
            return HubPush(repo_id, self.page(repo_id), head, None, [])

        operations = [
            CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(staged[name]))
            for name in changed
        ]
        info = api.create_commit(
            repo_id,
            operations,
            commit_message=message,
            commit_description="Changed files: " + ", ".join(changed),
            repo_type=REPO_TYPE,
            # Pinning the parent makes the Hub respond with 412 when another commit landed after
            # the tree was read, instead of committing files compared with a stale tree.
            parent_commit=head,
        )
        return HubPush(repo_id, self.page(repo_id), info.oid, info.commit_url, changed)

    def head_or_create(self, api: HfApi, repo_id: str) -> str:
        """Return the commit id at the head of `main`, creating the repository if it is missing."""
        try:
            return api.repo_info(repo_id, repo_type=REPO_TYPE).sha
        except RepositoryNotFoundError:
            api.create_repo(repo_id, repo_type=REPO_TYPE, private=self.private, exist_ok=True)
            return api.repo_info(repo_id, repo_type=REPO_TYPE).sha

    def pause_before_retry(self, error: HfHubHTTPError, attempt: int) -> float | None:
        """Return the seconds to wait before the next try, or None when Retry-After asks for
        more than `max_pause`."""
        response = error.response
        retry_after = parse_retry_after(response.headers.get("Retry-After")) if response else None
        if retry_after is not None:
            return retry_after if retry_after <= self.max_pause else None
        return min(self.max_pause, self.retry_pause * 2 ** (attempt - 1))

    def failure_message(
        self, repo_id: str, answer: str, attempt: int, error: HfHubHTTPError
    ) -> str:
        response = error.response
        retry_after = parse_retry_after(response.headers.get("Retry-After")) if response else None
        if retry_after is not None and retry_after > self.max_pause:
            why = (
                f"it asked to wait {retry_after:g} s, longer than PORTAL_HF_MAX_PAUSE "
                f"({self.max_pause:g} s)"
            )
        else:
            why = f"after {attempt} {'try' if attempt == 1 else 'tries'}"
        return (
            f"HuggingFace repository {repo_id}: the Hub answered {answer}, {why}. No commit was "
            "made and nothing changed in the repository or in the local release. Run the job "
            "again later; for 401 or 403 check that HF_TOKEN may write to PORTAL_HF_ORG."
        )


def describe_answer(error: HfHubHTTPError) -> str:
    """Summarise a Hub error as status, reason, request and server message, without headers."""
    response = error.response
    if response is None:
        return str(error).splitlines()[0]
    request = response.request
    text = f"{response.status_code} {response.reason_phrase} to {request.method} {request.url}"
    if error.server_message:
        text += f" ({error.server_message.strip()})"
    return text


def parse_retry_after(value: str | None) -> float | None:
    """Return the seconds that a Retry-After header requests: a number or an HTTP date."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def announce_local_only(
    run_id: str, log: logging.Logger | dg.DagsterLogManager, folder: Path
) -> None:
    """Log once per run that releases stay in the local folder because HF_TOKEN is not set."""
    if run_id in _LOCAL_ONLY_RUNS:
        return
    _LOCAL_ONLY_RUNS.add(run_id)
    log.info(
        f"{TOKEN_VARIABLE} is not set: this run publishes to the local folder {folder} only. "
        f"Set {TOKEN_VARIABLE} and PORTAL_HF_ORG to push releases to HuggingFace as well."
    )
