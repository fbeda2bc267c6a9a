"""Reading registry answers under bounds: decoded size, a total deadline, JSON nesting depth."""

from __future__ import annotations

import json
import re
import time
import zlib
from collections.abc import Callable, Iterator

import httpx

from converter.errors import RegistryError
from converter.registry._http import escape_controls, redact_url

# JSON documents of the distribution and token specs nest a handful of levels; annotations are
# flat. Anything deeper is hostile (and would exhaust the parser's recursion).
MAX_JSON_DEPTH = 64
_CHUNK = 1024 * 1024
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.S)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_ONE_KIND = bytes.maketrans(b"{}", b"[]")  # for depth, which bracket does not matter
_INFLATE = frozenset({"gzip", "x-gzip", "deflate"})


class JSONTooDeep(ValueError):
    """A JSON document nested deeper than allowed (a ValueError, like any invalid JSON)."""


def load_json(data: bytes | str, *, max_depth: int = MAX_JSON_DEPTH) -> object:
    """``json.loads`` that refuses documents nested more than ``max_depth`` levels before parsing.

    Raises ``ValueError`` (``JSONTooDeep`` for the nesting) for anything that is not valid,
    shallow JSON; never ``RecursionError``.
    """
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data
    if raw.count(b"[") + raw.count(b"{") > max_depth:
        # Strip strings, keep brackets, then peel one level of innermost pairs per round.
        brackets = _STRING.sub(b"", raw).translate(_ONE_KIND, _NOT_BRACKETS)
        for _ in range(max_depth):
            peeled = brackets.replace(b"[]", b"")
            if len(peeled) == len(brackets):
                break
            brackets = peeled
        if brackets:
            raise JSONTooDeep(f"nested more than {max_depth} levels deep (or unbalanced)")
    try:
        return json.loads(data)
    except RecursionError:  # cannot happen after the check, but never let it escape
        raise JSONTooDeep(f"nested more than {max_depth} levels deep") from None


def read_body(response: httpx.Response, *, what: str, limit: int, deadline: float | None = None,
              clock: Callable[[], float] = time.monotonic) -> bytes:
    """The whole body, at most ``limit`` bytes *after* decoding, before ``deadline`` (``clock`` time).

    A Content-Encoding (we ask for none; a server may send one anyway) is decoded here, a
    megabyte at a time, so a compressed bomb is refused at the limit instead of being inflated
    in one piece. Only gzip and deflate are understood; other encodings are refused.
    Transport failures propagate as httpx errors.
    """
    url = redact_url(response.request.url)
    method = response.request.method
    length = response.headers.get("Content-Length", "")
    encoding = response.headers.get("Content-Encoding", "").strip().lower()
    if encoding in ("", "identity") and length.isdigit() and int(length) > limit:
        raise RegistryError(f"{what}: the answer is {length} bytes, more than the limit of {limit}",
                            method=method, url=url)
    parts: list[bytes] = []
    total = 0
    for chunk in decoded_chunks(response, what=what):
        total += len(chunk)
        if total > limit:
            raise RegistryError(f"{what}: the answer is more than the limit of {limit} bytes",
                                method=method, url=url)
        parts.append(chunk)
        if deadline is not None and clock() > deadline:
            raise RegistryError(f"{what}: the answer did not arrive in time (the total deadline passed)",
                                method=method, url=url, temporary=True)
    return b"".join(parts)


def decoded_chunks(response: httpx.Response, *, what: str) -> Iterator[bytes]:
    """The body decoded per its Content-Encoding, in pieces of at most a megabyte."""
    encoding = response.headers.get("Content-Encoding", "").strip().lower()
    if response.is_stream_consumed:
        # A body httpx already loaded (MockTransport answers) was decoded by httpx.
        content = response.content
        yield from (content[i : i + _CHUNK] for i in range(0, len(content), _CHUNK))
        return
    if encoding in ("", "identity"):
        yield from response.iter_raw()
        return
    if encoding not in _INFLATE:
        raise RegistryError(f"{what}: the answer is {escape_header(encoding)}-encoded, which was not asked for",
                            method=response.request.method, url=redact_url(response.request.url))
    # wbits MAX_WBITS|32 accepts the gzip and the zlib wrapper ("deflate" in HTTP is zlib).
    inflater = zlib.decompressobj(zlib.MAX_WBITS | 32)
    received = False
    try:
        for raw in response.iter_raw():
            data = raw
            received = received or bool(raw)
            while data:
                out = inflater.decompress(data, _CHUNK)
                data = inflater.unconsumed_tail
                if out:
                    yield out
                if inflater.eof:
                    return
    except zlib.error as exc:
        raise RegistryError(f"{what}: the answer's {encoding} encoding is corrupt: {exc}",
                            method=response.request.method, url=redact_url(response.request.url)) from None
    if received:
        raise RegistryError(f"{what}: the answer's {encoding} encoding is corrupt: it ends early",
                            method=response.request.method, url=redact_url(response.request.url))


def escape_header(text: str) -> str:
    """A header value for a message: at most 40 characters, control characters escaped."""
    return escape_controls(text[:40])
