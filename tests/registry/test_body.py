"""Bounded reading of registry answers (body.py) and escaping of remote text (_http.py)."""

from __future__ import annotations

import gzip
from collections.abc import Iterator

import httpx
import pytest

from converter.errors import RegistryError
from converter.registry._http import escape_controls, scrub
from converter.registry.body import MAX_JSON_DEPTH, JSONTooDeep, load_json, read_body


@pytest.mark.parametrize("text", [b"[" * 100_000, b"{\"a\":" * 70_000, b"[" * 65 + b"]" * 65,
                                  b"[" * 100_000 + b"]" * 100_000])
def test_deep_json_is_refused_before_parsing(text: bytes) -> None:
    with pytest.raises(JSONTooDeep, match=f"nested more than {MAX_JSON_DEPTH} levels"):
        load_json(text)


def test_shallow_json_and_brackets_in_strings_are_fine() -> None:
    assert load_json(b"[" * 64 + b"]" * 64) == eval("[" * 63 + "[]" + "]" * 63)
    assert load_json(b'{"tags": ["' + b"[" * 1000 + b'"]}') == {"tags": ["[" * 1000]}
    assert load_json('{"a": "\\"[[[["}') == {"a": '"[[[['}
    with pytest.raises(ValueError):
        load_json(b"[1,")


def test_control_characters_are_escaped() -> None:
    assert escape_controls("plain text, ünïcode") == "plain text, ünïcode"
    assert escape_controls("a\x1b[2Kb\x07c\u202ed\x9b") == r"a\x1b[2Kb\x07c\u202ed\x9b"
    assert scrub("x\x1b]0;pwned\x07\r\ny") == r"x\x1b]0;pwned\x07 y"


class Dribble(httpx.SyncByteStream):
    def __init__(self, pieces: list[bytes]) -> None:
        self.pieces = pieces

    def __iter__(self) -> Iterator[bytes]:
        yield from self.pieces


def answer(pieces: list[bytes], headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.Response(200, stream=Dribble(pieces), headers=headers,
                          request=httpx.Request("GET", "https://reg.example/v2/a/manifests/x?_state=s3cr3t"))


def test_the_deadline_counts_the_whole_answer() -> None:
    now = [0.0]

    def clock() -> float:
        now[0] += 1.0  # every piece "takes" a second
        return now[0]

    assert read_body(answer([b"a"] * 5), what="w", limit=100, deadline=10.0, clock=clock) == b"aaaaa"
    now[0] = 0.0
    with pytest.raises(RegistryError, match="w: the answer did not arrive in time") as caught:
        read_body(answer([b"a"] * 50), what="w", limit=100, deadline=10.0, clock=clock)
    assert caught.value.temporary and "s3cr3t" not in caught.value.url


def test_decoded_bytes_are_counted_in_pieces() -> None:
    bomb = gzip.compress(bytes(64 << 20))
    with pytest.raises(RegistryError, match="more than the limit of 1000 bytes"):
        read_body(answer([bomb], {"Content-Encoding": "gzip"}), what="w", limit=1000)
    with pytest.raises(RegistryError, match="gzip encoding is corrupt"):
        read_body(answer([b"\x1f\x8b\x08\x00garbage"], {"Content-Encoding": "gzip"}), what="w", limit=1000)
