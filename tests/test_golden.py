"""Output bytes are pinned: any change to what a conversion produces must be deliberate.

The sample image's conversions, and the compressed conversions of a compressible layer, must give
exactly the digests in tests/data/golden/digests.json,
and the raw writer must reproduce the committed layer images byte for byte; our reader and
fsck.erofs read those images. A deliberate change: ``python -m tests.support.golden --update``
(see its docstring: the mirror cache key must change with the output).
"""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from converter import __version__
from converter.erofs.reader import ErofsImage
from tests.support import golden
from tests.support.kernel import fsck

HINT = "output bytes changed; if deliberate run `python -m tests.support.golden --update` and review"


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, dict[str, object]]]:
    work = tmp_path_factory.mktemp("golden")
    return work, golden.convert_sample(work)


@pytest.mark.parametrize("name", list(golden.CONVERSIONS))
def test_conversion_digests_are_pinned(converted: tuple[Path, dict[str, dict[str, object]]], name: str) -> None:
    assert converted[1][name] == golden.pinned()[name], HINT


@pytest.fixture(scope="module")
def layers_converted(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return golden.convert_layers(tmp_path_factory.mktemp("golden-layers"))


@pytest.mark.parametrize("fmt", golden.LAYER_FORMATS)
def test_compressed_layer_digests_are_pinned(layers_converted: dict[str, str], fmt: str) -> None:
    """Our compressed writer's bytes, on files that do compress (extents, indexes, big pclusters)."""
    assert layers_converted[f"layer {fmt}"] == golden.pinned()[f"layer {fmt}"], HINT


def test_pinned_under_this_version() -> None:
    """The digests were recorded by this version: the version keys the mirror cache and the
    provenance, so output bytes may only change together with it (see tests/support/golden.py)."""
    assert golden.pinned()["tool_version"] == __version__, "run `python -m tests.support.golden --update`"


@pytest.mark.parametrize("index", golden.IMAGE_LAYERS)
def test_committed_layer_images_are_reproduced(converted: tuple[Path, dict[str, dict[str, object]]],
                                               index: int, tmp_path: Path) -> None:
    work, digests = converted
    committed = gzip.decompress(golden.layer_image_path(index).read_bytes())
    assert golden.layer_images(work, digests)[index] == committed, HINT
    path = tmp_path / "layer.erofs"
    path.write_bytes(committed)
    fsck(path)
    with ErofsImage.open(str(path)) as image:
        assert sum(1 for _ in image.walk()) > 1
