"""Earthquakes of the past week worldwide, from the USGS real-time GeoJSON feed."""

from datetime import timedelta

import polars as pl

from portal.dataset import Accumulate, Column, Dataset, Origin, Source

source = Source(
    name="earthquakes",
    url="https://earthquake.usgs.gov/earthquakes/feed/v1.0/summary/all_week.geojson",
    format="geojson",
    max_age=timedelta(days=1),
    # The feed changes every minute; the current file's git history keeps the rest.
    history=24,
    description="USGS feed of every earthquake of the past seven days, updated every minute.",
    origin=Origin(
        producer="U.S. Geological Survey, Earthquake Hazards Program",
        licence="other",
        licence_name="U.S. public domain",
        licence_url="https://www.usgs.gov/information-policies-and-instructions/copyrights-and-credits",
        homepage="https://earthquake.usgs.gov/earthquakes/feed/v1.0/geojson.php",
    ),
)


def epoch_ms(name: str) -> pl.Expr:
    return pl.from_epoch(pl.col(name).cast(pl.Int64), time_unit="ms").dt.replace_time_zone("UTC")


def build(earthquakes: pl.DataFrame) -> pl.DataFrame:
    return earthquakes.select(
        pl.col("id").alias("event_id"),
        epoch_ms("time").alias("time"),
        epoch_ms("updated").alias("updated"),
        pl.col("mag").cast(pl.Float64).alias("magnitude"),
        pl.col("magType").alias("magnitude_type"),
        pl.col("place"),
        pl.col("coordinates").list.get(0).cast(pl.Float64).alias("longitude"),
        pl.col("coordinates").list.get(1).cast(pl.Float64).alias("latitude"),
        pl.col("coordinates").list.get(2).cast(pl.Float64).alias("depth_km"),
        pl.col("type").alias("event_type"),
        pl.col("status"),
        (pl.col("tsunami").cast(pl.Int64) == 1).alias("tsunami_warning"),
        pl.col("sig").cast(pl.Int32).alias("significance"),
        pl.col("net").alias("network"),
        pl.col("url"),
    ).sort("time")


dataset = Dataset(
    name="earthquakes",
    title="Earthquakes worldwide, accumulated from the USGS feed",
    description=(
        "Every seismic event recorded by the USGS Earthquake Hazards Program since the portal "
        "started scraping its one-week feed, with time, magnitude, position and review status. "
        "Each run adds the new events; a revised event keeps its id and replaces the earlier "
        "row when its update time is newer."
    ),
    inputs=[source],
    columns=[
        Column("event_id", pl.String, "USGS event id", nullable=False, unique=True),
        Column("time", pl.Datetime("ms", "UTC"), "Origin time of the event", nullable=False),
        Column("updated", pl.Datetime("ms", "UTC"), "Time of the latest revision", nullable=False),
        Column("magnitude", pl.Float64, "Magnitude", min=-2, max=10),
        Column("magnitude_type", pl.String, "Method of the magnitude (ml, md, mb, mww...)"),
        Column("place", pl.String, "Nearest named place"),
        Column(
            "longitude",
            pl.Float64,
            "Longitude of the epicentre",
            unit="degrees",
            nullable=False,
            min=-180,
            max=180,
        ),
        Column(
            "latitude",
            pl.Float64,
            "Latitude of the epicentre",
            unit="degrees",
            nullable=False,
            min=-90,
            max=90,
        ),
        Column("depth_km", pl.Float64, "Depth of the hypocentre", unit="km"),
        Column("event_type", pl.String, "Kind of event (earthquake, quarry blast, explosion...)"),
        Column("status", pl.String, "Review status", allowed=["automatic", "reviewed", "deleted"]),
        Column("tsunami_warning", pl.Boolean, "Whether a tsunami message was issued"),
        Column("significance", pl.Int32, "USGS significance score, 0 to 1000 and above"),
        Column("network", pl.String, "Id of the contributing seismic network"),
        Column("url", pl.String, "Event page on earthquake.usgs.gov"),
    ],
    build=build,
    key=["event_id"],
    # The feed covers only the past week: keep every event seen, the latest revision winning.
    accumulate=Accumulate(key=["event_id"], latest_by="updated"),
    tags=["hazards", "earthquakes", "geospatial"],
)
