"""`convert cat REF PATH` / `convert ls REF` on a chunk-indexed image through a byte-counting
proxy: only a small share of the blobs crosses the wire, and what arrives is verified."""

from __future__ import annotations

import json
import random
import subprocess
from pathlib import Path

import pytest

from converter.cli import main
from converter.testing.sample import Item, layer_tar, sample_layers, write_oci_layout
from tests.reliability.proxy import Action, Fault, FaultProxy
from tests.support.registry import RegistryServer
from tests.test_image_e2e import skopeo

TAG = "1.0"


def big_layer() -> bytes:
    """48 incompressible 256 KiB files and one small one: a 12 MiB layer."""
    rng = random.Random(7)
    items = [Item("data/", "dir", mode=0o755)]
    items += [Item(f"data/blob{i:02d}.bin", data=rng.randbytes(256 << 10)) for i in range(48)]
    items.append(Item("data/small.txt", data=b"the one small file\n"))
    return layer_tar(items)


@pytest.fixture
def indexed_image(tmp_path: Path, registry_open: RegistryServer,
                  capsysbinary: pytest.CaptureFixture[bytes]) -> tuple[str, int]:
    """A chunk-indexed +zstd image in the registry: (reference, total blob bytes)."""
    layout = write_oci_layout(tmp_path / "src", [*sample_layers(), big_layer()], tag=TAG)
    source = f"{registry_open.host}/remote/read:{TAG}"
    skopeo("copy", "--dest-tls-verify=false", f"oci:{layout.path}:{TAG}", f"docker://{source}")
    assert main([source, "--blob-compression", "zstd", "--chunk-size", "256K", "-q", "--log-format", "json"]) == 0
    ref = capsysbinary.readouterr().out.decode().strip().split("@")[0]
    manifest = json.loads(skopeo("inspect", "--raw", "--tls-verify=false", f"docker://{ref}"))
    return ref, sum(layer["size"] for layer in manifest["layers"])


def blob_bytes(proxy: FaultProxy) -> int:
    return sum(seen.size for seen in proxy.log if seen.method == "GET" and "/blobs/sha256:" in seen.path)


def test_cat_fetches_a_small_fraction(registry_open: RegistryServer, indexed_image: tuple[str, int],
                                      capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    ref, total = indexed_image
    with FaultProxy(registry_open.host) as proxy, proxy.scripted([]):
        via = ref.replace(registry_open.host, proxy.host, 1)
        assert main(["cat", via, "data/small.txt", "-v"]) == 0
        captured = capsysbinary.readouterr()
        assert captured.out == b"the one small file\n"
        fetched = blob_bytes(proxy)
        ranged = [s for s in proxy.log if "/blobs/" in s.path]
    assert all(s.status == 206 for s in ranged)  # every blob read was a Range request
    print(f"cat fetched {fetched} of {total} blob bytes ({fetched / total:.1%})")
    assert fetched <= 0.15 * total, f"fetched {fetched} of {total} blob bytes"
    assert f"fetched {fetched} blob bytes".encode() in captured.err


def test_corrupted_chunk_is_refused(registry_open: RegistryServer, indexed_image: tuple[str, int],
                                    capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    ref, _ = indexed_image
    with FaultProxy(registry_open.host) as proxy:
        via = ref.replace(registry_open.host, proxy.host, 1)
        # The first ranged blob read after the index is a chunk frame: flip one of its bytes.
        with proxy.scripted([Fault(Action.CORRUPT, r"/blobs/sha256:", method="GET", skip=1, times=1)]):
            rc = main(["cat", via, "data/small.txt"])
    err = capsysbinary.readouterr().err.decode()
    assert rc == 1
    assert err.count("\n") == 1 and "does not match its checksum" in err, err


def test_ls_through_the_proxy_matches_umoci(tmp_path: Path, registry_open: RegistryServer,
                                            indexed_image: tuple[str, int],
                                            capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    ref, total = indexed_image
    with FaultProxy(registry_open.host) as proxy, proxy.scripted([]):
        via = ref.replace(registry_open.host, proxy.host, 1)
        assert main(["ls", via]) == 0
        listing = capsysbinary.readouterr().out.decode()
        fetched = blob_bytes(proxy)
    paths = {line.split(maxsplit=5)[5].split(" -> ")[0].split(" [nlink")[0] for line in listing.splitlines()}
    src = write_oci_layout(tmp_path / "twin", [*sample_layers(), big_layer()], tag=TAG).path
    rootfs = tmp_path / "rootfs"
    subprocess.run(["umoci", "raw", "unpack", "--image", f"{src}:{TAG}", str(rootfs)], check=True, capture_output=True)
    want = {"/"} | {"/" + str(p.relative_to(rootfs)) for p in rootfs.rglob("*")}
    assert paths == want
    assert fetched <= 0.15 * total  # metadata only
