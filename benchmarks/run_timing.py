"""Time the main job against a plain script doing the same data work, and compare executors.

Each variant runs as a fresh process on a fresh copy of the committed snapshots, offline, so
that the figures include interpreter start-up and imports as `make run` does (setup excluded).
Usage: .venv/bin/python benchmarks/run_timing.py [--repeat N]
"""

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent

# `make run`'s command for the main job.
MAIN_JOB = [
    str(BIN / "dagster"),
    "job",
    "execute",
    "-m",
    "portal.definitions",
    "-j",
    "materialize_all",
]

VARIANTS = {
    "plain script (Polars + DuckDB)": ([str(BIN / "python"), "benchmarks/plain_script.py"], {}),
    "make run: dagster job execute, in_process": (MAIN_JOB, {"PORTAL_EXECUTOR": "in_process"}),
    "dagster job execute, multiprocess": (MAIN_JOB, {"PORTAL_EXECUTOR": "multiprocess"}),
}


def run_once(command: list[str], extra_env: dict[str, str]) -> float:
    with tempfile.TemporaryDirectory() as folder:
        data_dir = Path(folder) / "data"
        shutil.copytree(ROOT / "data" / "snapshots", data_dir / "snapshots")
        home = Path(folder) / "dagster_home"
        home.mkdir()
        shutil.copy(ROOT / "dagster_instance.yaml", home / "dagster.yaml")
        env = {
            **os.environ,
            "PORTAL_DATA_DIR": str(data_dir),
            "PORTAL_SNAPSHOT_DIR": str(data_dir / "snapshots"),
            "PORTAL_PUBLISH_DIR": str(data_dir / "publish"),
            "PORTAL_WAREHOUSE": str(data_dir / "warehouse.duckdb"),
            "PORTAL_OFFLINE": "1",
            "DAGSTER_HOME": str(home),
            "DAGSTER_DISABLE_TELEMETRY": "1",
            **extra_env,
        }
        arguments = command + ([str(data_dir)] if command[-1].endswith(".py") else [])
        started = time.perf_counter()
        subprocess.run(arguments, cwd=ROOT, env=env, check=True, capture_output=True)
        return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="runs per variant (default 3)")
    repeat = parser.parse_args().repeat

    medians = {}
    for name, (command, extra_env) in VARIANTS.items():
        times = [run_once(command, extra_env) for _ in range(repeat)]
        medians[name] = statistics.median(times)
        print(
            f"{name:45s} median {medians[name]:6.2f} s  "
            f"(runs: {', '.join(f'{t:.2f}' for t in times)})"
        )

    baseline = medians["plain script (Polars + DuckDB)"]
    print(f"\nratios to the plain script ({os.cpu_count()} CPUs):")
    for name, median in medians.items():
        print(f"  {name:45s} {median / baseline:5.1f}x")


if __name__ == "__main__":
    main()
