"""ProcessConvert: convert_layer in a build process gives what convert_layer gives in this one,
asks the caller's lower view across the process boundary, and fails the way it would here."""

from __future__ import annotations

import io
import multiprocessing
import os
import signal
from pathlib import Path
from typing import BinaryIO

import pytest

from converter.convert.layer import Builder, LayerOptions, LayerResult, convert_layer
from converter.erofs.reader import ErofsImage
from converter.erofs.target import TargetFormat, parse_format
from converter.errors import Cancelled, ConverterError, LayerError
from converter.layers.filedata import FileData
from converter.layers.model import DirMeta, Inode, NodeKind
from converter.layers.treecodec import encode_tree
from converter.pipeline.buildproc import BuildProcessError, ProcessConvert
from converter.pipeline.lower import StackedLower
from converter.testing.sample import Item, gzip_bytes, layer_tar, sample_layers

GZ = "application/vnd.oci.image.layer.v1.tar+gzip"


def _both(tmp_path: Path, src: bytes, *, options: LayerOptions, lower_of: object = None,
          media_type: str | None = GZ) -> tuple[LayerResult, LayerResult, list[Inode], list[Inode]]:
    """The same layer through convert_layer here and through ProcessConvert."""
    results, trees = [], []
    for name, fn in (("here", convert_layer), ("apart", ProcessConvert())):
        got: list[Inode] = []
        lower = lower_of() if callable(lower_of) else None
        results.append(fn(io.BytesIO(src), tmp_path / f"{name}.erofs", options=options, lower=lower,
                          media_type=media_type, layer="sha256:feed", workdir=tmp_path, on_tree=got.append))
        trees.append(got)
    return results[0], results[1], trees[0], trees[1]


@pytest.mark.parametrize(("fmt", "builder"), [("erofs", Builder.PYTHON), ("erofs+lz4", Builder.PYTHON),
                                              ("erofs+zstd", Builder.MKFS)])
def test_same_result_and_bytes(tmp_path: Path, fmt: str, builder: Builder) -> None:
    src = gzip_bytes(sample_layers()[0])
    options = LayerOptions(fmt=parse_format(fmt), builder=builder, bottom=True)
    here, apart, tree_here, tree_apart = _both(tmp_path, src, options=options)
    assert (apart.digest, apart.size, apart.source_digest, apart.source_size, apart.source_diff_id) == (
        here.digest, here.size, here.source_digest, here.source_size, here.source_diff_id)
    assert (tmp_path / "apart.erofs").read_bytes() == (tmp_path / "here.erofs").read_bytes()
    assert apart.path == tmp_path / "apart.erofs" and apart.root is None  # the tree came through on_tree
    assert len(tree_here) == len(tree_apart) == 1
    assert encode_tree(tree_apart[0]) == encode_tree(tree_here[0])


def test_lower_view_is_asked_across(tmp_path: Path) -> None:
    # Layer 1 has an implicit directory (data/) and a hard link to a file of layer 0: the build
    # process asks the caller's view for both, and gets the lower file's bytes.
    lower_root = Inode(NodeKind.DIR, 0o755, children={
        b"data": Inode(NodeKind.DIR, 0o750, uid=7, children={
            b"big": Inode(NodeKind.REG, 0o640, uid=3, size=5000)})})
    content = b"x" * 4999 + b"!"

    class Opened:
        def __init__(self) -> None:
            self.f = io.BytesIO(content)

        def read(self, n: int = -1) -> bytes:
            return self.f.read(n)

        def chunks(self, size: int = 1 << 20) -> object:
            return iter(lambda: self.f.read(size), b"")

    def lower_of() -> StackedLower:
        return StackedLower([lower_root], opener=lambda k, path, node: Opened())  # type: ignore[arg-type,return-value]

    upper = layer_tar([Item("links/", "dir"), Item("links/big", "hardlink", link="data/big"),
                       Item("data/extra", data=b"new")])
    here, apart, _, _ = _both(tmp_path, upper, options=LayerOptions(fmt=TargetFormat()), lower_of=lower_of,
                              media_type=None)
    assert apart.digest == here.digest
    with ErofsImage.open(tmp_path / "apart.erofs") as image:
        assert image.read_bytes("/links/big") == content
        assert image.stat("/links/big").uid == 3
        assert image.stat("/data").st_mode & 0o7777 == 0o750 and image.stat("/data").uid == 7
    assert not list(tmp_path.glob("lower-*")), "the handed-over lower file is removed"


def test_user_error_comes_back_as_itself(tmp_path: Path) -> None:
    bad = layer_tar([Item("a", data=b"1")])[:700]  # cut inside the first member's data
    with pytest.raises(LayerError) as here:
        convert_layer(io.BytesIO(bad), tmp_path / "h", options=LayerOptions(fmt=TargetFormat()), layer="sha256:bad")
    with pytest.raises(LayerError) as apart:
        ProcessConvert()(io.BytesIO(bad), tmp_path / "a", options=LayerOptions(fmt=TargetFormat()), layer="sha256:bad")
    assert str(apart.value) == str(here.value) and "sha256:bad" in str(apart.value)


def test_a_bug_in_the_build_process_is_not_a_user_error(tmp_path: Path) -> None:
    class Broken:
        def dir_meta(self, path: bytes) -> DirMeta | None:
            return "not a DirMeta"  # type: ignore[return-value]

        def open_file(self, path: bytes) -> tuple[Inode, FileData] | None:
            return None

    src = layer_tar([Item("implicit/file", data=b"1")])  # implicit/ is asked from the lower view
    with pytest.raises(BuildProcessError) as info:
        ProcessConvert()(io.BytesIO(src), tmp_path / "o", options=LayerOptions(fmt=TargetFormat()), lower=Broken())
    assert not isinstance(info.value, ConverterError)
    # From the sources the first attribute read fails; compiled (native.py), the type check at the call
    assert "AttributeError" in str(info.value) or "TypeError: converter.layers.model.DirMeta" in str(info.value)
    assert any("Traceback" in note for note in getattr(info.value, "__notes__", []))


class _CancelledAfter(io.RawIOBase):
    """A source stream that is cancelled after ``n`` bytes."""

    def __init__(self, data: bytes, n: int) -> None:
        self._f = io.BytesIO(data)
        self._left = n

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        if self._left <= 0:
            raise Cancelled("reading a layer: cancelled")
        data = self._f.read(min(len(buffer), self._left))
        self._left -= len(data)
        buffer[:len(data)] = data
        return len(data)


def test_cancelled_source_cancels_the_build(tmp_path: Path) -> None:
    src = layer_tar([Item(f"f{i}", data=os.urandom(100_000)) for i in range(30)])
    stream: BinaryIO = io.BufferedReader(_CancelledAfter(src, 1_000_000))  # type: ignore[arg-type]
    with pytest.raises(Cancelled):
        ProcessConvert()(stream, tmp_path / "o", options=LayerOptions(fmt=TargetFormat()))
    assert not multiprocessing.active_children()


def test_a_killed_build_process_is_reported(tmp_path: Path) -> None:
    class Killer:
        def dir_meta(self, path: bytes) -> DirMeta | None:
            (child,) = multiprocessing.active_children()
            os.kill(child.pid or 0, signal.SIGKILL)
            child.join()
            return None

        def open_file(self, path: bytes) -> tuple[Inode, FileData] | None:
            return None

    src = layer_tar([Item("implicit/file", data=b"1")])
    # the machine's failure (the OOM killer), not a bug: a one-line ConverterError that says what to do
    with pytest.raises(ConverterError, match=r"killed by signal 9; out of memory\? fewer --layer-jobs"):
        ProcessConvert()(io.BytesIO(src), tmp_path / "o", options=LayerOptions(fmt=TargetFormat()), lower=Killer())


def test_which_engine_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    from converter.mirror.cache import CountingConverter, LayerStats
    from converter.pipeline import ConvertOptions
    from converter.pipeline.engine import layer_engine

    monkeypatch.setattr(os, "cpu_count", lambda: 4)
    assert isinstance(layer_engine(convert_layer, ConvertOptions(jobs=2)), ProcessConvert)
    assert layer_engine(convert_layer, ConvertOptions(jobs=1)) is convert_layer
    assert layer_engine(convert_layer, ConvertOptions(jobs=2, processes=False)) is convert_layer
    monkeypatch.setattr(os, "cpu_count", lambda: 2)  # not worth its cost on 2 cores (options.py)
    assert layer_engine(convert_layer, ConvertOptions(jobs=2)) is convert_layer
    assert isinstance(layer_engine(convert_layer, ConvertOptions(jobs=2, processes=True)), ProcessConvert)

    def seam(*args: object, **kwargs: object) -> LayerResult:
        raise AssertionError

    assert layer_engine(seam, ConvertOptions(jobs=2, processes=True)) is seam  # a test's seam stays
    # the mirror's wrappers tell the graph that the engine they wrap builds apart
    assert CountingConverter(ProcessConvert(), LayerStats()).separate_process
    assert not CountingConverter(convert_layer, LayerStats()).separate_process
