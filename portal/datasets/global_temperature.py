"""Yearly global surface temperature anomaly (NASA GISTEMP Land-Ocean Temperature Index)."""

from datetime import timedelta

import polars as pl

from portal.dataset import Column, Dataset, Origin, Source

source = Source(
    name="global_temperature",
    url="https://cdn.jsdelivr.net/npm/vega-datasets@3.2.1/data/global-temp.csv",
    format="csv",
    max_age=timedelta(days=366),
    description="Yearly land-ocean temperature index, as published in vega-datasets 3.2.1.",
    origin=Origin(
        producer="NASA Goddard Institute for Space Studies (GISTEMP)",
        licence="other",
        licence_name="U.S. Government work, public domain",
        licence_url="https://www.usa.gov/government-works",
        homepage="https://data.giss.nasa.gov/gistemp/",
    ),
    schema={"year": pl.Int32, "temp": pl.Float64},
)


def build(global_temperature: pl.DataFrame) -> pl.DataFrame:
    return global_temperature.select("year", pl.col("temp").alias("temperature_anomaly_c")).sort(
        "year"
    )


dataset = Dataset(
    name="global_temperature",
    title="Global temperature anomaly",
    description=(
        "Yearly combined land-surface air and sea-surface water temperature anomaly (GISTEMP "
        "Land-Ocean Temperature Index), relative to the 1951-1980 mean, since 1880."
    ),
    inputs=[source],
    columns=[
        Column("year", pl.Int32, "Calendar year", nullable=False, unique=True, min=1880, max=2100),
        Column(
            "temperature_anomaly_c",
            pl.Float64,
            "Global mean surface temperature minus its 1951-1980 mean",
            unit="°C",
            nullable=False,
            min=-3,
            max=5,
        ),
    ],
    build=build,
    key=["year"],
    tags=["climate", "temperature", "time-series"],
)
