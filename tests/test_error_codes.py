"""One error tree (issue 8): the codes in code and in PROTOCOL.md section 11 are the same.

Also: every CoframeError subclass defaults to a listed code, codes go on the
wire as plain strings, the HTTP handlers and the CLI map errors the same way
for every layer, and no code branches on an error's message text.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx
import msgpack
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

import server.cli_data
import server.errors
from protocol import CloseCode, CoframeError, ErrorCode, ProtocolError, encode
from protocol.messages import Error
from server.cli import EXIT_INTERRUPTED, EXIT_USAGE, fail
from server.errors import (
    AlreadyExists,
    ApiError,
    CliError,
    DatasetExists,
    NotFound,
    OpError,
    ReadError,
    RefMoved,
    StorageError,
    ViewConfigError,
    WireError,
)

ROOT = Path(__file__).resolve().parent.parent
PROTOCOL_MD = ROOT / "protocol" / "PROTOCOL.md"


def _section_11() -> tuple[str, str]:
    """(the error-code part, the close-code part) of PROTOCOL.md section 11."""
    text = PROTOCOL_MD.read_text()
    start = text.index("\n## 11. Error codes\n")
    end = text.index("\n## ", start + 1)
    section = text[start:end]
    errors, sep, closes = section.partition("\n### Close codes\n")
    assert sep, "PROTOCOL.md section 11 has no 'Close codes' table"
    return errors, closes


def _rows(part: str) -> list[list[str]]:
    """The body rows of the markdown tables in ``part``, as lists of cells."""
    rows = []
    for line in part.splitlines():
        if not line.startswith("|") or set(line) <= set("|- "):
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells[0] == "code":  # a header row
            continue
        rows.append(cells)
    return rows


def documented_error_codes() -> list[str]:
    """Every code in the first cell of a row of the error-code table (a cell may list two)."""
    codes: list[str] = []
    for cells in _rows(_section_11()[0]):
        found = re.findall(r"`([^`]+)`", cells[0])
        assert found, f"an error-code row without a `code`: {cells}"
        codes += found
    return codes


def documented_close_codes() -> dict[int, str]:
    """``{code: NAME}`` from the close-code table."""
    out: dict[int, str] = {}
    for cells in _rows(_section_11()[1]):
        assert cells[0].isdigit(), f"a close-code row without a number: {cells}"
        name = re.fullmatch(r"`([A-Z_]+)`", cells[1])
        assert name, f"close code {cells[0]} has no `NAME`: {cells}"
        assert int(cells[0]) not in out, f"close code {cells[0]} is listed twice"
        out[int(cells[0])] = name.group(1)
    return out


def test_error_code_table_is_exactly_error_code() -> None:
    documented = documented_error_codes()
    assert len(documented) == len(set(documented)), "a code is listed twice in PROTOCOL.md"
    missing_from_doc = ErrorCode.ALL - set(documented)
    missing_from_enum = set(documented) - ErrorCode.ALL
    assert not missing_from_doc, f"in ErrorCode, not in PROTOCOL.md section 11: {sorted(missing_from_doc)}"
    assert not missing_from_enum, f"in PROTOCOL.md section 11, not in ErrorCode: {sorted(missing_from_enum)}"


def test_close_code_table_is_exactly_close_code() -> None:
    assert documented_close_codes() == {int(c): c.name for c in CloseCode}


def test_error_code_all_is_the_set_of_values() -> None:
    assert ErrorCode.ALL == {c.value for c in ErrorCode}
    assert all(type(v) is str for v in ErrorCode.ALL)
    assert ErrorCode.DATASET_EXISTS == "dataset_exists" and "dataset_exists" in ErrorCode.ALL


def _subclasses(cls: type) -> set[type]:
    out = set()
    for sub in cls.__subclasses__():
        out |= {sub, *_subclasses(sub)}
    return out


def test_every_coframe_error_defaults_to_a_listed_code_and_an_http_status() -> None:
    subclasses = _subclasses(CoframeError)
    expected = {
        ProtocolError,
        OpError,
        ViewConfigError,
        WireError,
        ReadError,
        StorageError,
        ApiError,
        CliError,
    }
    expected |= {NotFound, AlreadyExists, DatasetExists, RefMoved}
    assert expected <= subclasses
    for cls in {CoframeError, *subclasses}:
        assert cls.code in ErrorCode.ALL, f"{cls.__name__}.code = {cls.code!r} is not an ErrorCode"
        assert isinstance(cls.code, ErrorCode), f"{cls.__name__}.code is a bare string"
        assert 400 <= cls.status <= 599, f"{cls.__name__}.status = {cls.status}"


def test_instances_keep_their_constructors_and_attributes() -> None:
    e = ProtocolError(ErrorCode.BAD_FIELD, "ops[0] is not a map", field="ops[0]", extra=1)
    assert (e.code, e.message, e.field, e.request_id) == ("bad_field", "ops[0] is not a map", "ops[0]", None)
    assert e.details == {"extra": 1, "field": "ops[0]"} and str(e) == e.message
    op = OpError(ErrorCode.NO_SUCH_ROW, "no row 3", rids=[3])
    assert (op.code, op.status, op.details) == ("no_such_row", 400, {"rids": [3]})
    assert ReadError(ErrorCode.TOO_LARGE, "too big").status == 413
    assert ReadError(ErrorCode.UNREADABLE, "empty").status == 400
    assert isinstance(ReadError(ErrorCode.UNREADABLE, "empty"), ValueError)
    assert ApiError(413, ErrorCode.TOO_LARGE, "over").status == 413
    nf = NotFound("no commit 'abc'", missing="commit")
    assert (nf.code, nf.status, nf.details) == ("not_found", 404, {"missing": "commit"})
    assert (DatasetExists("taken").code, DatasetExists("taken").status) == ("dataset_exists", 409)
    assert isinstance(DatasetExists("taken"), AlreadyExists)
    assert CliError("no such file", code=ErrorCode.UNREADABLE).code == "unreadable"


@pytest.mark.parametrize("binary", [True, False], ids=["msgpack", "json"])
def test_codes_go_on_the_wire_as_plain_strings(binary: bool) -> None:
    data = encode(Error(ErrorCode.NO_SUCH_VIEW, "no view 'x'", re=1), binary=binary)
    d = msgpack.unpackb(data) if binary else json.loads(data)
    assert d["code"] == "no_such_view" and type(d["code"]) is str


# ---------------------------------------------------------------- HTTP


def _app(exc: BaseException) -> Starlette:
    async def boom(request: Request) -> Response:
        raise exc

    return Starlette(routes=[Route("/boom", boom)], exception_handlers=server.errors.exception_handlers)


@pytest.mark.parametrize(
    ("exc", "status", "code"),
    [
        (
            OpError(ErrorCode.RESERVED_NAME, "a column named '_rid' is reserved", column="_rid"),
            400,
            "reserved_name",
        ),
        (ReadError(ErrorCode.TOO_LARGE, "the file is over the limit; split it"), 413, "too_large"),
        (NotFound("no dataset 'x'; list them with GET /api/datasets", missing="dataset"), 404, "not_found"),
        (AlreadyExists("branch 'b' already exists; pick another name"), 409, "already_exists"),
        (DatasetExists("dataset 'x' already exists; pick another name"), 409, "dataset_exists"),
        (RefMoved("branch 'main' moved under you; reload and retry"), 409, "conflict"),
        (ApiError(400, ErrorCode.BAD_NAME, "invalid dataset name '../x'"), 400, "bad_name"),
        (StorageError("catalog /secret/path is closed"), 500, "internal"),
        (RuntimeError("a bug"), 500, "internal"),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, BaseException) else str(v),
)
async def test_http_maps_every_layer_s_errors(exc: BaseException, status: int, code: str) -> None:
    transport = httpx.ASGITransport(app=_app(exc), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
        r = await http.get("/boom")
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    err = r.json()["error"]
    assert err["code"] == code
    if status >= 500:  # a server fault: the reply says nothing of the cause
        assert "see the server log" in err["message"] and "details" not in err
        assert "secret" not in r.text and "bug" not in r.text
    else:
        assert isinstance(exc, CoframeError)
        assert err["message"] == exc.message
        assert err.get("details", {}) == exc.details


# ---------------------------------------------------------------- CLI


def test_cli_maps_errors_in_one_place(capsys: pytest.CaptureFixture[str]) -> None:
    for exc in (
        CliError("no such file: x.csv"),
        NotFound("no dataset 'x'"),
        ReadError(ErrorCode.UNREADABLE, "x.csv is empty"),
        ApiError(400, ErrorCode.BAD_NAME, "invalid dataset name"),
        OSError("disk full"),
    ):
        assert fail(exc) == EXIT_USAGE
        err = capsys.readouterr().err
        assert err.startswith("coframe: ") and err.count("\n") == 1, err
    assert fail(KeyboardInterrupt()) == EXIT_INTERRUPTED
    assert "interrupted" in capsys.readouterr().err
    with pytest.raises(RuntimeError):
        fail(RuntimeError("a bug shows its traceback"))


# ---------------------------------------------------------------- no branching on message text

_MESSAGE_TESTS = re.compile(
    r"""(['"][^'"]*['"]\s+(not\s+)?in\s+(str|repr)\(\s*(e|exc|err|error)\s*\))"""
    r"""|((str|repr)\(\s*(e|exc|err|error)\s*\)\s*(==|!=|\.startswith|\.endswith))"""
    r"""|(\b(e|exc|err|error)\.args\[0\])"""
    r"""|(\b(e|exc|err|error)\.message\s*(==|!=|\.startswith|\.endswith))"""
    r"""|(['"][^'"]*['"]\s+(not\s+)?in\s+(e|exc|err|error)\.message)"""
)


def test_no_code_branches_on_an_error_message() -> None:
    found = []
    for package in ("protocol", "server", "client"):
        for path in sorted((ROOT / package).rglob("*.py")):
            for n, line in enumerate(path.read_text().splitlines(), 1):
                if _MESSAGE_TESTS.search(line):
                    found.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert not found, "branch on .code or .details, not on the message:\n" + "\n".join(found)


def test_server_errors_lists_the_whole_tree() -> None:
    listed = {getattr(server.errors, n) for n in server.errors.__all__ if n[0].isupper()}
    # The client's OpRejected joins the tree too, but it is the client's, not the server's.
    tree = {c for c in (CoframeError, *_subclasses(CoframeError)) if not c.__module__.startswith("client")}
    assert tree <= listed, sorted(c.__name__ for c in tree - listed)
    assert server.cli_data.CliError is server.errors.CliError
