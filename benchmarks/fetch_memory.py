"""Peak memory of streaming a large download to disk, against reading the whole body at once.

A local server (in a child process, so its memory is not counted) sends a generated CSV body
of --megabytes MB. The script downloads it with portal.fetch.download, then with a plain
`requests.get(...).content`, and prints the peak resident set size after each.

    .venv/bin/python benchmarks/fetch_memory.py --megabytes 200
"""

from __future__ import annotations

import argparse
import multiprocessing
import resource
import tempfile
import time
from pathlib import Path

import requests

from portal.dataset import Origin, Source
from portal.fetch import download
from portal.settings import Settings
from portal_tests.flaky_server import FlakyServer, Reply

PIECE = b"".join(f"station-{index:06d},{index}\n".encode() for index in range(50_000))


def serve(megabytes: int, ports: multiprocessing.Queue) -> None:
    with FlakyServer() as server:
        body = b"station,reading\n" + PIECE
        repeat = max(1, megabytes * 1_000_000 // len(body))
        server.plan("/large.csv", Reply(body, repeat=repeat))
        ports.put(server.url("/large.csv"))
        time.sleep(3600)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kilobytes on Linux


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--megabytes", type=int, default=200, help="body size in MB")
    arguments = parser.parse_args()

    ports: multiprocessing.Queue = multiprocessing.Queue()
    server = multiprocessing.Process(target=serve, args=(arguments.megabytes, ports), daemon=True)
    server.start()
    url = ports.get(timeout=30)
    source = Source(
        name="large",
        url=url,
        format="csv",
        origin=Origin("benchmark", "cc0-1.0", "CC0 1.0", "https://example.org"),
    )
    settings = Settings.from_env()
    print(f"peak RSS before any download: {peak_rss_mb():.0f} MB")

    with tempfile.TemporaryDirectory() as folder:
        target = Path(folder) / "large.csv"
        started = time.perf_counter()
        reply = download(source, url, target, settings, validators={})
        elapsed = time.perf_counter() - started
        size = target.stat().st_size / 1e6
        wire = reply.raw_bytes / 1e6
        print(
            f"streamed {size:.0f} MB ({wire:.0f} MB on the wire) in {elapsed:.1f} s "
            f"({size / elapsed:.0f} MB/s); peak RSS {peak_rss_mb():.0f} MB"
        )

    started = time.perf_counter()
    body = requests.get(url, timeout=60).content
    elapsed = time.perf_counter() - started
    print(
        f"read {len(body) / 1e6:.0f} MB into memory with requests.get().content in "
        f"{elapsed:.1f} s; peak RSS {peak_rss_mb():.0f} MB"
    )
    server.terminate()


if __name__ == "__main__":
    main()
