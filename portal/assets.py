"""Dagster assets derived from dataset declarations: raw, clean or joined, and published.

For a dataset `weather` with a source `weather`, the graph is
`raw/weather` (group raw) -> `weather` (group clean) -> `publish/weather` (group publish).
A dataset that reads other datasets lands in group `joined`.
"""

from collections.abc import Iterator

import dagster as dg
import polars as pl

from portal.changes import data_version, fetch_once, rebuild_reason, register
from portal.checks import (
    RulesFailed,
    check_specs,
    freshness_result,
    freshness_spec,
    row_count_result,
    rule_results,
)
from portal.dataset import Dataset, Source
from portal.huggingface import HuggingFacePublisher, announce_local_only
from portal.publish import (
    describe_publication,
    lineage_paths,
    publication_metadata,
    publish_release,
    read_source_records,
)
from portal.settings import Settings
from portal.warehouse import read_table

WAREHOUSE = "warehouse"


def column_schema(dataset: Dataset) -> dg.TableSchema:
    """Describe the dataset's declared columns for the UI's asset page and DuckDB comments."""
    types = dataset.schema
    columns = []
    for column in dataset.columns:
        rules = []
        if column.allowed is not None:
            rules.append(f"one of {list(column.allowed)}")
        if column.min is not None:
            rules.append(f">= {column.min}")
        if column.max is not None:
            rules.append(f"<= {column.max}")
        columns.append(
            dg.TableColumn(
                name=column.name,
                type=str(types[column.name]),
                description=column.description_with_unit,
                constraints=dg.TableColumnConstraints(
                    nullable=column.nullable, unique=column.unique, other=rules
                ),
            )
        )
    return dg.TableSchema(columns=columns)


def table_metadata(frame: pl.DataFrame) -> dict:
    """Describe a stored table in its materialization: size, a preview and nulls per column."""
    nulls = frame.null_count().row(0, named=True)
    return {
        "dagster/row_count": frame.height,
        "columns": len(frame.columns),
        "preview": preview(frame),
        "null_counts": dg.MetadataValue.md(
            "| column | nulls |\n|---|---|\n"
            + "\n".join(f"| {name} | {count} |" for name, count in nulls.items())
        ),
    }


def latest_row_count(context: dg.AssetExecutionContext, key: dg.AssetKey) -> int | None:
    event = context.instance.get_latest_materialization_event(key)
    if event is None or event.asset_materialization is None:
        return None
    value = event.asset_materialization.metadata.get("dagster/row_count")
    return value.value if value is not None else None


def preview(frame: pl.DataFrame, rows: int = 5) -> dg.MetadataValue:
    with pl.Config(
        tbl_formatting="MARKDOWN",
        tbl_hide_dataframe_shape=True,
        tbl_hide_column_data_types=True,
        tbl_rows=rows,
        tbl_cols=12,
    ):
        return dg.MetadataValue.md(str(frame.head(rows)))


def raw_asset(source: Source) -> dg.AssetsDefinition:
    """Download a source into its snapshot and its raw table.

    The data version is a digest of the file and its origin record. An unchanged download
    yields no table, so Dagster skips the steps downstream, unless one of them needs a rebuild
    anyway (see portal/changes.py).
    """
    register(source)

    @dg.asset(
        key=["raw", source.name],
        group_name="raw",
        description=source.description or f"{source.format.upper()} from {source.url}",
        io_manager_key=WAREHOUSE,
        kinds={"duckdb", source.format},
        output_required=False,
        check_specs=[freshness_spec(source)] if source.max_age else None,
        metadata={
            "url": dg.MetadataValue.url(source.url),
            "format": source.format,
            "table_comment": f"Raw {source.format} of {source.url}, values as published.",
        },
    )
    def download(context: dg.AssetExecutionContext) -> Iterator[dg.Output | dg.AssetCheckResult]:
        snapshot = fetch_once(context, source)
        retrieved = snapshot.origin.get("retrieved", "at an unknown time")
        if snapshot.used == "snapshot":
            context.log.log(
                snapshot.log_level, f"{snapshot.reason}. Using the snapshot retrieved {retrieved}."
            )
        else:
            context.log.info(
                f"source {source.name}: {snapshot.reason}, {snapshot.origin.get('url')} "
                f"({snapshot.path.stat().st_size:,} bytes)"
            )
        version = data_version(snapshot)
        metadata = {
            "used": snapshot.used,
            "reason": snapshot.reason,
            "snapshot": dg.MetadataValue.path(str(snapshot.path)),
            "retrieved": snapshot.origin.get("retrieved", "unknown"),
            "sha256": snapshot.sha256,
            **table_metadata(snapshot.frame),
        }

        reason = rebuild_reason(context, version)
        if reason is None:
            context.log.info(
                f"source {source.name}: file and origin unchanged since the last "
                "materialization; the raw table is kept and the steps downstream are skipped"
            )
            context.log_event(
                dg.AssetObservation(
                    asset_key=context.asset_key, metadata={**metadata, "unchanged": True}
                )
            )
        else:
            yield dg.Output(
                snapshot.frame,
                metadata={**metadata, "unchanged": False, "rebuilt_because": reason},
                data_version=dg.DataVersion(version),
            )
        if source.max_age:
            freshness = freshness_result(source, snapshot.origin)
            if not freshness.passed:
                context.log.warning(freshness.description)
            yield freshness

    return download


def accumulate(
    context: dg.AssetExecutionContext, dataset: Dataset, fresh: pl.DataFrame
) -> pl.DataFrame:
    """Merge this run's rows into the stored table, the newest revision of each key winning."""
    warehouse = getattr(context.resources, WAREHOUSE)
    stored = read_table(warehouse.connection, warehouse.lock_timeout, context.asset_key)
    merged = dataset.accumulate.merge(stored, fresh)
    stored_rows = 0 if stored is None else stored.height
    context.log.info(
        f"dataset {dataset.name}: merged {fresh.height:,} fresh rows into {stored_rows:,} stored "
        f"rows by {list(dataset.accumulate.key)}: {merged.height - stored_rows:,} new, "
        f"{merged.height:,} in all"
    )
    return merged


def dataset_asset(dataset: Dataset) -> dg.AssetsDefinition:
    ins = {
        name: dg.AssetIn(key=["raw", name] if isinstance(item, Source) else [name])
        for name, item in zip(dataset.input_names, dataset.inputs, strict=True)
    }

    @dg.asset(
        key=[dataset.name],
        group_name="joined" if dataset.upstream_datasets else "clean",
        description=f"{dataset.title}. {dataset.description.strip()}",
        ins=ins,
        io_manager_key=WAREHOUSE,
        kinds={"duckdb", "polars"},
        check_specs=check_specs(dataset),
        required_resource_keys={WAREHOUSE},
        metadata={
            "dagster/column_schema": column_schema(dataset),
            "table_comment": f"{dataset.title}. {dataset.description.strip()}",
        },
    )
    def build(context: dg.AssetExecutionContext, **inputs: pl.DataFrame):
        frame = dataset.conform(dataset.build(**inputs))
        context.log.info(f"dataset {dataset.name}: built {frame.height:,} rows from {list(inputs)}")
        if dataset.accumulate:
            frame = accumulate(context, dataset, frame)

        results, failures = rule_results(dataset, frame)
        previous = latest_row_count(context, dg.AssetKey([dataset.name]))
        row_count, drop_failure = row_count_result(
            previous, frame.height, Settings.from_env().max_row_drop
        )
        results.append(row_count)
        failures += [drop_failure] if drop_failure else []

        if failures:
            # Report every rule, then stop before the output is stored, so the warehouse and
            # the published release keep their last good version.
            yield from results
            raise RulesFailed(
                f"dataset {dataset.name} broke {len(failures)} rule(s); its table and release "
                "were left as they were:\n- " + "\n- ".join(failures) + "\nFix the source data, "
                f"the build function or the rule in portal/datasets/{dataset.name}.py."
            )
        yield dg.Output(frame, metadata=table_metadata(frame))
        yield from results

    return build


def publish_asset(dataset: Dataset, lookup: dict[str, Dataset]) -> dg.AssetsDefinition:
    @dg.asset(
        key=["publish", dataset.name],
        group_name="publish",
        description=(
            f"Release of {dataset.name}: zstd Parquet, dataset card and datapackage.json, in the "
            "local publish folder and, with HF_TOKEN set, in a HuggingFace dataset repository."
        ),
        ins={"table": dg.AssetIn(key=[dataset.name])},
        kinds={"parquet", "huggingface"},
    )
    def publish(
        context: dg.AssetExecutionContext, table: pl.DataFrame, huggingface: HuggingFacePublisher
    ) -> dg.MaterializeResult:
        settings = Settings.from_env()
        if not huggingface.enabled:
            announce_local_only(context.run.run_id, context.log, settings.publish_dir)
        publication = publish_release(
            dataset,
            table,
            read_source_records(settings.snapshot_dir, dataset, lookup),
            lineage_paths(dataset, lookup),
            settings.publish_dir,
            huggingface if huggingface.enabled else None,
            f"Publish {dataset.name} from Dagster run {context.run.run_id}",
            context.log,
        )
        context.log.info(f"dataset {dataset.name}: {describe_publication(publication)}")
        return dg.MaterializeResult(metadata=publication_metadata(publication, table.height))

    return publish


def build_assets(
    datasets: list[Dataset],
) -> list[dg.AssetsDefinition]:
    """Return every asset: one raw asset per distinct source, then the datasets and releases."""
    lookup = {dataset.name: dataset for dataset in datasets}
    sources: dict[str, Source] = {}
    for dataset in datasets:
        for source in dataset.sources:
            if sources.setdefault(source.name, source) != source:
                raise ValueError(f"two different sources are both named {source.name!r}")

    assets = [raw_asset(source) for source in sources.values()]
    assets += [dataset_asset(dataset) for dataset in datasets]
    assets += [publish_asset(dataset, lookup) for dataset in datasets if dataset.publish]
    return assets
