"""The portal's work as a plain script: parse snapshots, build tables, store them, write Parquet.

It uses the same dataset declarations and Polars build functions as the Dagster graph, but no
Dagster, no checks and no cards, so that `run_timing.py` can compare the framework's cost with
the bare data work. Usage: python benchmarks/plain_script.py DATA_DIR (with snapshots inside).
"""

import sys
from pathlib import Path

import duckdb
import polars as pl

from portal.datasets import load_datasets
from portal.formats import parse_file


def main(data_dir: Path) -> None:
    datasets = load_datasets()
    tables: dict[str, pl.DataFrame] = {}
    raw: dict[str, pl.DataFrame] = {}
    publish_dir = data_dir / "publish"

    with duckdb.connect(str(data_dir / "warehouse.duckdb")) as con:
        con.execute("CREATE SCHEMA IF NOT EXISTS raw")
        pending = list(datasets)
        while pending:
            dataset = next(item for item in pending if set(item.upstream_datasets) <= set(tables))
            pending.remove(dataset)

            inputs = {}
            for name, source in zip(dataset.input_names, dataset.inputs, strict=True):
                if isinstance(source, str):
                    inputs[name] = tables[name]
                    continue
                if name not in raw:
                    path = data_dir / "snapshots" / name / source.snapshot_name
                    raw[name] = parse_file(source, path)
                    con.register("incoming", raw[name].to_arrow())
                    con.execute(f"CREATE OR REPLACE TABLE raw.{name} AS SELECT * FROM incoming")
                inputs[name] = raw[name]

            frame = dataset.conform(dataset.build(**inputs))
            tables[dataset.name] = frame
            con.register("incoming", frame.to_arrow())
            con.execute(f"CREATE OR REPLACE TABLE main.{dataset.name} AS SELECT * FROM incoming")

            release = publish_dir / dataset.name
            release.mkdir(parents=True, exist_ok=True)
            frame.write_parquet(release / f"{dataset.name}.parquet", compression="zstd")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
