"""The dtype vocabulary (protocol.dtypes): one definition that ops, client, storage and Perspective share."""

from __future__ import annotations

import datetime as dt

import polars as pl
import pyarrow as pa
import pytest

import client.mirror
import server.ops
import server.ops.dtypes
import server.ops.state
import server.perspective.types
import server.rooms.deltas
import server.storage.commits
from protocol import ErrorCode
from protocol import dtypes as v
from server.ops import OpError

ZONED = ("Datetime[UTC]", "Datetime[Europe/Paris]", "Datetime[America/Argentina/Buenos_Aires]")
NAMES = tuple(n for n in v.DTYPE_NAMES if n != "Datetime[<tz>]")


def test_one_definition_everywhere() -> None:
    # Every layer uses the vocabulary's objects, not a copy of them.
    assert v.RID == "_rid" and v.RID_DTYPE == "UInt64"
    assert v.polars_dtype(v.RID_DTYPE) == v.RID_POLARS and v.arrow_type(v.RID_DTYPE) == v.RID_ARROW
    for mod in (server.ops, server.ops.state, server.perspective.types, server.rooms.deltas, client.mirror):
        assert getattr(mod, "RID", v.RID) is v.RID
    assert client.mirror.polars_dtype is v.polars_dtype
    assert server.storage.commits.arrow_type is v.arrow_type
    assert server.rooms.deltas.frame_to_arrow is v.frame_to_arrow
    assert server.ops.dtypes.storable_dtype is v.storable_dtype
    assert server.ops.dtypes.dtype_family is v.dtype_family
    assert server.ops.dtypes.time_zone is v.time_zone
    assert server.ops.DTYPE_NAMES is v.DTYPE_NAMES


@pytest.mark.parametrize("name", NAMES + ZONED)
def test_round_trips(name: str) -> None:
    dtype = v.polars_dtype(name)
    assert v.dtype_name(dtype) == name
    assert v.storable_dtype(dtype) == name
    assert v.arrow_dtype_name(v.arrow_type(name)) == name
    # The Arrow type is the one Polars exports for the wire (strings: large_string).
    s = pl.Series("x", [None], dtype=dtype)
    assert v.frame_to_arrow(s.to_frame()).schema.field("x").type == v.arrow_type(name)
    assert server.ops.dtypes.polars_dtype(name) == dtype


def test_parse_dtype_and_zones() -> None:
    assert v.parse_dtype("Int64") == ("Int64", None)
    assert v.parse_dtype("Datetime") == ("Datetime", None)
    assert v.parse_dtype("Datetime[Europe/Paris]") == ("Datetime", "Europe/Paris")
    assert v.time_zone(v.polars_dtype("Datetime[UTC]")) == "UTC"
    assert v.time_zone(v.polars_dtype("Datetime")) is None
    assert v.time_zone(pl.Int64()) is None
    assert v.arrow_type("Datetime[Asia/Tokyo]") == pa.timestamp("us", "Asia/Tokyo")


def test_families_and_ranges() -> None:
    fams = {n: v.dtype_family(n) for n in NAMES}
    assert {n for n, f in fams.items() if f == "int"} == set(v.INT_RANGE)
    assert fams["Float32"] == fams["Float64"] == "float"
    assert (fams["Boolean"], fams["String"], fams["Date"], fams["Datetime"]) == (
        "bool",
        "str",
        "date",
        "datetime",
    )
    assert v.dtype_family("Datetime[UTC]") == "datetime"
    for name, (lo, hi) in v.INT_RANGE.items():
        assert pl.Series([lo, hi], dtype=v.polars_dtype(name)).to_list() == [lo, hi]


@pytest.mark.parametrize("bad", ["int64", "Decimal", "", "Datetime[]", "Datetime[not a zone]", 3, None])
def test_unknown_names(bad: object) -> None:
    with pytest.raises(v.DtypeError) as e:
        v.polars_dtype(bad)
    assert isinstance(e.value, ValueError) and e.value.code == ErrorCode.BAD_DTYPE
    assert e.value.details["valid"] == list(v.DTYPE_NAMES)
    assert e.value.details["dtype"] == (bad if isinstance(bad, str) else repr(bad))
    if bad == "int64":
        assert "did you mean 'Int64'?" in e.value.message
    with pytest.raises(v.DtypeError):
        v.arrow_type(bad)  # type: ignore[arg-type]
    # The server's face rejects the op with the same code and details.
    with pytest.raises(OpError) as op:
        server.ops.polars_dtype(bad)  # type: ignore[arg-type]
    assert (op.value.code, op.value.message, op.value.details) == (
        e.value.code,
        e.value.message,
        e.value.details,
    )


def test_unknown_time_zone() -> None:
    with pytest.raises(v.DtypeError, match="unknown time zone 'Mars/Olympus'") as e:
        v.polars_dtype("Datetime[Mars/Olympus]")
    assert e.value.details == {"dtype": "Datetime[Mars/Olympus]"}
    assert v.parse_dtype("Datetime[Mars/Olympus]") == ("Datetime", "Mars/Olympus")  # spelling only


def test_storable_and_unsupported_polars_types() -> None:
    assert v.storable_dtype(pl.Categorical()) == "String"
    assert v.storable_dtype(pl.Null()) == "String"
    assert v.storable_dtype(pl.Datetime("ns", "UTC")) == "Datetime[UTC]"
    assert v.storable_dtype(pl.Decimal(10, 2)) == "Float64"
    assert v.storable_dtype(pl.Float16()) == "Float32"
    for t in (pl.List(pl.Int64), pl.Binary(), pl.Duration("us"), pl.Time()):
        assert v.storable_dtype(t) is None
        with pytest.raises(v.DtypeError, match="is not supported"):
            v.dtype_name(t)
        with pytest.raises(OpError):
            server.ops.dtype_name(t)
    with pytest.raises(v.DtypeError):
        v.dtype_name(pl.Datetime("ns"))  # only microseconds are stored


def test_arrow_encodings_of_the_same_values() -> None:
    assert v.arrow_dtype_name(pa.string()) == "String"
    assert v.arrow_dtype_name(pa.string_view()) == "String"
    assert v.arrow_dtype_name(pa.dictionary(pa.int32(), pa.string())) == "String"
    assert v.arrow_dtype_name(pa.date64()) == "Date"
    assert v.arrow_dtype_name(pa.timestamp("ns")) == "Datetime"
    assert v.arrow_dtype_name(pa.timestamp("ms", "UTC")) == "Datetime[UTC]"
    assert v.arrow_dtype_name(pa.float16()) == "Float32"
    for t in (
        pa.null(),
        pa.duration("s"),
        pa.time64("us"),
        pa.decimal128(5, 2),
        pa.binary(),
        pa.list_(pa.int8()),
    ):
        assert v.arrow_dtype_name(t) is None
    assert all(v.is_arrow_string(t) for t in (pa.string(), pa.large_string(), pa.string_view()))
    assert not v.is_arrow_string(pa.binary())


def test_wire_arrow_never_string_view() -> None:
    df = pl.DataFrame({"s": ["a", None], "t": [dt.datetime(2024, 1, 1), None]})
    table = v.frame_to_arrow(df)
    assert table.schema.field("s").type == pa.large_string()
    assert table.schema.field("t").type == pa.timestamp("us")


def test_perspective_mapping_covers_the_vocabulary() -> None:
    # Every dtype has a Perspective type, reached through the vocabulary's Arrow type.
    pt = server.perspective.types
    for name in NAMES + ZONED:
        target = pt.perspective_type("x", v.arrow_type(name))
        assert target == pt.PERSPECTIVE_TYPES["Datetime" if v.dtype_family(name) == "datetime" else name]
    assert pt.perspective_type(v.RID, v.RID_ARROW) == pa.float64()
