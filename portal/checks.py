"""Data rules derived from a dataset's column declarations, and the Dagster checks that run them.

Each declared constraint (not null, unique, allowed values, range, and the dataset's key)
becomes one blocking asset check. A blocking `row_count` check also fails when a table loses
more than PORTAL_MAX_ROW_DROP of its rows against the last materialization. The rules run
inside the dataset's step before its table is stored, with pandera's Polars backend: when one
fails, the step stops, so neither the warehouse table nor the published release is replaced.
Raw sources also get a freshness check that warns when their data is older than the source's
declared `max_age`.
"""

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import dagster as dg
import polars as pl

from portal.dataset import Column, Dataset, Source

SAMPLE_SIZE = 5


@dataclass(frozen=True)
class Rule:
    """One declared constraint, named as its Dagster check."""

    check_name: str
    column: str | None
    description: str


class RulesFailed(ValueError):
    """A dataset broke one or more of its declared rules; its table was not stored."""


def column_checks(column: Column) -> list[tuple[str, str, str, tuple]]:
    """Return a column's value rules in order, as (check name, description, pandera check
    method, its arguments), e.g. `("value_range", "...", "in_range", (0, 10))`."""
    name = column.name
    checks = []
    if column.allowed is not None:
        allowed = list(column.allowed)
        checks.append((f"{name}_allowed", f"{name} is one of {allowed}", "isin", (allowed,)))
    if column.min is not None and column.max is not None:
        description = f"{name} is between {column.min} and {column.max}"
        checks.append((f"{name}_range", description, "in_range", (column.min, column.max)))
    elif column.min is not None:
        checks.append((f"{name}_range", f"{name} is at least {column.min}", "ge", (column.min,)))
    elif column.max is not None:
        checks.append((f"{name}_range", f"{name} is at most {column.max}", "le", (column.max,)))
    return checks


def dataset_rules(dataset: Dataset) -> list[Rule]:
    """List every rule of a dataset: column rules in declaration order, then the key."""
    rules = []
    for column in dataset.columns:
        if not column.nullable:
            rules.append(
                Rule(f"{column.name}_not_null", column.name, f"{column.name} is never null")
            )
        if column.unique:
            rules.append(Rule(f"{column.name}_unique", column.name, f"{column.name} is unique"))
        for name, description, _, _ in column_checks(column):
            rules.append(Rule(name, column.name, description))
    if key_rule_columns(dataset):
        rules.append(Rule("primary_key", None, f"({', '.join(dataset.key)}) is unique"))
    return rules


def key_rule_columns(dataset: Dataset) -> list[str] | None:
    """Return the key columns that the `primary_key` rule checks, or None when it needs none.

    A one-column key whose column is declared `unique=True` is checked by that column's rule.
    """
    key = list(dataset.key)
    if len(key) == 1 and any(column.name == key[0] and column.unique for column in dataset.columns):
        return None
    return key or None


def pandera_schema(dataset: Dataset):
    """Build the pandera schema of a dataset's rules."""
    # Imported here because pandera takes about a second to import (python -X importtime),
    # which every step process of the multiprocess executor would pay, also those that check
    # nothing.
    import pandera.polars as pa

    columns = {
        column.name: pa.Column(
            dataset.schema[column.name],
            checks=[
                getattr(pa.Check, method)(*arguments)
                for _, _, method, arguments in column_checks(column)
            ],
            nullable=column.nullable,
            unique=column.unique,
        )
        for column in dataset.columns
    }
    return pa.DataFrameSchema(columns, unique=key_rule_columns(dataset), name=dataset.name)


def rule_of_failure(dataset: Dataset, column: str, check: str, number: int | None) -> str:
    """Map one pandera failure row to the name of the rule it broke."""
    if check == "multiple_fields_uniqueness":
        return "primary_key"
    if check == "not_nullable":
        return f"{column}_not_null"
    if check == "field_uniqueness":
        return f"{column}_unique"
    declared = next(item for item in dataset.columns if item.name == column)
    return column_checks(declared)[number][0]


def evaluate(dataset: Dataset, frame: pl.DataFrame) -> dict[str, pl.DataFrame]:
    """Return the failure cases of each broken rule (empty when the frame follows every rule)."""
    import pandera.errors

    try:
        pandera_schema(dataset).validate(frame, lazy=True)
    except pandera.errors.SchemaErrors as errors:
        cases = errors.failure_cases
    else:
        return {}

    broken: dict[str, list[dict]] = {}
    for case in cases.iter_rows(named=True):
        rule = rule_of_failure(dataset, case["column"], case["check"], case["check_number"])
        broken.setdefault(rule, []).append(case)
    return {rule: pl.DataFrame(rows) for rule, rows in broken.items()}


def describe_failure(rule: Rule, cases: pl.DataFrame) -> str:
    """Describe a broken rule for a volunteer: the rule, the count, sample values and rows."""
    values = cases["failure_case"].unique(maintain_order=True).head(SAMPLE_SIZE).to_list()
    rows = cases["index"].drop_nulls().head(SAMPLE_SIZE).to_list()
    return (
        f"rule '{rule.description}' failed for {cases.height} value(s), e.g. {values} "
        f"(row numbers {rows}, counted from 0 in the built table)"
    )


def check_specs(dataset: Dataset) -> list[dg.AssetCheckSpec]:
    specs = [
        dg.AssetCheckSpec(
            rule.check_name,
            asset=dataset.name,
            blocking=True,
            description=f"Rule: {rule.description}.",
        )
        for rule in dataset_rules(dataset)
    ]
    specs.append(
        dg.AssetCheckSpec(
            "row_count",
            asset=dataset.name,
            blocking=True,
            description="The row count does not drop by more than PORTAL_MAX_ROW_DROP "
            "(a share) against the last materialization.",
        )
    )
    return specs


def rule_results(
    dataset: Dataset, frame: pl.DataFrame
) -> tuple[list[dg.AssetCheckResult], list[str]]:
    """Run every rule, returning one check result per rule and the messages of broken ones."""
    broken = evaluate(dataset, frame)
    results, messages = [], []
    for rule in dataset_rules(dataset):
        cases = broken.get(rule.check_name)
        if cases is None:
            results.append(dg.AssetCheckResult(check_name=rule.check_name, passed=True))
            continue
        message = describe_failure(rule, cases)
        messages.append(message)
        results.append(
            dg.AssetCheckResult(
                check_name=rule.check_name,
                passed=False,
                description=message,
                metadata={
                    "failed_values": cases.height,
                    "sample": dg.MetadataValue.md(sample_table(cases.head(SAMPLE_SIZE))),
                },
            )
        )
    return results, messages


def sample_table(cases: pl.DataFrame) -> str:
    lines = ["| row | value |", "|---|---|"]
    lines += [f"| {row['index']} | {row['failure_case']} |" for row in cases.iter_rows(named=True)]
    return "\n".join(lines)


def row_count_result(
    previous: int | None, current: int, max_drop: float
) -> tuple[dg.AssetCheckResult, str | None]:
    """Compare the row count with the last materialization's, failing on a drop past max_drop."""
    if previous is None or previous == 0:
        return dg.AssetCheckResult(
            check_name="row_count", passed=True, metadata={"rows": current}
        ), None
    drop = (previous - current) / previous
    passed = drop <= max_drop
    message = (
        None
        if passed
        else (
            f"rule 'row count drops by at most {max_drop:.0%}' failed: {current} rows now against "
            f"{previous} in the last materialization ({drop:.0%} fewer). If the source really "
            "shrank, raise PORTAL_MAX_ROW_DROP for one run."
        )
    )
    return dg.AssetCheckResult(
        check_name="row_count",
        passed=passed,
        description=message,
        metadata={"rows": current, "previous_rows": previous, "drop": round(drop, 4)},
    ), message


def describe_duration(duration: timedelta) -> str:
    """Write a duration in words, e.g. `1 day`, `366 days` or `2.5 hours`."""
    hours = duration.total_seconds() / 3600
    if hours >= 24:
        days = hours / 24
        if days == 1:
            return "1 day"
        return f"{days:.0f} days" if days >= 10 else f"{days:.2g} days"
    if hours >= 1:
        return f"{hours:g} hour" if hours == 1 else f"{hours:.3g} hours"
    return f"{duration.total_seconds() / 60:.3g} minutes"


def freshness_spec(source: Source) -> dg.AssetCheckSpec:
    return dg.AssetCheckSpec(
        "freshness",
        asset=dg.AssetKey(["raw", source.name]),
        description=f"The data is less than {describe_duration(source.max_age)} old (max_age).",
    )


def freshness_result(source: Source, origin: dict) -> dg.AssetCheckResult:
    """Warn when the data of a source's snapshot is older than the source's max_age.

    The raw step emits this after every download, also when the data was unchanged, because
    that is when data grows stale.
    """
    # A snapshot captured by someone else records when its data was produced in
    # `data_as_of`, which is older than when the portal retrieved the copy.
    as_of = origin.get("data_as_of") or origin.get("retrieved")
    if not as_of:
        return dg.AssetCheckResult(
            check_name="freshness",
            passed=False,
            severity=dg.AssetCheckSeverity.WARN,
            description=f"source {source.name} has no retrieval time in its origin.json",
        )
    produced = datetime.fromisoformat(as_of)
    if produced.tzinfo is None:
        # A date or time without a zone, such as a hand-written `2018-02-07`, is read as UTC.
        produced = produced.replace(tzinfo=UTC)
    age = datetime.now(UTC) - produced
    passed = age <= source.max_age
    description = None
    if not passed:
        description = (
            f"source {source.name}: its data is from {as_of}, {describe_duration(age)} old, more "
            f"than its declared max_age of {describe_duration(source.max_age)}. The live URL may "
            "be failing, the "
            "run was offline, or the producer has stopped updating it."
        )
    return dg.AssetCheckResult(
        check_name="freshness",
        passed=passed,
        severity=dg.AssetCheckSeverity.WARN,
        description=description,
        metadata={"data_as_of": as_of, "age_hours": round(age.total_seconds() / 3600, 1)},
    )
