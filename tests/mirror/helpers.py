"""Helpers for the mirror tests: images pushed to the real loopback registry, a counting layer engine."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import BinaryIO

import httpx

from converter.convert.layer import LayerOptions, LayerResult, convert_layer
from converter.layers.model import Inode, LowerView
from converter.reference import Digest, parse_reference
from converter.registry.client import RegistryClient
from converter.testing.mirror_demo import push_layout_image
from converter.testing.sample import Item, layer_tar, sample_layers, write_oci_layout


class CountingEngine:
    """The real ``convert_layer``, recording which source layers it built (thread-safe)."""

    def __init__(self) -> None:
        self.built: list[str] = []
        self._lock = threading.Lock()

    def __call__(self, src: BinaryIO, out_path: Path, *, options: LayerOptions, lower: LowerView | None = None,
                 media_type: str | None = None, layer: str = "", workdir: Path | None = None,
                 progress: Callable[[int], None] | None = None,
                 on_tree: Callable[[Inode], None] | None = None, source_digest: str | None = None,
                 on_data_final: Callable[[Path, bytes, int], object] | None = None) -> LayerResult:
        result = convert_layer(src, out_path, options=options, lower=lower, media_type=media_type, layer=layer,
                               workdir=workdir, progress=progress, on_tree=on_tree, source_digest=source_digest,
                               on_data_final=on_data_final)
        with self._lock:
            self.built.append(layer)
        return result


def other_top_layer() -> bytes:
    """A top layer unlike the sample's, to make a third image on the shared base."""
    return layer_tar([Item("srv/", "dir", mode=0o755), Item("srv/mid.txt", data=b"the mid image\n"),
                      Item("etc/.wh.motd", data=b"")])


def push_image(client: RegistryClient, workdir: Path, layers: Sequence[bytes], refs: Sequence[str], *,
               architecture: str = "amd64") -> Digest:
    """Push an image made of ``layers`` (uncompressed tars, gzipped here) under every ref in ``refs``."""
    workdir.mkdir(parents=True, exist_ok=True)
    layout = workdir / f"layout-{len(list(workdir.iterdir()))}"
    write_oci_layout(layout, list(layers), architecture=architecture)
    return push_layout_image(client, layout, [parse_reference(r) for r in refs])


def push_shared_base_images(client: RegistryClient, workdir: Path, prefix: str) -> dict[str, Digest]:
    """Three images on one base: ``PREFIX/app:1.0`` (sample layers 0-2), ``PREFIX/base:1.0`` (0-1),
    ``PREFIX/mid:1.0`` (0-1 plus another top). Unique source layers: 4; layers in all: 8."""
    layers = sample_layers()
    return {
        "app": push_image(client, workdir, layers, [f"{prefix}/app:1.0"]),
        "base": push_image(client, workdir, layers[:2], [f"{prefix}/base:1.0"]),
        "mid": push_image(client, workdir, [*layers[:2], other_top_layer()], [f"{prefix}/mid:1.0"]),
    }


class PaginatingTransport(httpx.BaseTransport):
    """Serves ``GET /v2/NAME/tags/list?n=N[&last=T]`` the way the distribution spec pages it
    (lexical order, ``Link: <…>; rel="next"`` while more remain), from the full list of the real
    registry behind it. Debian's docker-registry (distribution 2.8) ignores ``n`` — pagination
    of tags arrived in distribution 3 — so this stands in for a paginating registry while every
    other request goes to the real one unchanged. ``pages`` counts the pages served."""

    def __init__(self, inner: httpx.BaseTransport | None = None) -> None:
        self.inner = inner if inner is not None else httpx.HTTPTransport()
        self.pages = 0
        self._lock = threading.Lock()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        if request.method != "GET" or not url.path.endswith("/tags/list") or "n" not in url.params:
            return self.inner.handle_request(request)
        page_size = int(url.params["n"])
        last = url.params.get("last", "")
        full = httpx.Request("GET", url.copy_with(query=None), headers=request.headers)
        response = self.inner.handle_request(full)
        response.read()
        if response.status_code != 200:
            return response
        body = json.loads(response.content)
        remaining = sorted(t for t in body.get("tags") or [] if t > last)
        page = remaining[:page_size]
        headers = {"Content-Type": "application/json"}
        if len(remaining) > page_size:
            headers["Link"] = f'<{url.path}?n={page_size}&last={page[-1]}>; rel="next"'
        with self._lock:
            self.pages += 1
        return httpx.Response(200, headers=headers, json={"name": body.get("name"), "tags": page},
                              request=request)
