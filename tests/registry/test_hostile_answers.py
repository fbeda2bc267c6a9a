"""The CLI against hostile registry answers (issue: hostile registries): compressed bombs, deeply
nested JSON, endless tag pages, a dribbled answer, terminal escapes in error messages.

A real registry sits behind ``HostileRegistry``, which lies on demand; every run is a child
process measured by ``run_cli``: one clean error line, exit 1, peak RSS under 300 MB.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import zstandard

from tests.support.hostile import HostileRegistry, Reply
from tests.support.measured import Measured, run_cli
from tests.support.registry import RegistryServer

PEAK_LIMIT = 300 * 1024 * 1024
REPO = "hostile/app"
MANIFEST = "application/vnd.oci.image.manifest.v1+json"
NESTED = b"[" * 100_000


@pytest.fixture
def hostile(registry_open: RegistryServer) -> Iterator[HostileRegistry]:
    with HostileRegistry(registry_open.host) as server:
        yield server


def convert(hostile: HostileRegistry, tmp_path: Path, *extra: str, timeout: float = 120) -> Measured:
    run = run_cli([f"{hostile.host}/{REPO}:1", "--dest", f"oci:{tmp_path / 'out'}:x", "--workdir",
                   str(tmp_path / "w"), "--retries", "1", *extra], timeout=timeout)
    assert run.peak < PEAK_LIMIT, f"peak RSS {run.peak >> 20} MiB; {run.stderr[-2000:]}"
    return run


def one_line(run: Measured) -> str:
    assert run.status == 1, run.stderr[-3000:]
    (line,) = run.error_lines
    assert "Traceback" not in run.stderr
    return line


def zstd_bomb(size: int) -> bytes:
    compressor = zstandard.ZstdCompressor(level=19).compressobj()
    zeros = bytes(1 << 20)
    return b"".join([*(compressor.compress(zeros) for _ in range(size >> 20)), compressor.flush()])


def gzip_bomb(size: int) -> bytes:
    return gzip.compress(bytes(size), compresslevel=9)


# --- compressed answers -----------------------------------------------------------------------


def test_a_zstd_bomb_as_manifest_is_refused_without_inflating_it(hostile: HostileRegistry, tmp_path: Path) -> None:
    bomb = zstd_bomb(1 << 30)
    hostile.answer(rf"^GET /v2/{REPO}/manifests/", Reply(200, bomb, (("Content-Type", MANIFEST),
                                                                       ("Content-Encoding", "zstd"))))
    line = one_line(convert(hostile, tmp_path))
    assert line == f"convert: fetching manifest {hostile.host}/{REPO}:1: the answer is zstd-encoded, " \
                   "which was not asked for", line


def test_a_gzip_bomb_as_manifest_stops_at_the_limit(hostile: HostileRegistry, tmp_path: Path) -> None:
    hostile.answer(rf"^GET /v2/{REPO}/manifests/", Reply(200, gzip_bomb(256 << 20), (
        ("Content-Type", MANIFEST), ("Content-Encoding", "gzip"))))
    line = one_line(convert(hostile, tmp_path))
    assert line.endswith(": the answer is more than the limit of 4194304 bytes"), line


# --- nested JSON ------------------------------------------------------------------------------


def test_a_deeply_nested_manifest_is_a_clean_error(hostile: HostileRegistry, tmp_path: Path) -> None:
    hostile.answer(rf"^GET /v2/{REPO}/manifests/", Reply(200, NESTED, (("Content-Type", MANIFEST),)))
    line = one_line(convert(hostile, tmp_path))
    assert line.startswith(f"convert: parsing manifest {hostile.host}/{REPO}:1: invalid JSON"), line


def test_a_deeply_nested_error_body_is_a_clean_error(hostile: HostileRegistry, tmp_path: Path) -> None:
    hostile.answer(rf"^GET /v2/{REPO}/manifests/", Reply(404, NESTED))
    line = one_line(convert(hostile, tmp_path))
    # Not JSON that we read: shown as the text it is, shortened.
    assert line.startswith(f"convert: fetching manifest {hostile.host}/{REPO}:1: 404 Not Found: [[[["), line
    assert len(line) < 400


def test_a_deeply_nested_token_answer_is_a_clean_error(hostile: HostileRegistry, tmp_path: Path) -> None:
    realm = f"http://{hostile.host}/token"
    hostile.answer(r"^GET /token", Reply(200, NESTED))
    hostile.answer(r"^GET /v2/", Reply(401, b"{}", (("WWW-Authenticate", f'Bearer realm="{realm}",service="x"'),)))
    line = one_line(convert(hostile, tmp_path))
    want = f"fetching a token for {hostile.host} from {hostile.host}: the answer is not a JSON object"
    assert line.endswith(want), line


def test_a_deeply_nested_tag_list_fails_that_image_only(hostile: HostileRegistry, tmp_path: Path) -> None:
    hostile.answer(rf"^GET /v2/{REPO}/tags/list", Reply(200, NESTED))
    report = mirror(hostile, tmp_path, "")
    assert "not a JSON object" in report["images"][0]["error"]


# --- tag lists --------------------------------------------------------------------------------


def mirror(hostile: HostileRegistry, tmp_path: Path, tags: str) -> dict[str, object]:
    job = tmp_path / "job.yaml"
    job.write_text(f"""\
defaults:
  dest: "{hostile.host}/out/app:{{tag}}-{{format}}"
images:
  - source: {hostile.host}/{REPO}
    tags: {{include: ["*"]{tags}}}
""")
    report = tmp_path / "report.json"
    run = run_cli(["mirror", str(job), "--report", str(report), "--workdir", str(tmp_path / "w")], timeout=300)
    assert run.peak < PEAK_LIMIT, f"peak RSS {run.peak >> 20} MiB; {run.stderr[-2000:]}"
    assert run.status == 1, run.stderr[-3000:]
    assert "Traceback" not in run.stderr
    result: dict[str, object] = json.loads(report.read_text())
    return result


def test_endless_tag_pages_stay_bounded(hostile: HostileRegistry, tmp_path: Path) -> None:
    per_page = 510_000  # about 8 MB a page: under every page limit, over the total in two pages

    def page(path: str) -> Reply:
        number = int(path.rsplit("page=", 1)[1]) if "page=" in path else 0
        tags = [f"t{number:04d}-{i:06d}" for i in range(per_page)]
        link = f'</v2/{REPO}/tags/list?page={number + 1}>; rel="next"'
        return Reply(200, json.dumps({"name": REPO, "tags": tags}).encode(),
                     (("Content-Type", "application/json"), ("Link", link)))

    hostile.answer(rf"^GET /v2/{REPO}/tags/list", page)
    report = mirror(hostile, tmp_path, ", newest: 3")
    (image,) = report["images"]  # type: ignore[misc]
    assert image["status"] == "failed"
    assert image["error"].endswith(": more than 1000000 tags"), image["error"]
    assert hostile.count("GET", rf"^/v2/{REPO}/tags/list") == 2


# --- a dribbled answer, escapes ---------------------------------------------------------------


def test_a_dribbled_manifest_fails_at_the_deadline(hostile: HostileRegistry, tmp_path: Path) -> None:
    body = json.dumps({"schemaVersion": 2, "mediaType": MANIFEST, "padding": "x" * 400}).encode()
    hostile.answer(rf"^GET /v2/{REPO}/manifests/", Reply(200, body, (("Content-Type", MANIFEST),), dribble=0.1))
    line = one_line(convert(hostile, tmp_path, "--deadline", "3", timeout=40))
    assert line.endswith(": the answer did not arrive in time (the total deadline passed)"), line


def test_control_characters_of_registry_messages_are_escaped(hostile: HostileRegistry, tmp_path: Path) -> None:
    message = "gone\x1b[2K\x1b]0;pwned\x07\r\x9b31mred"
    hostile.answer(rf"^GET /v2/{REPO}/manifests/", Reply(404, json.dumps(
        {"errors": [{"code": "MANIFEST_UNKNOWN\x1b[1m", "message": message}]}).encode()))
    run = convert(hostile, tmp_path)
    line = one_line(run)
    assert not any(c in run.stderr for c in "\x1b\x07\r\x9b"), repr(run.stderr)
    assert line.endswith(r"404 MANIFEST_UNKNOWN\x1b[1m: gone\x1b[2K\x1b]0;pwned\x07 \x9b31mred"), line
