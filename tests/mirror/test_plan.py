"""Plans against a real loopback registry: tag filters, newest-N, pagination, shards, and the
idempotency check (provenance of manifests and of each platform manifest of an index)."""

from __future__ import annotations

import json
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from converter import __version__
from converter.errors import UsageError
from converter.mirror.jobs import Job, JobFileError, parse_job
from converter.mirror.plan import (
    COMPLETION_INDEX_ENV,
    PlannedImage,
    Recipe,
    Shard,
    Status,
    make_plan,
    parse_shard,
    shard_of,
    source_key,
)
from converter.mirror.run import RunOptions, run_job
from converter.oci.mediatypes import MediaType
from converter.reference import Digest, parse_reference
from converter.registry.client import RegistryClient
from converter.testing.sample import Item, layer_tar, sample_layers
from tests.mirror.helpers import PaginatingTransport, push_image
from tests.registry.helpers import Recorder

TAGS = ["0.9", "1.0", "1.1", "1.2", "1.10", "1.2-slim", "2.0-rc1", "2.0", "latest"]


def tiny_layer(text: bytes = b"x") -> bytes:
    return layer_tar([Item("a.txt", data=text)])


def make_job(text: str) -> Job:
    return parse_job(textwrap.dedent(text), filename="job.yaml")


@pytest.fixture
def tagged(client: RegistryClient, prefix: str, tmp_path: Path) -> Digest:
    """``PREFIX/app`` with every tag of TAGS on one tiny image."""
    return push_image(client, tmp_path, [tiny_layer()], [f"{prefix}/app:{t}" for t in TAGS])


def test_tag_filters_and_newest(client: RegistryClient, prefix: str, tagged: Digest) -> None:
    job = make_job(f"""
        defaults:
          dest: "{prefix}/mirror/{{repository}}:{{tag}}-{{format}}"
        images:
          - source: {prefix}/app
            tags:
              include: ["1.*", "/^2\\\\./"]
              exclude: ["*-slim"]
              newest: 3
          - source: {prefix}/app:0.9
        """)
    plan = make_plan(job, client)
    assert [(p.source.rsplit(":", 1)[1], p.status) for p in plan.images] == [
        ("2.0", Status.CONVERT), ("2.0-rc1", Status.CONVERT), ("1.10", Status.CONVERT), ("0.9", Status.CONVERT)]
    assert {p.source_digest for p in plan.images} == {tagged}
    assert plan.images[0].dest.endswith("/mirror/" + prefix.split("/", 1)[1] + "/app:2.0-erofs")
    assert all(p.reason == "the destination had no image" for p in plan.images)
    assert plan.total == 4 and plan.shard is None


def test_tags_are_listed_page_by_page(prefix: str, tagged: Digest) -> None:
    job = make_job(f"""
        defaults: {{dest: "{prefix}/m/{{repository}}:{{tag}}"}}
        images:
          - source: {prefix}/app
            tags: {{exclude: ["latest"]}}
        """)
    paginating = PaginatingTransport()
    recorder = Recorder(paginating)
    with RegistryClient(transport=recorder) as paged:
        plan = make_plan(job, paged, page_size=2)
    pages = [s.url for s in recorder.seen if s.method == "GET" and s.url.path.endswith("/tags/list")]
    assert paginating.pages == len(pages) == 5  # 9 tags, 2 per page, following each Link: rel="next"
    assert [p.params.get("last") for p in pages] == [None, "1.0", "1.10", "1.2-slim", "2.0-rc1"]
    with RegistryClient() as whole:
        assert [p.source for p in make_plan(job, whole).images] == [p.source for p in plan.images]
    assert len(plan.images) == len(TAGS) - 1


def test_estimate_counts_source_layer_bytes(client: RegistryClient, prefix: str, tmp_path: Path) -> None:
    push_image(client, tmp_path, sample_layers()[:2], [f"{prefix}/two:1"])
    data, _, _ = client.get_manifest(parse_reference(f"{prefix}/two:1"))
    want = sum(layer["size"] for layer in json.loads(data)["layers"])
    job = make_job(f"""
        images:
          - {{source: "{prefix}/two:1", dest: "{prefix}/m/two:1"}}
        """)
    (planned,) = make_plan(job, client, estimate=True).images
    assert planned.estimated_bytes == want
    (planned,) = make_plan(job, client).images
    assert planned.estimated_bytes is None


def test_listing_failure_fails_only_that_entry(client: RegistryClient, prefix: str, tagged: Digest) -> None:
    job = make_job(f"""
        defaults: {{dest: "{prefix}/m/{{repository}}:{{tag}}"}}
        images:
          - source: {prefix}/does-not-exist
            tags: {{newest: 1}}
          - source: {prefix}/app:1.0
        """)
    missing, fine = make_plan(job, client).images
    assert missing.status is Status.FAILED and missing.item is None
    assert missing.source == f"{prefix}/does-not-exist" and "404" in missing.error
    assert fine.status is Status.CONVERT


def test_missing_source_tag_fails_only_that_image(client: RegistryClient, prefix: str, tagged: Digest) -> None:
    job = make_job(f"""
        defaults: {{dest: "{prefix}/m/{{repository}}:{{tag}}"}}
        images:
          - source: {prefix}/app:9.9
          - source: {prefix}/app:1.0
        """)
    missing, fine = make_plan(job, client).images
    assert missing.status is Status.FAILED and "fetching manifest" in missing.error
    assert fine.status is Status.CONVERT


def test_two_items_with_one_destination_are_a_job_error(client: RegistryClient, prefix: str, tagged: Digest) -> None:
    job = make_job(f"""
        defaults: {{dest: "{prefix}/m/app:{{tag}}"}}
        images:
          - source: {prefix}/app:1.0
          - source: {prefix}/other:1.0
        """)
    with pytest.raises(JobFileError) as err:
        make_plan(job, client)
    assert err.value.line == 2 and "is the destination of both" in str(err.value)


# --- shards -----------------------------------------------------------------------------------


@pytest.mark.parametrize("count", [1, 2, 3, 4, 7])
def test_every_key_is_in_exactly_one_shard(count: int) -> None:
    keys = [f"r.example/team{n % 13}/app{n % 7}:{n}" for n in range(600)]
    shards = [Shard(i, count) for i in range(count)]
    for key in keys:
        assert sum(s.owns(key) for s in shards) == 1
    sizes = [sum(s.owns(k) for k in keys) for s in shards]
    assert min(sizes) > 600 / count / 2  # a hash, not a skewed split


def test_shard_of_is_stable() -> None:
    # SHA-256 based: the same on every machine and in every process (pinned values).
    assert [shard_of(f"docker.io/library/debian:{t}", 4) for t in ("bookworm", "12", "12.5")] == [
        shard_of("docker.io/library/debian:bookworm", 4), shard_of("docker.io/library/debian:12", 4),
        shard_of("docker.io/library/debian:12.5", 4)]
    assert shard_of("docker.io/library/debian:bookworm", 1) == 0
    assert source_key(parse_reference("debian:12")) == "docker.io/library/debian:12"
    digest = "sha256:" + "a" * 64
    assert source_key(parse_reference(f"r.example/a@{digest}")) == f"r.example/a@{digest}"


def test_plan_shards_partition_the_job(client: RegistryClient, prefix: str, tagged: Digest) -> None:
    job = make_job(f"""
        defaults: {{dest: "{prefix}/m/{{repository}}:{{tag}}"}}
        images:
          - source: {prefix}/app
            tags: {{newest: 20}}
          - source: {prefix}/missing
            tags: {{newest: 1}}
        """)
    everything = {p.source for p in make_plan(job, client).images}
    assert len(everything) == len(TAGS) + 1
    for count in (2, 3, 5):
        seen: list[str] = []
        for index in range(count):
            plan = make_plan(job, client, shard=Shard(index, count))
            assert plan.total == len(TAGS) + 1 and str(plan.shard) == f"{index}/{count}"
            seen.extend(p.source for p in plan.images)
        assert sorted(seen) == sorted(everything)  # each image (and the failed listing) exactly once


@pytest.mark.parametrize(("text", "env", "want"), [
    ("0/1", {}, Shard(0, 1)),
    ("2/3", {}, Shard(2, 3)),
    ("/4", {COMPLETION_INDEX_ENV: "3"}, Shard(3, 4)),
], ids=["one", "explicit", "from-env"])
def test_parse_shard(text: str, env: dict[str, str], want: Shard) -> None:
    assert parse_shard(text, env=env) == want


@pytest.mark.parametrize(("text", "fragment"), [
    ("3/3", "0 <= I < N"), ("1/0", "0 <= I < N"), ("1", "want I/N"), ("a/b", "whole numbers"),
    ("/4", "JOB_COMPLETION_INDEX is not set"), ("-1/4", "whole numbers"),
])
def test_parse_shard_errors(text: str, fragment: str) -> None:
    with pytest.raises(UsageError, match=fragment.replace("(", r"\(")):
        parse_shard(text, env={})


# --- idempotency --------------------------------------------------------------------------------


@pytest.fixture
def converted(client: RegistryClient, prefix: str, tmp_path: Path) -> Iterator[tuple[str, Digest]]:
    """``PREFIX/src:1`` (two sample layers) converted to ``PREFIX/out:1`` (raw erofs); yields the
    job text's first lines and the conversion's digest."""
    push_image(client, tmp_path, sample_layers()[:2], [f"{prefix}/src:1"])
    report = run_job(make_job(f"""
        images:
          - {{source: "{prefix}/src:1", dest: "{prefix}/out:1"}}
        """), client=client, options=RunOptions(workdir=tmp_path / "work"))
    (image,) = report.images
    assert image.status == "converted", image.error
    assert image.dest_digest is not None
    yield f"{prefix}/src:1", Digest.parse(image.dest_digest)


def single(client: RegistryClient, source: str, dest: str, *settings: str, **kwargs: str) -> PlannedImage:
    """The plan of a one-image job; ``settings`` are extra lines of the image entry."""
    lines = ["images:", f'  - source: "{source}"', f'    dest: "{dest}"', *(f"    {line}" for line in settings)]
    (planned,) = make_plan(parse_job("\n".join(lines) + "\n", filename="job.yaml"), client, **kwargs).images  # type: ignore[arg-type]
    return planned


def test_converted_image_is_skipped(client: RegistryClient, prefix: str, converted: tuple[str, Digest]) -> None:
    source, digest = converted
    planned = single(client, source, f"{prefix}/out:1")
    assert planned.status is Status.SKIP and planned.dest_digest == digest
    assert planned.reason == "already converted"


@pytest.mark.parametrize(("extra", "reason"), [
    ("to: erofs+lz4", "made with format erofs, want erofs+lz4"),
    ("profile: containerd-2.3", "made with profile spec, want containerd-2.3"),
    ("merge_index: true", "an index is wanted"),
    # A single-manifest source with a platform selection it does not match must fail again, not
    # be skipped because an earlier run (without the selection) left a conversion there.
    ("platforms: [linux/s390x]", "made with platforms all, want linux/s390x"),
], ids=["format", "profile", "merge-index", "platforms"])
def test_other_options_convert_again(client: RegistryClient, prefix: str, converted: tuple[str, Digest],
                                     extra: str, reason: str) -> None:
    source, _ = converted
    planned = single(client, source, f"{prefix}/out:1", extra)
    assert planned.status is Status.CONVERT
    assert reason in planned.reason


def test_another_tool_version_converts_again(client: RegistryClient, prefix: str,
                                             converted: tuple[str, Digest]) -> None:
    source, _ = converted
    job = make_job(f"""
        images:
          - {{source: "{source}", dest: "{prefix}/out:1"}}
        """)
    (planned,) = make_plan(job, client, tool_version="99.0").images
    assert planned.status is Status.CONVERT and f"erofs-converter version {__version__}, want 99.0" in planned.reason


@pytest.mark.parametrize(("recipe", "reason"), [
    (Recipe(builder="mkfs"), "made with builder python, want mkfs"),
    (Recipe(build_time=1700000000), "made with build time 0, want 1700000000"),
], ids=["builder", "build-time"])
def test_other_run_options_convert_again(client: RegistryClient, prefix: str, converted: tuple[str, Digest],
                                         recipe: Recipe, reason: str) -> None:
    """Everything that changes the output bytes is in the provenance, so a changed request never skips."""
    source, _ = converted
    planned = single(client, source, f"{prefix}/out:1", recipe=recipe)  # type: ignore[arg-type]
    assert planned.status is Status.CONVERT and reason in planned.reason


def test_a_failed_rerun_is_not_skipped(client: RegistryClient, prefix: str, converted: tuple[str, Digest],
                                       tmp_path: Path) -> None:
    """#13 item 12: the rerun with a platform the image does not have fails, it is never "already converted"."""
    source, digest = converted
    report = run_job(make_job(f"""
        images:
          - {{source: "{source}", dest: "{prefix}/out:1", platforms: [linux/s390x]}}
        """), client=client, options=RunOptions(workdir=tmp_path / "work"))
    (image,) = report.images
    assert image.status == "failed" and "the image is linux/amd64, not linux/s390x" in (image.error or "")
    assert client.get_manifest(parse_reference(f"{prefix}/out:1")).digest == digest  # left alone


def test_changed_source_converts_again(client: RegistryClient, prefix: str, converted: tuple[str, Digest],
                                       tmp_path: Path) -> None:
    source, _ = converted
    push_image(client, tmp_path, [tiny_layer(b"new")], [source])
    planned = single(client, source, f"{prefix}/out:1")
    assert planned.status is Status.CONVERT and "the source changed" in planned.reason


def test_foreign_destination_is_converted_over(client: RegistryClient, prefix: str, tmp_path: Path) -> None:
    push_image(client, tmp_path, [tiny_layer()], [f"{prefix}/src:1", f"{prefix}/out:1"])
    planned = single(client, f"{prefix}/src:1", f"{prefix}/out:1")
    assert planned.status is Status.CONVERT
    assert planned.reason == "the destination was not made by erofs-converter"


def push_index(client: RegistryClient, prefix: str, tmp_path: Path) -> str:
    """``PREFIX/multi:1``: an index of an amd64 and an arm64 image (different layers)."""
    entries = []
    for arch, text in (("amd64", b"amd64"), ("arm64", b"arm64")):
        digest = push_image(client, tmp_path, [tiny_layer(text)], [f"{prefix}/multi:{arch}"], architecture=arch)
        data, _, _ = client.get_manifest(parse_reference(f"{prefix}/multi:{arch}"))
        entries.append({"mediaType": MediaType.OCI_MANIFEST.value, "digest": str(digest), "size": len(data),
                        "platform": {"architecture": arch, "os": "linux"}})
    index = json.dumps({"schemaVersion": 2, "mediaType": MediaType.OCI_INDEX.value, "manifests": entries}).encode()
    ref = parse_reference(f"{prefix}/multi:1")
    client.put_manifest(ref.registry, ref.repository, "1", index, MediaType.OCI_INDEX.value)
    return str(ref)


def test_index_idempotency_checks_each_platform_manifest(client: RegistryClient, prefix: str,
                                                        tmp_path: Path) -> None:
    source = push_index(client, prefix, tmp_path)
    dest = f"{prefix}/multi-out:1"
    amd64 = "platforms: [linux/amd64]"
    job = make_job(f"""
        images:
          - source: "{source}"
            dest: "{dest}"
            platforms: [linux/amd64]
        """)
    report = run_job(job, client=client, options=RunOptions(workdir=tmp_path / "work"))
    assert [i.status for i in report.images] == ["converted"], report.images[0].error
    assert single(client, source, dest, amd64).status is Status.SKIP
    everything = single(client, source, dest)
    assert everything.status is Status.CONVERT
    assert everything.reason == "made with platforms linux/amd64, want all"
    merged = single(client, source, dest, amd64, "merge_index: true")
    assert merged.reason == "merge_index changed to true"
    lz4 = single(client, source, dest, amd64, "to: erofs+lz4")
    assert lz4.reason == "made with format erofs, want erofs+lz4"
    # a platform manifest that lost its provenance is not trusted
    index = json.loads(client.get_manifest(parse_reference(dest)).data)
    child_ref = parse_reference(dest)
    child_digest = Digest.parse(index["manifests"][0]["digest"])
    child = json.loads(client.get_manifest(child_ref.registry, child_ref.repository, child_digest).data)
    del child["annotations"]
    child_bytes = json.dumps(child).encode()
    new_digest = client.put_manifest(child_ref.registry, child_ref.repository, str(Digest.from_bytes(child_bytes)),
                                     child_bytes, MediaType.OCI_MANIFEST.value)
    index["manifests"][0]["digest"] = str(new_digest)
    index["manifests"][0]["size"] = len(child_bytes)
    client.put_manifest(child_ref.registry, child_ref.repository, "1", json.dumps(index).encode(),
                        MediaType.OCI_INDEX.value)
    tampered = single(client, source, dest, amd64)
    assert tampered.status is Status.CONVERT and "has no provenance" in tampered.reason


def test_conversion_names_its_source_as_subject_and_plan_checks_it(
        client: RegistryClient, prefix: str, converted: tuple[str, Digest]) -> None:
    """The skip needs the subject and the source-digest annotation to agree."""
    source, digest = converted
    data, _, _ = client.get_manifest(parse_reference(f"{prefix}/out:1@{digest}"))
    doc = json.loads(data)
    src_digest = client.get_manifest(parse_reference(source)).digest
    assert doc["subject"]["digest"] == str(src_digest)
    doc["subject"]["digest"] = "sha256:" + "1" * 64  # a conversion claiming another subject
    forged = json.dumps(doc).encode()
    out = parse_reference(f"{prefix}/out:1")
    client.put_manifest(out.registry, out.repository, "1", forged, MediaType.OCI_MANIFEST.value)
    planned = single(client, source, f"{prefix}/out:1")
    assert planned.status is Status.CONVERT
    assert planned.reason == "the destination's subject and source-digest annotation disagree"


def test_referrers_fallback_tags_are_not_mirrored(client: RegistryClient, prefix: str, tmp_path: Path) -> None:
    digest = push_image(client, tmp_path, [tiny_layer()], [f"{prefix}/refd:1.0"])
    index = json.dumps({"schemaVersion": 2, "mediaType": MediaType.OCI_INDEX.value, "manifests": []}).encode()
    ref = parse_reference(f"{prefix}/refd:1.0")
    client.put_manifest(ref.registry, ref.repository, f"sha256-{digest.hex}", index, MediaType.OCI_INDEX.value)
    assert f"sha256-{digest.hex}" in client.list_tags(ref.registry, ref.repository)
    plan = make_plan(make_job(f"""
        defaults:
          dest: "{prefix}/refd-out/{{repository}}:{{tag}}-{{format}}"
        images:
          - source: {prefix}/refd
            tags: {{include: ["*"]}}
        """), client)
    assert [p.source.rsplit(":", 1)[1] for p in plan.images] == ["1.0"]
