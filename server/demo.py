"""The generated demo dataset: "sales", 100k rows, several dtypes, some nulls."""

from __future__ import annotations

import datetime as dt

import numpy as np
import polars as pl

__all__ = ["demo_sales"]

REGIONS = ["EU", "US", "APAC", "LATAM", "MEA"]
PRODUCTS = ["widget", "gadget", "gizmo", "doohickey", "sprocket", "flange", "bracket", "valve"]


def demo_sales(rows: int = 100_000, seed: int = 7) -> pl.DataFrame:
    """A reproducible sales table: ints, floats, strings, bools, dates, timestamps, nulls."""
    rng = np.random.default_rng(seed)
    start = dt.date(2024, 1, 1)
    days = rng.integers(0, 730, rows)
    qty = rng.integers(1, 50, rows).astype(np.int32)
    price = np.round(rng.gamma(2.0, 25.0, rows), 2)
    df = pl.DataFrame(
        {
            "order_id": np.arange(1, rows + 1, dtype=np.int64),
            "date": (np.datetime64(start.isoformat()) + days.astype("timedelta64[D]")),
            "region": rng.choice(REGIONS, rows),
            "product": rng.choice(PRODUCTS, rows),
            "qty": qty,
            "price": price,
            "discount": np.round(rng.choice([0.0, 0.05, 0.1, 0.2], rows), 2).astype(np.float32),
            "paid": rng.random(rows) < 0.9,
            "note": rng.choice(["", "rush", "gift", "returned", "bulk"], rows),
        }
    )
    secs = rng.integers(0, 63_072_000, rows).astype("timedelta64[s]")
    df = df.with_columns(
        pl.col("date").cast(pl.Date),
        pl.Series("updated_at", (np.datetime64("2024-01-01T00:00:00") + secs).astype("datetime64[us]")),
    )
    # Some nulls, as real exports have.
    price_s = df.get_column("price").clone()
    price_s.scatter(np.flatnonzero(rng.random(rows) < 0.02), None)
    qty_s = df.get_column("qty").clone()
    qty_s.scatter(np.flatnonzero(rng.random(rows) < 0.01), None)
    df = df.with_columns(
        price_s,
        qty_s,
        pl.when(pl.col("note") == "").then(None).otherwise(pl.col("note")).alias("note"),
    )
    return df
