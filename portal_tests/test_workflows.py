"""Tests of the GitHub Actions workflows and the Make targets they call.

The workflow files are validated against the GitHub workflow schema that check-jsonschema
ships, then checked for what the portal relies on. The git targets run in temporary
repositories. The slow test runs the materialize workflow's steps in a clone of this
repository, with one source served by a local HTTP server.
"""

from __future__ import annotations

import http.server
import os
import re
import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from portal.datasets import load_datasets
from portal.definitions import build_definitions
from portal.schedules import CRONS
from portal.settings import PROJECT_ROOT, source_url_variable

WORKFLOWS = PROJECT_ROOT / ".github" / "workflows"
MAKEFILE = PROJECT_ROOT / "Makefile"
VENV_BIN = PROJECT_ROOT / ".venv" / "bin"
BOT = "github-actions[bot]"


def load_workflow(name: str) -> dict:
    workflow = yaml.safe_load((WORKFLOWS / name).read_text(encoding="utf-8"))
    # YAML 1.1 reads the key `on` as the boolean True.
    workflow["on"] = workflow.pop(True, workflow.get("on"))
    return workflow


def steps_of(workflow: dict) -> list[dict]:
    return [step for job in workflow["jobs"].values() for step in job["steps"]]


def step_named(workflow: dict, name: str) -> dict:
    matches = [step for step in steps_of(workflow) if step.get("name") == name]
    assert len(matches) == 1, f"expected one step named {name!r}, found {len(matches)}"
    return matches[0]


def action_step(workflow: dict, action: str) -> dict:
    matches = [step for step in steps_of(workflow) if step.get("uses", "").startswith(action + "@")]
    assert len(matches) == 1, f"expected one step using {action}, found {len(matches)}"
    return matches[0]


def make_targets() -> set[str]:
    return set(re.findall(r"^([a-z][a-z-]*):", MAKEFILE.read_text(encoding="utf-8"), re.M))


def git(repo: Path, *args: str, env: dict[str, str] | None = None) -> str:
    completed = subprocess.run(
        ["git", "-C", str(repo), *args],
        capture_output=True,
        text=True,
        env=env or git_env(),
        check=True,
    )
    return completed.stdout.strip()


def git_env() -> dict[str, str]:
    """Return the environment with the bot identity that the materialize workflow sets."""
    email = "41898282+github-actions[bot]@users.noreply.github.com"
    return {
        **os.environ,
        "GIT_AUTHOR_NAME": BOT,
        "GIT_AUTHOR_EMAIL": email,
        "GIT_COMMITTER_NAME": BOT,
        "GIT_COMMITTER_EMAIL": email,
        "GIT_CONFIG_GLOBAL": os.devnull,
    }


def run_make(repo: Path, *targets: str, env: dict[str, str] | None = None, timeout: float = 60):
    """Run this repository's Makefile with `repo` as its working directory."""
    return subprocess.run(
        ["make", "--no-print-directory", "-f", str(MAKEFILE), "-C", str(repo), *targets],
        capture_output=True,
        text=True,
        env=env or git_env(),
        timeout=timeout,
    )


def test_workflows_match_schema():
    files = sorted(WORKFLOWS.glob("*.yml"))
    completed = subprocess.run(
        [VENV_BIN / "check-jsonschema", "--builtin-schema", "vendor.github-workflows", *files],
        capture_output=True,
        text=True,
    )
    assert len(files) == 2
    assert completed.returncode == 0, completed.stdout + completed.stderr


def test_workflows_call_make_only():
    targets = make_targets()
    for name in ("test.yml", "materialize.yml"):
        for step in steps_of(load_workflow(name)):
            if "run" not in step:
                continue
            command = step["run"].strip()
            assert command.startswith("make "), f"{name}: step runs {command!r}, not a Make target"
            for word in command.split()[1:]:
                if "=" not in word:
                    assert word in targets, f"{name}: make {word} is not in the Makefile"


def test_test_workflow_triggers():
    workflow = load_workflow("test.yml")
    commands = [step["run"] for step in steps_of(workflow) if "run" in step]
    assert "push" in workflow["on"]
    assert "pull_request" in workflow["on"]
    assert workflow["permissions"] == {"contents": "read"}
    assert commands == ["make lint", "make test"]


def test_materialize_crons_match_schedules():
    workflow = load_workflow("materialize.yml")
    crons = [entry["cron"] for entry in workflow["on"]["schedule"]]
    job_rule = workflow["jobs"]["materialize"]["env"]["JOB"]
    assert sorted(crons) == sorted(CRONS.values())
    assert f"github.event.schedule == '{CRONS['hourly']}' && 'refresh_hourly'" in job_rule


def test_materialize_dispatch_jobs_exist():
    workflow = load_workflow("materialize.yml")
    dispatch = workflow["on"]["workflow_dispatch"]["inputs"]["job"]
    repository = build_definitions().get_repository_def()
    job_names = {job.name for job in repository.get_all_jobs()}
    assert dispatch["default"] == "materialize_all"
    assert set(dispatch["options"]) <= job_names


def test_materialize_permissions_and_concurrency():
    workflow = load_workflow("materialize.yml")
    assert workflow["permissions"] == {"contents": "write"}
    assert workflow["concurrency"]["group"] == "materialize"
    assert workflow["concurrency"]["cancel-in-progress"] is False


def test_materialize_sets_up_uv_cache():
    step = action_step(load_workflow("materialize.yml"), "astral-sh/setup-uv")
    assert step["with"]["enable-cache"] is True
    assert step["with"]["cache-dependency-glob"] == "uv.lock"


def test_materialize_passes_token_as_env():
    workflow = load_workflow("materialize.yml")
    run = step_named(workflow, "Materialize")
    report = step_named(workflow, "Say where releases go")
    assert run["run"] == 'make run JOB="$JOB"'
    assert run["env"]["HF_TOKEN"] == "${{ secrets.HF_TOKEN }}"
    assert report["env"]["HF_TOKEN"] == "${{ secrets.HF_TOKEN }}"
    assert report["run"] == "make publish-destination"
    assert "if" not in run


def test_materialize_commits_as_bot():
    step = step_named(load_workflow("materialize.yml"), "Commit and push changed snapshots")
    assert step["run"] == "make commit-snapshots push-snapshots"
    assert step["env"]["GIT_AUTHOR_NAME"] == BOT
    assert step["env"]["GIT_COMMITTER_NAME"] == BOT


def test_materialize_uploads_artifacts():
    step = action_step(load_workflow("materialize.yml"), "actions/upload-artifact")
    paths = step["with"]["path"].split()
    assert paths == ["data/warehouse.duckdb", "data/publish/"]
    assert step["if"] == "${{ !cancelled() }}"


def test_materialize_keeps_state_between_runs():
    workflow = load_workflow("materialize.yml")
    restore = action_step(workflow, "actions/cache/restore")
    save = action_step(workflow, "actions/cache/save")
    names = [step.get("uses", step.get("name")) for step in steps_of(workflow)]
    state = ["data/warehouse.duckdb", "data/publish/", ".dagster/"]

    assert restore["with"]["path"].split() == state
    assert save["with"]["path"].split() == state
    assert restore["with"]["restore-keys"] == "portal-state-"
    assert save["with"]["key"] == restore["with"]["key"]
    assert names.index(restore["uses"]) < names.index("Materialize") < names.index(save["uses"])
    assert save["if"] == "${{ !cancelled() }}"


@pytest.mark.parametrize(
    ("token", "expected"), [("", "HF_TOKEN is not set"), ("hf_example", "HF_TOKEN is set")]
)
def test_publish_destination(tmp_path: Path, token: str, expected: str):
    completed = run_make(tmp_path, "publish-destination", env={**os.environ, "HF_TOKEN": token})
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.startswith(expected)


@pytest.fixture
def snapshot_repo(tmp_path: Path) -> Path:
    """A git repository with one committed snapshot and one other file."""
    repo = tmp_path / "portal"
    (repo / "data" / "snapshots" / "tides").mkdir(parents=True)
    (repo / "data" / "snapshots" / "tides" / "tides.csv").write_text("day,level\n1,3\n")
    (repo / "notes.txt").write_text("first\n")
    git(repo, "init", "--quiet", "--initial-branch=main")
    git(repo, "add", ".")
    git(repo, "commit", "--quiet", "-m", "Start")
    return repo


def test_commit_snapshots_unchanged(snapshot_repo: Path):
    (snapshot_repo / "notes.txt").write_text("edited\n")
    completed = run_make(snapshot_repo, "commit-snapshots")
    assert completed.returncode == 0, completed.stderr
    assert "nothing to commit" in completed.stdout
    assert git(snapshot_repo, "rev-list", "--count", "HEAD") == "1"


def test_commit_snapshots_changed(snapshot_repo: Path):
    folder = snapshot_repo / "data" / "snapshots"
    (folder / "tides" / "tides.csv").write_text("day,level\n1,3\n2,4\n")
    (folder / "winds").mkdir()
    (folder / "winds" / "winds.json").write_text("[]\n")
    (folder / "winds" / ".winds.json.partial").write_text("[")
    (snapshot_repo / "notes.txt").write_text("edited\n")

    completed = run_make(snapshot_repo, "commit-snapshots")
    committed = git(snapshot_repo, "show", "--name-only", "--format=", "HEAD").splitlines()
    subject = git(snapshot_repo, "log", "-1", "--format=%s")
    author = git(snapshot_repo, "log", "-1", "--format=%an")
    assert completed.returncode == 0, completed.stderr
    assert sorted(committed) == [
        "data/snapshots/tides/tides.csv",
        "data/snapshots/winds/winds.json",
    ]
    assert subject == "Update snapshots of tides winds"
    assert author == BOT
    assert git(snapshot_repo, "status", "--porcelain", "notes.txt") == "M notes.txt"


def test_push_snapshots_rebases(snapshot_repo: Path, tmp_path: Path):
    remote = tmp_path / "remote.git"
    git(tmp_path, "clone", "--quiet", "--bare", str(snapshot_repo), str(remote))
    git(snapshot_repo, "remote", "add", "origin", str(remote))
    other = tmp_path / "other"
    git(tmp_path, "clone", "--quiet", str(remote), str(other))
    (other / "notes.txt").write_text("pushed meanwhile\n")
    git(other, "commit", "--quiet", "-am", "Edit notes")
    git(other, "push", "--quiet", "origin", "main")

    (snapshot_repo / "data" / "snapshots" / "tides" / "tides.csv").write_text("day,level\n")
    completed = run_make(snapshot_repo, "commit-snapshots", "push-snapshots")
    subjects = git(remote, "log", "--format=%s", "main").splitlines()
    assert completed.returncode == 0, completed.stderr
    assert subjects == ["Update snapshots of tides", "Edit notes", "Start"]


def test_push_snapshots_nothing(snapshot_repo: Path, tmp_path: Path):
    remote = tmp_path / "remote.git"
    git(tmp_path, "clone", "--quiet", "--bare", str(snapshot_repo), str(remote))
    git(snapshot_repo, "remote", "add", "origin", str(remote))
    completed = run_make(snapshot_repo, "push-snapshots")
    assert completed.returncode == 0, completed.stderr
    assert "No local commit to push" in completed.stdout


class ChangedSourceHandler(http.server.BaseHTTPRequestHandler):
    """Serves `body` at `/<served_path>` and 404 for every other path."""

    served_path = ""
    body = b""

    def do_GET(self) -> None:  # noqa: N802 (the name http.server dispatches to)
        if self.path != "/" + self.served_path:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, format: str, *args) -> None:
        pass


@pytest.fixture
def source_server() -> Iterator[tuple[str, type[ChangedSourceHandler]]]:
    """A local HTTP server; set the handler's `served_path` and `body` before the request."""
    handler = type("Handler", (ChangedSourceHandler,), {})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}", handler
    server.shutdown()
    server.server_close()


def clone_working_tree(target: Path) -> None:
    """Clone this repository into `target` and commit its uncommitted changes there too, so
    the clone contains the files as they are on disk."""
    git(target.parent, "clone", "--quiet", "--no-hardlinks", str(PROJECT_ROOT), str(target))
    listed = git(PROJECT_ROOT, "ls-files", "--modified", "--others", "--exclude-standard")
    deleted = set(git(PROJECT_ROOT, "ls-files", "--deleted").splitlines())
    for name in listed.splitlines():
        if name in deleted:
            (target / name).unlink(missing_ok=True)
        elif (PROJECT_ROOT / name).is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(PROJECT_ROOT / name, target / name)
    git(target, "add", "--all")
    if git(target, "status", "--porcelain"):
        git(target, "commit", "--quiet", "-m", "Copy uncommitted changes")


@pytest.mark.slow
def test_materialize_steps_in_clone(tmp_path: Path, source_server):
    clone = tmp_path / "portal"
    clone_working_tree(clone)
    remote = tmp_path / "remote.git"
    git(tmp_path, "clone", "--quiet", "--bare", str(clone), str(remote))
    git(clone, "remote", "set-url", "origin", str(remote))
    branch = git(clone, "rev-parse", "--abbrev-ref", "HEAD")

    # The server returns one source's snapshot minus its last row, and 404 for every other
    # source, so those fall back to their committed snapshots and stay unchanged.
    base_url, handler = source_server
    snapshot = clone / "data" / "snapshots" / "global_temperature" / "global_temperature.csv"
    lines = snapshot.read_bytes().splitlines(keepends=True)
    handler.served_path = "global_temperature.csv"
    handler.body = b"".join(lines[:-1])
    sources = {source.name for dataset in load_datasets() for source in dataset.sources}

    env = {
        name: value
        for name, value in git_env().items()
        if not name.startswith(("PORTAL_", "HF_", "DAGSTER_", "VIRTUAL_ENV"))
    }
    env |= {source_url_variable(name): f"{base_url}/{name}.missing" for name in sources}
    env |= {
        source_url_variable("global_temperature"): f"{base_url}/global_temperature.csv",
        "PORTAL_FETCH_TIMEOUT": "5",
        "UV_OFFLINE": "1",
    }

    destination = run_make(clone, "publish-destination", env=env)
    run = run_make(clone, "run", env=env, timeout=600)
    commit = run_make(clone, "commit-snapshots", "push-snapshots", env=env, timeout=120)
    changed = git(remote, "show", "--name-only", "--format=", branch).splitlines()
    subject = git(remote, "log", "-1", "--format=%s", branch)
    assert destination.stdout.startswith("HF_TOKEN is not set"), destination.stdout
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "HF_TOKEN is not set" in run.stdout + run.stderr
    assert (clone / "data" / "publish" / "global_temperature").is_dir()
    assert commit.returncode == 0, commit.stdout + commit.stderr
    assert subject == "Update snapshots of global_temperature"
    assert "data/snapshots/global_temperature/global_temperature.csv" in changed
    assert "data/snapshots/global_temperature/origin.json" in changed
    assert all(path.startswith("data/snapshots/global_temperature/") for path in changed), changed
    assert git(clone, "status", "--porcelain", "data/snapshots") == ""

    again = run_make(clone, "commit-snapshots", env=env)
    assert again.returncode == 0, again.stderr
    assert "nothing to commit" in again.stdout
    assert git(remote, "log", "-1", "--format=%s", branch) == subject


def test_make_help_lists_targets(tmp_path: Path):
    completed = run_make(tmp_path, "help")
    listed = set(re.findall(r"^  make (\S+)", completed.stdout, re.M))
    assert completed.returncode == 0, completed.stderr
    assert listed == make_targets()
