"""The shared layer cache against a real registry: a hit is mounted (or found by HEAD) instead of
rebuilt; poisoned, missing or unreachable entries fall back to converting and never change the
result; plus keys, chains, the local file and single flight."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import httpx
import pytest

from converter import __version__
from converter.convert.layer import LayerOptions
from converter.erofs.target import TargetFormat, parse_format
from converter.mirror.cache import (
    ANN_CACHE_DIFF_ID,
    ANN_CACHE_KEY,
    ANN_CACHE_SOURCE_DIFF_ID,
    ARTIFACT_TYPE,
    EMPTY_DESCRIPTOR,
    CacheEntry,
    CacheKey,
    LayerCache,
    LocalCacheFile,
    cache_key,
    layer_chains,
    next_chain,
)
from converter.mirror.jobs import Repository, parse_job
from converter.mirror.run import MirrorReport, RunOptions, run_job
from converter.oci.mediatypes import MediaType, Profile
from converter.oci.model import Descriptor, Index, Manifest, Platform, descriptor_for
from converter.reference import Digest, parse_reference
from converter.registry.client import RegistryClient
from converter.testing.sample import sample_layers
from converter.transports import RegistrySource
from tests.mirror.helpers import CountingEngine, other_top_layer, push_image, push_shared_base_images
from tests.pipeline.fakes import MemorySource
from tests.registry.helpers import Recorder, fast_retry


def mirror(client: RegistryClient, pairs: list[tuple[str, str]], *, cache: str | None, tmp: Path,
           engine: CountingEngine | None = None, local: Path | None = None, fmt: str = "erofs",
           extra: tuple[str, ...] = ()) -> MirrorReport:
    """Run a job converting each (source, dest) pair with the given cache repository (``extra``:
    more ``defaults`` lines, e.g. ``blob_compression: zstd``)."""
    lines = ["defaults:", f"  to: {fmt}", *(f"  {e}" for e in extra), f"  cache_repo: {cache or 'null'}", "images:"]
    lines += [f'  - {{source: "{s}", dest: "{d}"}}' for s, d in pairs]
    job = parse_job("\n".join(lines) + "\n", filename="job.yaml")
    return run_job(job, client=client, engine_log=None, convert_layer=engine or CountingEngine(),
                   options=RunOptions(jobs=2, workdir=tmp / "work", local_cache=local))


def only(report: MirrorReport) -> dict[str, object]:
    (image,) = report.images
    assert image.status == "converted", image.error
    return image.to_json()


def base_keys(client: RegistryClient, ref: str, fmt: TargetFormat | None = None) -> list[CacheKey]:
    """The cache keys of the layers of image ``ref`` (raw erofs, python builder, epoch 0)."""
    source = RegistrySource(client, parse_reference(ref))
    chains = layer_chains(source, image=ref)
    data, _, _ = source.get_manifest()
    layers = [entry["digest"] for entry in json.loads(data)["layers"]]
    keys = [cache_key(layer, LayerOptions(fmt=fmt or TargetFormat(), bottom=i == 0), chains=chains,
                      profile=Profile.SPEC,
                      tool_version=__version__) for i, layer in enumerate(layers)]
    assert all(k is not None for k in keys)
    return [k for k in keys if k is not None]


def dest_layers(client: RegistryClient, dest: str) -> list[dict[str, object]]:
    layers: list[dict[str, object]] = json.loads(client.get_manifest(parse_reference(dest)).data)["layers"]
    return layers


@pytest.fixture
def shared(client: RegistryClient, prefix: str, tmp_path: Path) -> dict[str, Digest]:
    return push_shared_base_images(client, tmp_path / "images", prefix)


@pytest.fixture
def uncached(client: RegistryClient, prefix: str, tmp_path: Path, shared: dict[str, Digest]) -> dict[str, str]:
    """The digests of base:1.0 and app:1.0 converted without any cache: what every cached run must give."""
    report = mirror(client, [(f"{prefix}/base:1.0", f"{prefix}/plain/base:1"),
                             (f"{prefix}/app:1.0", f"{prefix}/plain/app:1")], cache=None, tmp=tmp_path)
    base, app = report.images
    assert base.layers_converted == 2 and base.layers_reused == 0 and app.layers_converted == 3
    assert base.dest_digest and app.dest_digest
    return {"base": base.dest_digest, "app": app.dest_digest}


def test_hit_is_mounted_not_rebuilt(client: RegistryClient, prefix: str, tmp_path: Path,
                                    uncached: dict[str, str]) -> None:
    cache = f"{prefix}/cache"
    first = CountingEngine()
    app = only(mirror(client, [(f"{prefix}/app:1.0", f"{prefix}/out/app:1")], cache=cache, tmp=tmp_path,
                      engine=first))
    assert len(first.built) == 3 and app["layers_converted"] == 3 and app["layers_reused"] == 0
    assert app["dest_digest"] == uncached["app"]

    second = CountingEngine()
    base = only(mirror(client, [(f"{prefix}/base:1.0", f"{prefix}/out/base:1")], cache=cache, tmp=tmp_path,
                       engine=second))
    assert second.built == []  # nothing rebuilt
    assert (base["layers_converted"], base["layers_reused"], base["layers_mounted"]) == (0, 2, 2)
    assert base["dest_digest"] == uncached["base"]  # and the very same image
    out = parse_reference(f"{prefix}/out/base:1")
    for layer in dest_layers(client, str(out)):
        assert client.blob_exists(out.registry, out.repository, Digest.parse(str(layer["digest"]))) == layer["size"]


def test_encoded_layers_are_cached_with_their_annotations(client: RegistryClient, prefix: str, tmp_path: Path,
                                                          shared: dict[str, Digest]) -> None:
    """A +zstd/verity/chunk-indexed layer is cached as such: a hit gives the very same image (DiffIDs
    and the verity/chunk-index annotations included), and a raw entry never serves an encoded build."""
    extra = ("blob_compression: zstd", "chunk_size: 64K", "verity: true")
    plain = only(mirror(client, [(f"{prefix}/base:1.0", f"{prefix}/zplain/base:1")], cache=None, tmp=tmp_path,
                        extra=extra))
    cache = f"{prefix}/zcache"
    raw = CountingEngine()  # a raw conversion fills the cache with raw entries first
    only(mirror(client, [(f"{prefix}/base:1.0", f"{prefix}/zraw/base:1")], cache=cache, tmp=tmp_path, engine=raw))
    first = CountingEngine()
    only(mirror(client, [(f"{prefix}/base:1.0", f"{prefix}/zout/base:1")], cache=cache, tmp=tmp_path,
                engine=first, extra=extra))
    assert len(raw.built) == 2 and len(first.built) == 2  # the raw entries were not used
    second = CountingEngine()
    hit = only(mirror(client, [(f"{prefix}/base:1.0", f"{prefix}/zout2/base:1")], cache=cache, tmp=tmp_path,
                      engine=second, extra=extra))
    assert second.built == [] and hit["layers_reused"] == 2
    assert hit["dest_digest"] == plain["dest_digest"]
    layers = dest_layers(client, f"{prefix}/zout2/base:1")
    assert {str(la["mediaType"]) for la in layers} == {"application/vnd.erofs+zstd"}
    for la in layers:
        annotations = la["annotations"]
        assert isinstance(annotations, dict)
        assert {"org.erofs.uncompressed-digest", "org.erofs.dmverity.root_digest",
                "org.erofs.chunk-index.range"} <= set(annotations)


def test_hit_already_in_destination_is_found_by_head(client: RegistryClient, prefix: str, tmp_path: Path,
                                                      uncached: dict[str, str]) -> None:
    cache = f"{prefix}/cache"
    only(mirror(client, [(f"{prefix}/app:1.0", f"{prefix}/out/app:1")], cache=cache, tmp=tmp_path))
    engine = CountingEngine()
    base = only(mirror(client, [(f"{prefix}/base:1.0", f"{prefix}/out/app:base")], cache=cache, tmp=tmp_path,
                       engine=engine))
    assert engine.built == [] and (base["layers_reused"], base["layers_mounted"]) == (2, 0)
    assert base["dest_digest"] == uncached["base"]


def test_entry_is_an_oci_artifact_in_the_cache_repository(client: RegistryClient, prefix: str, tmp_path: Path,
                                                          shared: dict[str, Digest]) -> None:
    cache = parse_reference(f"{prefix}/cache:x")
    only(mirror(client, [(f"{prefix}/base:1.0", f"{prefix}/out/base:1")], cache=f"{prefix}/cache", tmp=tmp_path))
    keys = base_keys(client, f"{prefix}/base:1.0")
    layers = dest_layers(client, f"{prefix}/out/base:1")
    source = RegistrySource(client, parse_reference(f"{prefix}/base:1.0"))
    config_desc = json.loads(source.get_manifest()[0])["config"]
    source_diff_ids = json.loads(source.get_blob_bytes(Digest.parse(config_desc["digest"]),
                                                       max_size=1 << 20))["rootfs"]["diff_ids"]
    for key, layer, source_diff_id in zip(keys, layers, source_diff_ids, strict=True):
        entry = json.loads(client.get_manifest(cache.registry, cache.repository, key.tag).data)
        assert entry["mediaType"] == MediaType.OCI_MANIFEST and entry["artifactType"] == ARTIFACT_TYPE
        assert entry["config"] == EMPTY_DESCRIPTOR.to_json()
        assert [(x["digest"], x["size"], x["mediaType"]) for x in entry["layers"]] == [
            (layer["digest"], layer["size"], "application/vnd.erofs")]
        assert entry["annotations"] == {ANN_CACHE_KEY: key.canonical(), ANN_CACHE_DIFF_ID: layer["digest"],
                                        ANN_CACHE_SOURCE_DIFF_ID: source_diff_id}
        assert key.tag == "cache-" + key.hex and len(key.tag) == 70


def test_same_layer_on_another_base_is_not_a_hit(client: RegistryClient, prefix: str, tmp_path: Path,
                                                 shared: dict[str, Digest]) -> None:
    # Sample layer 1 converts differently on another base (its implicit parents take the lower
    # layers' metadata), so the cache must not hand out the entry made on top of layer 0.
    cache = f"{prefix}/cache"
    only(mirror(client, [(f"{prefix}/app:1.0", f"{prefix}/out/app:1")], cache=cache, tmp=tmp_path))
    push_image(client, tmp_path / "other", [other_top_layer(), sample_layers()[1]], [f"{prefix}/other:1"])
    engine = CountingEngine()
    cached = only(mirror(client, [(f"{prefix}/other:1", f"{prefix}/out/other:1")], cache=cache, tmp=tmp_path,
                         engine=engine))
    assert (cached["layers_converted"], cached["layers_reused"]) == (2, 0) and len(engine.built) == 2
    plain = only(mirror(client, [(f"{prefix}/other:1", f"{prefix}/plain/other:1")], cache=None, tmp=tmp_path))
    assert cached["dest_digest"] == plain["dest_digest"]
    app_top = {layer["digest"] for layer in dest_layers(client, f"{prefix}/out/app:1")}
    assert not app_top & {layer["digest"] for layer in dest_layers(client, f"{prefix}/out/other:1")}


# --- poisoned entries -------------------------------------------------------------------------


def _put_entry(client: RegistryClient, cache: Repository, tag: str, *, layer: Descriptor,
               annotations: dict[str, str], artifact_type: str | None = ARTIFACT_TYPE) -> None:
    manifest = Manifest(media_type=MediaType.OCI_MANIFEST, artifact_type=artifact_type, config=EMPTY_DESCRIPTOR,
                        layers=(layer,), annotations=annotations)
    client.put_manifest(cache.registry, cache.repository, tag, manifest.to_bytes(), MediaType.OCI_MANIFEST)


POISONS = ["other-layer-blob", "not-erofs", "size-lie", "other-key", "diff-id", "not-an-entry"]


@pytest.mark.parametrize("poison", POISONS)
def test_poisoned_entry_falls_back_to_converting(client: RegistryClient, prefix: str, tmp_path: Path,
                                                 uncached: dict[str, str], poison: str) -> None:
    cache = Repository(*parse_reference(f"{prefix}/cache:x").name.split("/", 1))
    only(mirror(client, [(f"{prefix}/app:1.0", f"{prefix}/out/app:1")], cache=str(cache), tmp=tmp_path))
    key0, key1 = base_keys(client, f"{prefix}/base:1.0")
    app_layers = dest_layers(client, f"{prefix}/out/app:1")
    right = Descriptor(MediaType.EROFS, Digest.parse(str(app_layers[0]["digest"])), int(str(app_layers[0]["size"])))
    top = Descriptor(MediaType.EROFS, Digest.parse(str(app_layers[2]["digest"])), int(str(app_layers[2]["size"])))
    stored = LayerCache(client, cache).fetch(key0)
    assert stored is not None
    good = {ANN_CACHE_KEY: key0.canonical(), ANN_CACHE_DIFF_ID: str(right.digest),
            ANN_CACHE_SOURCE_DIFF_ID: str(stored.source_diff_id)}
    if poison == "other-layer-blob":  # a real EROFS blob, of another layer: its UUID gives it away
        _put_entry(client, cache, key0.tag, layer=top, annotations={**good, ANN_CACHE_DIFF_ID: str(top.digest)})
    elif poison == "not-erofs":  # an existing blob that is no EROFS image at all
        _put_entry(client, cache, key0.tag, layer=Descriptor(MediaType.EROFS, EMPTY_DESCRIPTOR.digest, 2),
                   annotations={**good, ANN_CACHE_DIFF_ID: str(EMPTY_DESCRIPTOR.digest)})
    elif poison == "size-lie":
        _put_entry(client, cache, key0.tag, layer=Descriptor(MediaType.EROFS, right.digest, right.size + 4096),
                   annotations=good)
    elif poison == "other-key":  # the right tag, but the entry says it was made for another key
        _put_entry(client, cache, key0.tag, layer=right, annotations={**good, ANN_CACHE_KEY: key1.canonical()})
    elif poison == "diff-id":
        _put_entry(client, cache, key0.tag, layer=right, annotations={**good, ANN_CACHE_DIFF_ID: str(top.digest)})
    elif poison == "not-an-entry":
        _put_entry(client, cache, key0.tag, layer=right, annotations=good, artifact_type=None)
    engine = CountingEngine()
    report = mirror(client, [(f"{prefix}/base:1.0", f"{prefix}/out/base:1")], cache=str(cache), tmp=tmp_path,
                    engine=engine)
    base = only(report)
    assert base["cache_fallbacks"] == 1 and base["layers_converted"] == 1 and base["layers_reused"] == 1
    assert engine.built == [str(key0.layer)]
    assert base["dest_digest"] == uncached["base"]  # the cache never makes output wrong
    # the rebuilt layer overwrote the bad entry
    repaired = LayerCache(client, cache).fetch(key0)
    assert repaired == CacheEntry(right.digest, right.size, right.digest, stored.source_diff_id)


def test_entry_claiming_another_source_is_rejected(client: RegistryClient, prefix: str, tmp_path: Path,
                                                   uncached: dict[str, str]) -> None:
    """An entry whose blob and recorded source DiffID agree with each other but not with the
    layer's DiffID in the image config (only tampering gets there): rejected before anything is
    mounted or pulled, the layer is converted and the entry repaired."""
    cache = Repository(*parse_reference(f"{prefix}/cache:x").name.split("/", 1))
    only(mirror(client, [(f"{prefix}/app:1.0", f"{prefix}/out/app:1")], cache=str(cache), tmp=tmp_path))
    (key0, _), app_keys = base_keys(client, f"{prefix}/base:1.0"), base_keys(client, f"{prefix}/app:1.0")
    right = LayerCache(client, cache).fetch(key0)
    top = LayerCache(client, cache).fetch(app_keys[2])
    assert top is not None and right is not None
    _put_entry(client, cache, key0.tag, layer=Descriptor(MediaType.EROFS, top.digest, top.size),
               annotations={ANN_CACHE_KEY: key0.canonical(), ANN_CACHE_DIFF_ID: str(top.digest),
                            ANN_CACHE_SOURCE_DIFF_ID: str(top.source_diff_id)})
    engine = CountingEngine()
    base = only(mirror(client, [(f"{prefix}/base:1.0", f"{prefix}/out/base:1")], cache=str(cache), tmp=tmp_path,
                       engine=engine))
    assert base["cache_fallbacks"] == 1 and engine.built == [str(key0.layer)]
    assert base["dest_digest"] == uncached["base"]
    assert LayerCache(client, cache).fetch(key0) == right


def test_missing_blob_falls_back_and_is_stored_again(client: RegistryClient, prefix: str, tmp_path: Path,
                                                      uncached: dict[str, str]) -> None:
    cache = parse_reference(f"{prefix}/cache:x")
    only(mirror(client, [(f"{prefix}/app:1.0", f"{prefix}/out/app:1")], cache=cache.name, tmp=tmp_path))
    key0, _ = base_keys(client, f"{prefix}/base:1.0")
    blob = Digest.parse(str(dest_layers(client, f"{prefix}/out/app:1")[0]["digest"]))
    deleted = httpx.delete(f"http://{cache.registry}/v2/{cache.repository}/blobs/{blob}")
    assert deleted.status_code == 202, deleted.text
    assert client.blob_exists(cache.registry, cache.repository, blob) is None
    engine = CountingEngine()
    base = only(mirror(client, [(f"{prefix}/base:1.0", f"{prefix}/out/base:1")], cache=cache.name, tmp=tmp_path,
                       engine=engine))
    assert base["cache_fallbacks"] == 1 and engine.built == [str(key0.layer)]
    assert base["dest_digest"] == uncached["base"]
    assert client.blob_exists(cache.registry, cache.repository, blob) is not None  # stored again


def test_local_file_in_front_of_the_registry(client: RegistryClient, prefix: str, tmp_path: Path,
                                             uncached: dict[str, str]) -> None:
    cache = parse_reference(f"{prefix}/cache:x")
    local = tmp_path / "local" / "layer-cache.json"
    only(mirror(client, [(f"{prefix}/app:1.0", f"{prefix}/out/app:1")], cache=cache.name, tmp=tmp_path,
                local=local))
    repo_entries = json.loads(local.read_text())["entries"][cache.name]
    assert len(repo_entries) == 3
    # remove the registry's entries: the local file alone still finds the blobs
    key0, key1 = base_keys(client, f"{prefix}/base:1.0")
    for key in (key0, key1):
        digest = client.get_manifest(cache.registry, cache.repository, key.tag).digest
        assert httpx.delete(f"http://{cache.registry}/v2/{cache.repository}/manifests/{digest}").status_code == 202
    engine = CountingEngine()
    base = only(mirror(client, [(f"{prefix}/base:1.0", f"{prefix}/out/base:1")], cache=cache.name, tmp=tmp_path,
                       engine=engine, local=local))
    assert engine.built == [] and base["layers_reused"] == 2 and base["dest_digest"] == uncached["base"]
    # a poisoned local entry (another layer's blob) is rejected, then the layer is built
    top = dest_layers(client, f"{prefix}/out/app:1")[2]
    doc = json.loads(local.read_text())
    doc["entries"][cache.name][key0.hex] |= {"digest": top["digest"], "size": top["size"], "diff_id": top["digest"]}
    local.write_text(json.dumps(doc))
    engine = CountingEngine()
    base = only(mirror(client, [(f"{prefix}/base:1.0", f"{prefix}/out/base2:1")], cache=cache.name, tmp=tmp_path,
                       engine=engine, local=local))
    assert engine.built == [str(key0.layer)] and base["cache_fallbacks"] == 1
    assert base["dest_digest"] == uncached["base"]


def test_unreadable_local_file_is_ignored(tmp_path: Path) -> None:
    path = tmp_path / "c.json"
    path.write_text("{not json")
    local = LocalCacheFile(path)
    repo = Repository("r.example", "cache")
    assert local.load(repo) == {}
    entry = CacheEntry(Digest.from_bytes(b"a"), 1, Digest.from_bytes(b"a"), Digest.from_bytes(b"b"))
    local.update(repo, "ab" * 32, entry)
    assert local.load(repo) == {"ab" * 32: entry}
    assert local.load(Repository("r.example", "other")) == {}
    local.update(repo, "ab" * 32, None)
    assert local.load(repo) == {}


def test_cache_on_another_registry_is_not_used(client: RegistryClient, prefix: str, tmp_path: Path,
                                               uncached: dict[str, str]) -> None:
    report = mirror(client, [(f"{prefix}/base:1.0", f"{prefix}/out/base:1")], cache="cache.invalid/cache",
                    tmp=tmp_path)
    base = only(report)
    assert base["layers_converted"] == 2 and base["layers_reused"] == 0
    assert base["dest_digest"] == uncached["base"]


class FailingCache(httpx.BaseTransport):
    """The real registry, except that every request to the cache repository gets a 503."""

    def __init__(self, repository: str) -> None:
        self.inner = httpx.HTTPTransport()
        self.marker = f"/v2/{repository}/"
        self.refused = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if self.marker in request.url.path or request.url.params.get("from") == self.marker[4:-1]:
            self.refused += 1
            return httpx.Response(503, json={"errors": [{"code": "UNAVAILABLE", "message": "down"}]})
        return self.inner.handle_request(request)


def test_unreachable_cache_is_a_miss(prefix: str, tmp_path: Path, uncached: dict[str, str]) -> None:
    cache = parse_reference(f"{prefix}/cache:x")
    failing = FailingCache(cache.repository)
    with RegistryClient(transport=failing, retry=fast_retry()) as flaky:
        report = mirror(flaky, [(f"{prefix}/base:1.0", f"{prefix}/out/base:1")], cache=cache.name, tmp=tmp_path)
    base = only(report)
    assert failing.refused > 0
    assert (base["layers_converted"], base["layers_reused"], base["cache_fallbacks"]) == (2, 0, 0)
    assert base["dest_digest"] == uncached["base"]


# --- keys, chains, single flight ----------------------------------------------------------------


def test_key_covers_everything_that_changes_the_bytes() -> None:
    base = CacheKey(layer=Digest.from_bytes(b"l"), lower="", fmt="erofs", profile="spec", builder="python",
                    build_time=0, tool_version="0.1.0", erofs_utils="")
    variants = [
        CacheKey(**{**_fields(base), "layer": Digest.from_bytes(b"m")}),
        CacheKey(**{**_fields(base), "lower": str(Digest.from_bytes(b"x"))}),
        CacheKey(**{**_fields(base), "fmt": "erofs+lz4"}),
        CacheKey(**{**_fields(base), "profile": "containerd-2.3"}),
        CacheKey(**{**_fields(base), "builder": "mkfs"}),
        CacheKey(**{**_fields(base), "build_time": 1}),
        CacheKey(**{**_fields(base), "tool_version": "0.2.0"}),
        CacheKey(**{**_fields(base), "erofs_utils": "1.9.4"}),
        CacheKey(**{**_fields(base), "encoding": "zstd,level=3,chunk=4194304"}),
        CacheKey(**{**_fields(base), "encoding": "zstd,level=3,chunk=0"}),
        CacheKey(**{**_fields(base), "encoding": "none,verity"}),
    ]
    tags = {base.tag, *(v.tag for v in variants)}
    assert len(tags) == len(variants) + 1
    assert json.loads(base.canonical())["layer"] == str(base.layer)
    assert base.tag == CacheKey(**_fields(base)).tag  # stable
    assert "encoding" not in json.loads(base.canonical())  # raw keys are what they were before encodings


def _fields(key: CacheKey) -> dict[str, object]:
    return {f: getattr(key, f) for f in CacheKey.__dataclass_fields__}


def test_cache_key_needs_a_known_unambiguous_layer() -> None:
    a, b = str(Digest.from_bytes(b"a")), str(Digest.from_bytes(b"b"))
    chains: dict[str, str | None] = {a: "", b: None}
    options = LayerOptions(fmt=TargetFormat(), bottom=True)
    key = cache_key(a, options, chains=chains, profile=Profile.SPEC, tool_version="1")
    assert key is not None and key.lower == "" and key.erofs_utils == ""
    assert cache_key(b, options, chains=chains, profile=Profile.SPEC, tool_version="1") is None
    assert cache_key(str(Digest.from_bytes(b"c")), options, chains=chains, profile=Profile.SPEC,
                     tool_version="1") is None
    # bottom flag and chain disagree: not cached
    assert cache_key(a, LayerOptions(fmt=TargetFormat()), chains=chains, profile=Profile.SPEC, tool_version="1") is None
    mkfs = cache_key(a, LayerOptions(fmt=parse_format("erofs+lz4"), builder="mkfs", bottom=True), chains=chains,
                     profile=Profile.SPEC, tool_version="1", mkfs_version=lambda: "1.9.4")
    assert mkfs is not None and (mkfs.builder, mkfs.erofs_utils) == ("mkfs", "1.9.4")
    ours = cache_key(a, LayerOptions(fmt=parse_format("erofs+lz4"), bottom=True), chains=chains,
                     profile=Profile.SPEC, tool_version="1", mkfs_version=lambda: "1.9.4")
    assert ours is not None and ours.builder == "python" and ours.erofs_utils.startswith("liblz4 ")
    lzma = cache_key(a, LayerOptions(fmt=parse_format("erofs+lzma"), bottom=True), chains=chains,
                     profile=Profile.SPEC, tool_version="1", mkfs_version=lambda: "1.9.4")
    assert lzma is not None and lzma.builder == "python" and lzma.erofs_utils.startswith("liblzma 5.")


def _manifest(source: MemorySource, layers: list[bytes], arch: str) -> Descriptor:
    config = json.dumps({"architecture": arch, "os": "linux", "rootfs": {"type": "layers", "diff_ids": []}}).encode()
    manifest = Manifest(media_type=MediaType.OCI_MANIFEST, config=source.add_blob(config),
                        layers=tuple(source.add_blob(layer) for layer in layers))
    data = manifest.to_bytes()
    source.add_manifest(data, MediaType.OCI_MANIFEST)
    return descriptor_for(data, MediaType.OCI_MANIFEST, platform=Platform("linux", arch))


def test_layer_chains_per_manifest_and_ambiguity() -> None:
    source = MemorySource()
    l0, l1, l2 = (str(Digest.from_bytes(x)) for x in (b"l0", b"l1", b"l2"))
    amd = _manifest(source, [b"l0", b"l1"], "amd64")
    arm = _manifest(source, [b"l0", b"l2", b"l1"], "arm64")  # l1 on another chain here
    index = Index(media_type=MediaType.OCI_INDEX, manifests=(amd, arm)).to_bytes()
    source.add_manifest(index, MediaType.OCI_INDEX, tag="latest")
    chains = layer_chains(source, image="memory")
    assert chains == {l0: "", l1: None, l2: l0}
    assert next_chain("", l0) == l0 and next_chain(l0, l1).startswith("sha256:") and next_chain(l0, l1) != l1


def test_claim_makes_one_build_per_key_at_a_time() -> None:
    with RegistryClient() as unused:
        cache = LayerCache(unused, Repository("r.example", "cache"))
    key = CacheKey(layer=Digest.from_bytes(b"l"), lower="", fmt="erofs", profile="spec", builder="python",
                   build_time=0, tool_version="1", erofs_utils="")
    other = CacheKey(**{**_fields(key), "fmt": "erofs+lz4"})
    order: list[str] = []
    inside = threading.Event()

    def first() -> None:
        with cache.claim(key):
            order.append("first-in")
            inside.set()
            time.sleep(0.3)
            order.append("first-out")

    def second() -> None:
        inside.wait()
        with cache.claim(key):
            order.append("second-in")

    def unrelated() -> None:
        inside.wait()
        with cache.claim(other):
            order.append("other")

    threads = [threading.Thread(target=f) for f in (first, second, unrelated)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(5)
    assert order.index("second-in") > order.index("first-out")
    assert order.index("other") < order.index("first-out")  # other keys do not wait


def test_push_image_helper_is_deterministic(client: RegistryClient, prefix: str, tmp_path: Path) -> None:
    one = push_image(client, tmp_path, sample_layers()[:1], [f"{prefix}/d:1"])
    two = push_image(client, tmp_path, sample_layers()[:1], [f"{prefix}/d:2"])
    assert one == two


def test_full_hit_downloads_no_layer_blob(client: RegistryClient, prefix: str, tmp_path: Path,
                                          shared: dict[str, Digest]) -> None:
    """Every layer cached: hit or miss is decided from the manifest and config before any pull,
    so no source layer blob is fetched. A new top layer (a miss) needs the trees of the cached
    layers below it, so those are read then, and only then."""
    cache = f"{prefix}/cache"
    only(mirror(client, [(f"{prefix}/app:1.0", f"{prefix}/out/app:1")], cache=cache, tmp=tmp_path))
    source = RegistrySource(client, parse_reference(f"{prefix}/mid:1.0"))
    mid_layers = [str(entry["digest"]) for entry in json.loads(source.get_manifest()[0])["layers"]]
    source = RegistrySource(client, parse_reference(f"{prefix}/base:1.0"))
    base_layers = [str(entry["digest"]) for entry in json.loads(source.get_manifest()[0])["layers"]]

    def blob_gets(recorder: Recorder) -> set[str]:
        return {s.url.path.rsplit("/", 1)[1] for s in recorder.seen
                if s.method == "GET" and "/blobs/sha256:" in s.url.path}

    recorder = Recorder()
    with RegistryClient(transport=recorder) as counted:
        engine = CountingEngine()
        base = only(mirror(counted, [(f"{prefix}/base:1.0", f"{prefix}/out/base:1")], cache=cache, tmp=tmp_path,
                           engine=engine))
    assert engine.built == [] and base["layers_reused"] == 2
    assert not blob_gets(recorder) & set(base_layers), recorder.seen  # the config is fetched, no layer
    recorder = Recorder()
    with RegistryClient(transport=recorder) as counted:
        engine = CountingEngine()
        mid = only(mirror(counted, [(f"{prefix}/mid:1.0", f"{prefix}/out/mid:1")], cache=cache, tmp=tmp_path,
                          engine=engine))
    assert len(engine.built) == 1 and mid["layers_reused"] == 2
    assert set(mid_layers) <= blob_gets(recorder)  # the top is built on the trees of the two below


def test_a_cache_hit_reads_lower_hard_links_without_their_bytes() -> None:
    # Reading a reused layer's tree needs a cross-layer hard link's metadata only: through any
    # lower view that can find nodes (StackedLower, and the graph's deferred view when builds
    # overlap), the lower file's contents are never opened (that would fetch the layer again).
    import io

    from converter.layers.filedata import FileData
    from converter.layers.model import DirMeta, Inode, NodeKind
    from converter.mirror.cache import read_tree
    from converter.testing.sample import Item, layer_tar

    target = Inode(NodeKind.REG, 0o640, uid=5, size=5000)

    class Finder:  # not a StackedLower
        def dir_meta(self, path: bytes) -> DirMeta | None:
            return None

        def open_file(self, path: bytes) -> tuple[Inode, FileData] | None:
            raise AssertionError("the lower file's bytes were asked for")

        def find(self, path: bytes) -> tuple[int, Inode] | None:
            return (0, target) if path == b"data/big" else None

    tar = layer_tar([Item("links/", "dir"), Item("links/big", "hardlink", link="data/big")])
    tree = read_tree(io.BytesIO(tar), options=LayerOptions(fmt=TargetFormat()), lower=Finder(), media_type=None,
                     layer="sha256:up")
    assert tree.root.children is not None
    links = tree.root.children[b"links"].children
    assert links is not None and links[b"big"].size == 5000 and links[b"big"].uid == 5
