"""HTTP request bodies: the per-request size limits and the user's upload budget.

Every body the API reads (an upload, a JSON body) is counted as it arrives,
against the per-request limit (413 ``too_large``) and against the signed-in
user's budget, :meth:`server.auth.limits.UserLimits.charge_upload` (429
``rate_limited`` with ``Retry-After``; docs/security.md "Per-user limits"),
so one huge body is refused as soon as either runs out.
"""

from __future__ import annotations

import json
import tempfile
from typing import Any

from starlette.requests import Request

from protocol import ErrorCode

from .auth.http import identity_of
from .auth.limits import UserLimits
from .errors import ApiError

__all__ = ["spool_body", "json_body", "SPOOL_BYTES", "MAX_JSON_BYTES"]

SPOOL_BYTES = 16 * 1024 * 1024  # uploads bigger than this spill from memory to a temp file
MAX_JSON_BYTES = 1024 * 1024  # a JSON request body (branches, tags, revert, the admin routes)


async def spool_body(
    request: Request, limit: int, what: str = "the upload", advice: str = "split the file"
) -> tempfile.SpooledTemporaryFile[bytes]:
    """The request body, spooled, under the per-request ``limit`` and the user's upload budget.

    The budget (:class:`~server.auth.limits.UserLimits`, docs/security.md "Per-user
    limits") is charged per chunk as it arrives, so one huge body is refused as soon as
    the budget runs out; a declared ``Content-Length`` over either limit is refused
    before anything is read.

    Raises:
        ApiError: 413 ``too_large``: over ``limit``.
        UploadLimited: 429 ``rate_limited`` (with ``Retry-After``): over the user's budget.
    """
    identity = identity_of(request)
    budget: UserLimits = request.app.state.user_limits
    length = request.headers.get("content-length", "")
    if length.isdigit():
        if int(length) > limit:
            raise ApiError(
                413, ErrorCode.TOO_LARGE, f"{what} is {length} bytes, over the {limit}-byte limit; {advice}"
            )
        budget.check_upload(identity, int(length))
    spool: tempfile.SpooledTemporaryFile[bytes] = tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES)
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            budget.charge_upload(identity, len(chunk), size)
            if size > limit:
                raise ApiError(413, ErrorCode.TOO_LARGE, f"{what} is over the {limit}-byte limit; {advice}")
            spool.write(chunk)
    except BaseException:
        spool.close()
        raise
    spool.seek(0)
    return spool


async def json_body(request: Request) -> dict[str, Any]:
    """The body as a JSON object, read through :func:`spool_body` (at most :data:`MAX_JSON_BYTES`).

    Raises:
        ApiError: 400 ``bad_request`` (not a JSON object), 413 ``too_large``.
        UploadLimited: 429 ``rate_limited``: over the user's upload budget.
    """
    spool = await spool_body(request, MAX_JSON_BYTES, "the JSON body", "send a small JSON object")
    try:
        raw = spool.read()
    finally:
        spool.close()
    try:
        body = json.loads(raw or b"{}")
    except ValueError:
        raise ApiError(400, ErrorCode.BAD_REQUEST, "the body is not valid JSON; send a JSON object") from None
    if not isinstance(body, dict):
        raise ApiError(400, ErrorCode.BAD_REQUEST, "the body must be a JSON object")
    return body
