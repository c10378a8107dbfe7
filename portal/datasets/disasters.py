"""Yearly deaths from natural disasters by type (EM-DAT, processed by Our World in Data)."""

from datetime import timedelta

import polars as pl

from portal.dataset import Column, Dataset, Origin, Source

TOTAL = "All natural disasters"

source = Source(
    name="disasters",
    url="https://cdn.jsdelivr.net/npm/vega-datasets@3.2.1/data/disasters.csv",
    format="csv",
    max_age=timedelta(days=366),
    description="Deaths by disaster type and year, as published in vega-datasets 3.2.1.",
    origin=Origin(
        producer="EM-DAT (CRED, UCLouvain), processed by Our World in Data",
        licence="cc-by-4.0",
        licence_name="Creative Commons Attribution 4.0 (Our World in Data); EM-DAT terms of use",
        licence_url="https://creativecommons.org/licenses/by/4.0/",
        homepage="https://ourworldindata.org/natural-catastrophes",
    ),
    schema={"Entity": pl.String, "Year": pl.Int32, "Deaths": pl.Int64},
)


def build(disasters: pl.DataFrame) -> pl.DataFrame:
    return disasters.select(
        pl.col("Entity").alias("disaster_type"),
        pl.col("Year").alias("year"),
        pl.col("Deaths").alias("deaths"),
    ).sort("disaster_type", "year")


dataset = Dataset(
    name="disasters",
    title="Deaths from natural disasters",
    description=(
        "Reported deaths per year from natural disasters worldwide, by type of disaster, "
        f"with a total row per year under '{TOTAL}'. From the EM-DAT Emergency Events "
        "Database, as processed by Our World in Data."
    ),
    inputs=[source],
    columns=[
        Column(
            "disaster_type",
            pl.String,
            f"Type of disaster, or '{TOTAL}' for the total",
            nullable=False,
        ),
        Column("year", pl.Int32, "Calendar year", nullable=False, min=1900, max=2100),
        Column("deaths", pl.Int64, "Reported deaths", unit="people", nullable=False, min=0),
    ],
    build=build,
    key=["disaster_type", "year"],
    tags=["disasters", "hazards", "time-series"],
)
