"""One image from four places — a registry, a docker-archive, an oci-archive and a Docker engine —
converts to the same EROFS layers. The archives are written by skopeo, the engine is a private
dockerd loaded with ``docker load``, the results are read back by skopeo."""

from __future__ import annotations

import gzip
import json
import shutil
import subprocess
import tarfile
from pathlib import Path
from typing import Any

import pytest

from converter.cli import main
from converter.testing.sample import sample_layers, write_oci_layout
from tests.support.dockerd import Dockerd
from tests.support.registry import RegistryServer

TAG = "1.0"
NAME = "sample/app"  # in the docker archive and the engine: docker.io/sample/app:1.0


def skopeo(*args: str) -> str:
    res = subprocess.run(["skopeo", *args], capture_output=True, text=True, check=False, timeout=300)
    assert res.returncode == 0, f"skopeo {' '.join(args)}: {res.stderr}"
    return res.stdout


def convert(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    rc = main([*args, "--log-format", "json", "-q"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    (line,) = out.splitlines()
    return line.rsplit("@", 1)[1]


def layout_manifest(layout: Path, digest: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((layout / "blobs" / "sha256" / digest.split(":", 1)[1]).read_bytes())
    return doc


def layer_digests(layout: Path, digest: str) -> list[str]:
    return [d["digest"] for d in layout_manifest(layout, digest)["layers"]]


def without_volume_id(blob: bytes) -> bytes:
    """An EROFS image with its superblock's checksum (0x04) and volume UUID (0x30) zeroed: what
    may differ while the UUID still derives from the source blob digest, not its DiffID."""
    out = bytearray(blob)
    out[1024 + 4 : 1024 + 8] = bytes(4)
    out[1024 + 0x30 : 1024 + 0x40] = bytes(16)
    return bytes(out)


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory, registry_open: RegistryServer, dockerd: Dockerd
            ) -> dict[str, str]:
    """The sample image (gzip layers) in a registry, a docker-archive (skopeo writes uncompressed
    layers), an oci-archive (the same gzip blobs) and the private engine (docker load)."""
    tmp = tmp_path_factory.mktemp("sources")
    layout = write_oci_layout(tmp / "layout", sample_layers(), tag=TAG)
    reg = registry_open.host
    skopeo("copy", "--dest-tls-verify=false", f"oci:{layout.path}:{TAG}", f"docker://{reg}/sources/app:{TAG}")
    skopeo("copy", f"oci:{layout.path}:{TAG}", f"docker-archive:{tmp / 'docker.tar'}:{NAME}:{TAG}")
    skopeo("copy", f"oci:{layout.path}:{TAG}", f"oci-archive:{tmp / 'oci.tar'}:{TAG}")
    dockerd.docker("load", "-i", str(tmp / "docker.tar"))
    return {
        "registry": f"{reg}/sources/app:{TAG}",
        "docker-archive": f"docker-archive:{tmp / 'docker.tar'}:{NAME}:{TAG}",
        "oci-archive": f"oci-archive:{tmp / 'oci.tar'}:{TAG}",
        "docker-daemon": f"docker-daemon:{NAME}:{TAG}",
    }


def test_four_sources_same_layers(sources: dict[str, str], dockerd: Dockerd, tmp_path: Path,
                                  capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_HOST", dockerd.host)
    monkeypatch.setenv("DOCKER_CONFIG", str(dockerd.run_dir / "client"))
    outs: dict[str, tuple[Path, str]] = {}
    for kind, source in sources.items():
        out = tmp_path / kind
        outs[kind] = out, convert(capsys, source, "--dest", f"oci:{out}:{TAG}")
    layers = {kind: layer_digests(out, digest) for kind, (out, digest) in outs.items()}
    # Same compressed blobs (registry, oci-archive); same uncompressed blobs (docker-archive, engine):
    assert layers["registry"] == layers["oci-archive"]
    assert layers["docker-archive"] == layers["docker-daemon"]
    assert outs["registry"][1] == outs["oci-archive"][1]  # the very same source manifest, too
    assert outs["docker-archive"][1] == outs["docker-daemon"][1]  # same config and layer tars: same synthesis
    sources_seen = {kind: layout_manifest(out, digest)["annotations"]["io.github.erofs-converter.source.digest"]
                    for kind, (out, digest) in outs.items()}
    assert sources_seen["docker-daemon"] == sources_seen["docker-archive"] != sources_seen["registry"]
    # Across compressions every byte agrees but the volume UUID (derived from the blob digest):
    for mine, theirs in zip(layers["registry"], layers["docker-archive"], strict=True):
        a = (outs["registry"][0] / "blobs" / "sha256" / mine.split(":")[1]).read_bytes()
        b = (outs["docker-archive"][0] / "blobs" / "sha256" / theirs.split(":")[1]).read_bytes()
        assert without_volume_id(a) == without_volume_id(b)
    # the daemon's temporary save is gone
    assert not list(Path("/tmp").glob("erofs-convert-daemon-*"))


def test_four_sources_identical_layers_across_compressions(sources: dict[str, str], dockerd: Dockerd,
                                                           tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_HOST", dockerd.host)
    digests = {}
    for kind in ("registry", "docker-daemon"):
        out = tmp_path / kind
        digests[kind] = layer_digests(out, convert(capsys, sources[kind], "--dest", f"oci:{out}:{TAG}"))
    assert digests["registry"] == digests["docker-daemon"]


def test_oci_archive_destination_read_by_skopeo(sources: dict[str, str], tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    archive = tmp_path / "out" / "erofs.tar"
    in_archive = convert(capsys, sources["registry"], "--dest", f"oci-archive:{archive}:{TAG}")
    in_layout = convert(capsys, sources["registry"], "--dest", f"oci:{tmp_path / 'layout'}:{TAG}")
    assert in_archive == in_layout
    raw = skopeo("inspect", "--raw", f"oci-archive:{archive}:{TAG}")
    assert json.loads(raw)["layers"][0]["mediaType"] == "application/vnd.erofs"
    # a second tag accumulates in the same archive; the first stays readable
    again = convert(capsys, sources["oci-archive"], "--dest", f"oci-archive:{archive}:other", "--to", "erofs+lz4")
    assert json.loads(skopeo("inspect", "--raw", f"oci-archive:{archive}:other"))["layers"]
    assert again != in_archive
    skopeo("inspect", "--raw", f"oci-archive:{archive}:{TAG}")
    assert [p.name for p in archive.parent.iterdir()] == ["erofs.tar"]  # no temporary left behind


def test_archive_errors(sources: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    docker_tar = Path(sources["docker-archive"].split(":")[1])
    gz = tmp_path / "docker.tar.gz"
    with open(docker_tar, "rb") as fin, gzip.open(gz, "wb") as fout:
        shutil.copyfileobj(fin, fout)
    cases = [
        ([f"docker-archive:{gz}", "--dest", f"oci:{tmp_path / 'x'}"], "decompress it first"),
        ([f"docker-archive:{docker_tar}:nope:1", "--dest", f"oci:{tmp_path / 'x'}"],
         f"no image is tagged 'nope:1' (tags: docker.io/{NAME}:{TAG})"),
        ([sources["oci-archive"].rsplit(":", 1)[0] + ":missing", "--dest", f"oci:{tmp_path / 'x'}"],
         "no image tagged 'missing'"),
        ([sources["registry"], "--dest", f"docker-archive:{tmp_path / 'x.tar'}"], "sources only"),
        ([sources["docker-archive"]], "source needs --dest"),
    ]
    for args, message in cases:
        rc = main([*args, "--log-format", "json", "-q"])
        err = capsys.readouterr().err
        assert rc != 0 and message in err, (args, err)
    assert not (tmp_path / "x").exists()


def test_docker_archive_is_read_in_place(sources: dict[str, str]) -> None:
    """Blobs are read at member offsets: the archive's layers are its members, not unpacked."""
    from converter.reference import parse_location
    from converter.transports.archive import DockerArchiveSource

    location = parse_location(sources["docker-archive"])
    source = DockerArchiveSource(location)  # type: ignore[arg-type]
    data, _, _ = source.get_manifest()
    manifest = json.loads(data)
    with tarfile.open(location.path) as tar:  # type: ignore[union-attr]
        sizes = {m.size for m in tar.getmembers() if m.isreg()}
    assert all(layer["size"] in sizes for layer in manifest["layers"])
    assert all(layer["mediaType"] == "application/vnd.oci.image.layer.v1.tar" for layer in manifest["layers"])
