"""The stream stage (pipeline/graph.py): a layer's upload starts while its metadata is still
being written, into a real registry; a failed part falls back to the usual upload, a blob the
registry has already cancels its session, a build that fails after its first part tags nothing."""

from __future__ import annotations

import hashlib
import itertools
import os
import random
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import httpx
import pytest
from structlog.testing import LogCapture

from converter.convert.layer import LayerOptions, LayerResult, convert_layer
from converter.errors import ConverterError, LayerFailed, NotFound
from converter.layers.model import Inode, LowerView
from converter.pipeline import ConvertOptions, ConvertResult, convert_image, graph
from converter.pipeline.graph import ConvertLayerFn
from converter.pipeline.progress import PushOutcome
from converter.reference import OciLayoutRef, parse_reference
from converter.registry.client import RegistryClient
from converter.testing.sample import Item, layer_tar, write_oci_layout
from converter.transports import LayoutSource, RegistrySink
from tests.pipeline.fakes import tree
from tests.registry.helpers import Recorder, client_for
from tests.support.registry import RegistryServer


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two layers: one with 1.5 MiB of file data and 3,000 small files (so its metadata runs to
    hundreds of KiB), and a small one on top."""
    path = tmp_path_factory.mktemp("src")
    rng = random.Random(7)
    big = [Item(f"data/blob{i}", data=rng.randbytes(300_000)) for i in range(5)]
    small = [Item(f"many/d{i % 30}/f{i}", data=b"%d\n" % i) for i in range(3000)]
    write_oci_layout(path, [layer_tar(big + small), layer_tar([Item("top.txt", data=b"top\n")])])
    return path


def _convert(source: Path, client: RegistryClient, dest: str, convert: ConvertLayerFn = convert_layer
             ) -> ConvertResult:
    src_ref = OciLayoutRef(source, "latest")
    ref = parse_reference(dest)
    return convert_image(LayoutSource(src_ref), src_ref, RegistrySink(client, ref), ref, options=ConvertOptions(),
                         convert_layer=convert)


def _ranges(recorder: Recorder, repo: str) -> dict[str, list[tuple[int, int]]]:
    """The Content-Ranges of the PATCHes into ``repo``, per upload session, in order."""
    out: dict[str, list[tuple[int, int]]] = {}
    for s in recorder.seen:
        if s.method == "PATCH" and s.url.path.startswith(f"/v2/{repo}/blobs/uploads/"):
            start, end = s.headers["Content-Range"].split("-")
            out.setdefault(s.url.path, []).append((int(start), int(end)))
    return out


@pytest.fixture
def streaming(monkeypatch: pytest.MonkeyPatch) -> None:
    """Stream layers from 4 KiB of data, in parts of 64 KiB, looking every 5 ms."""
    monkeypatch.setattr(graph, "STREAM_MIN", 4096)
    monkeypatch.setattr(graph, "STREAM_STEP", 64 << 10)
    monkeypatch.setattr(graph, "STREAM_POLL", 0.005)


def test_the_real_engine_streams_the_same_bytes(registry_open: RegistryServer, source: Path,
                                                monkeypatch: pytest.MonkeyPatch, streaming: None) -> None:
    host = registry_open.host
    recorder = Recorder()
    with client_for(recorder) as client:
        streamed = _convert(source, client, f"{host}/streamed/real:1")
        sessions = _ranges(recorder, "streamed/real")
        assert len(sessions) == 2, "both layers stream (from 4 KiB of data here)"
        for ranges in sessions.values():  # parts from 0, each where the last ended
            assert ranges[0][0] == 0
            assert all(b[0] == a[1] + 1 for a, b in itertools.pairwise(ranges)), ranges
        monkeypatch.setattr(graph, "STREAM_MIN", 1 << 62)
        recorder.clear()
        whole = _convert(source, client, f"{host}/streamed/whole:1")
        assert _ranges(recorder, "streamed/whole") == {}
        assert streamed.digest == whole.digest
        for layer in streamed.platforms[0].layers:
            assert layer.push is PushOutcome.PUSHED
            data = client.get_blob_bytes(host, "streamed/real", layer.digest, max_size=1 << 30)
            assert len(data) == layer.size


def _slow_build(parts: int, part_size: int, pause: float) -> tuple[ConvertLayerFn, dict[str, object]]:
    """A layer engine that writes 2 MiB of data, announces it, then appends ``parts`` parts of
    metadata ``pause`` seconds apart and writes block 0 last, as our writer does."""
    seen: dict[str, object] = {}

    def build(src: BinaryIO, out_path: Path, *, options: LayerOptions, lower: LowerView | None = None,
              media_type: str | None = None, layer: str = "", workdir: Path | None = None,
              progress: Callable[[int], None] | None = None, on_tree: Callable[[Inode], None] | None = None,
              source_digest: str | None = None,
              on_data_final: Callable[[Path, bytes, int], object] | None = None) -> LayerResult:
        size = len(src.read())
        if on_tree is not None:
            on_tree(tree("a"))
        rng = random.Random(layer)
        block0, data = b"B" * 4096, rng.randbytes(2 << 20)
        meta = [rng.randbytes(part_size) for _ in range(parts)]
        partial = out_path.with_name(out_path.name + ".partial")
        with open(partial, "wb") as f:
            f.write(bytes(4096) + data)
            f.flush()
            if on_data_final is not None:
                on_data_final(partial, block0, 4096 + len(data))
            for part in meta:
                time.sleep(pause)
                f.write(part)
                f.flush()
            f.seek(0)
            f.write(block0)
        os.replace(partial, out_path)
        image = block0 + data + b"".join(meta)
        seen[layer] = image
        assert source_digest is not None
        return LayerResult(path=out_path, digest="sha256:" + hashlib.sha256(image).hexdigest(), size=len(image),
                           source_digest=source_digest, source_size=size, root=tree("a"),
                           source_diff_id="sha256:" + hashlib.sha256(layer.encode()).hexdigest())

    return build, seen


def test_the_metadata_is_sent_while_it_is_written(registry_open: RegistryServer, source: Path,
                                                  streaming: None) -> None:
    host = registry_open.host
    recorder = Recorder()
    build, seen = _slow_build(parts=6, part_size=100_000, pause=0.06)
    with client_for(recorder) as client:
        result = _convert(source, client, f"{host}/streamed/follow:1", convert=build)
        sessions = _ranges(recorder, "streamed/follow")
        # Two layers, each: the first part, parts of the metadata as it grew, the rest.
        assert len(sessions) == 2
        for one in sessions.values():
            assert one[0] == (0, 4096 + (2 << 20) - 1)
            assert all(b[0] == a[1] + 1 for a, b in itertools.pairwise(one)), one
            assert one[-1][1] + 1 == 4096 + (2 << 20) + 600_000
            assert len(one) >= 3, f"the metadata was not sent while written: {one}"
        for layer in result.platforms[0].layers:
            assert client.get_blob_bytes(host, "streamed/follow", layer.digest, max_size=1 << 30) == \
                seen[str(layer.source_digest)]


class _FailFirstPatch(Recorder):
    """A 500 for the first PATCH; everything else goes to the registry."""

    def __init__(self) -> None:
        super().__init__()
        self._failed = False
        self._guard = threading.Lock()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        with self._guard:
            fail = request.method == "PATCH" and not self._failed
            self._failed = self._failed or fail
        if fail:
            return httpx.Response(500, json={"errors": [{"code": "UNKNOWN", "message": "disk hiccup"}]},
                                  request=request)
        return super().handle_request(request)


def test_a_failed_part_falls_back_to_the_whole_upload(registry_open: RegistryServer, source: Path,
                                                      streaming: None, log_capture: LogCapture) -> None:
    host = registry_open.host
    with client_for() as plain:
        expected = _convert(source, plain, f"{host}/streamed/expected:1")
    recorder = _FailFirstPatch()
    with client_for(recorder) as client:
        result = _convert(source, client, f"{host}/streamed/fallback:1")
        assert result.digest == expected.digest
        failed = [e for e in log_capture.entries if e["event"] == "layer_stream_failed"]
        assert len(failed) == 1 and "500" in str(failed[0]["error"])
        assert "DELETE" in recorder.methods("/v2/streamed/fallback/blobs/uploads/")
        for layer in result.platforms[0].layers:
            assert client.blob_exists(host, "streamed/fallback", layer.digest) == layer.size


def test_a_layer_the_destination_has_cancels_its_stream(registry_open: RegistryServer, source: Path,
                                                        streaming: None) -> None:
    host = registry_open.host
    recorder = Recorder()
    with client_for(recorder) as client:
        first = _convert(source, client, f"{host}/streamed/again:1")
        recorder.clear()
        second = _convert(source, client, f"{host}/streamed/again:2")
        assert second.digest == first.digest
        assert [layer.push for layer in second.platforms[0].layers] == [PushOutcome.EXISTS] * 2
        layers = {str(layer.digest) for layer in second.platforms[0].layers}
        uploads = [s for s in recorder.seen if "/blobs/uploads/" in s.url.path]
        # Each layer (both stream here): its session opened, its first part sent, then dropped.
        assert sorted(s.method for s in uploads if s.method != "PATCH") == ["DELETE", "DELETE", "POST", "POST"]
        assert [s.status for s in uploads if s.method == "DELETE"] == [204, 204]
        assert not [s for s in uploads if s.method == "PUT" and s.url.params.get("digest") in layers]


def test_a_build_failing_after_its_first_part_tags_nothing(registry_open: RegistryServer, source: Path,
                                                           streaming: None) -> None:
    host = registry_open.host
    sent = threading.Event()

    def failing(src: BinaryIO, out_path: Path, *, options: LayerOptions, lower: LowerView | None = None,
                media_type: str | None = None, layer: str = "", workdir: Path | None = None,
                progress: Callable[[int], None] | None = None, on_tree: Callable[[Inode], None] | None = None,
                source_digest: str | None = None,
                on_data_final: Callable[[Path, bytes, int], object] | None = None) -> LayerResult:
        assert on_data_final is not None

        def announce(path: Path, block0: bytes, end: int) -> None:
            on_data_final(path, block0, end)
            sent.set()

        convert_layer(src, out_path, options=options, lower=lower, media_type=media_type, layer=layer,
                      workdir=workdir, progress=progress, on_tree=on_tree, source_digest=source_digest,
                      on_data_final=announce)
        raise ConverterError("the disk went away")

    with client_for() as client:
        with pytest.raises(LayerFailed, match=r"layer [12]/2 .*: build: the disk went away"):
            _convert(source, client, f"{host}/streamed/broken:1", convert=failing)
        assert sent.is_set()
        with pytest.raises(NotFound):
            client.get_manifest(parse_reference(f"{host}/streamed/broken:1"))


def test_a_small_layer_is_pushed_the_usual_way(registry_open: RegistryServer, source: Path) -> None:
    """Below STREAM_MIN (1 MiB of data by default) nothing is streamed: the top layer here."""
    host = registry_open.host
    recorder = Recorder()
    with client_for(recorder) as client:
        _convert(source, client, f"{host}/streamed/default:1")
    assert len(_ranges(recorder, "streamed/default")) == 1  # the big layer only
