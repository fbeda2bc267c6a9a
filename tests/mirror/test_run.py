"""End to end against a real registry: images sharing base layers (first run converts with cache
hits, second run skips everything, quickly), three shard processes at once (each image converted
exactly once, the same results as one process), failure isolation, and the demo."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path

import pytest

from converter.cancel import CancelScope
from converter.erofs.tools import erofs_utils
from converter.errors import RegistryError, ToolError
from converter.mirror.jobs import Job, parse_job
from converter.mirror.plan import shard_of, source_key
from converter.mirror.run import MirrorReport, RunOptions, format_report, run_job
from converter.reference import Digest, parse_reference
from converter.registry.client import RegistryClient
from converter.registry.retry import RequestCancelled
from converter.testing.mirror_demo import run_mirror_demo
from converter.testing.sample import sample_layers
from converter.transports.registry import BLOB_UNKNOWN_RETRY, BlobLocks, RegistrySink, retry_blob_unknown
from tests.mirror.helpers import CountingEngine, other_top_layer, push_image, push_shared_base_images
from tests.registry.helpers import Recorder

REPO_ROOT = Path(__file__).resolve().parents[2]
LAYERS = {"app": 3, "base": 2, "mid": 3}


@pytest.fixture(scope="module")
def lz4() -> str:
    """erofs+lz4 needs mkfs.erofs; the demo's format, so the mkfs path is covered end to end."""
    try:
        erofs_utils(feature="the mirror end-to-end tests")
    except ToolError as exc:
        pytest.skip(str(exc))
    return "erofs+lz4"


def shared_job(prefix: str, name: str, fmt: str, *, cache: bool = True, sources: list[str] | None = None) -> Job:
    lines = ["defaults:", f"  to: {fmt}", f'  dest: "{prefix}/{name}/{{repository}}:{{tag}}-{{format}}"',
             f"  cache_repo: {prefix}/{name}-cache" if cache else "  cache_repo: null", "images:"]
    lines += [f"  - source: {s}" for s in (sources or [f"{prefix}/{r}:1.0" for r in LAYERS])]
    return parse_job("\n".join(lines) + "\n", filename=f"{name}.yaml")


def by_source(report: MirrorReport) -> dict[str, str]:
    return {i.source: str(i.dest_digest) for i in report.images}


def test_shared_base_layers_then_everything_skipped(client: RegistryClient, prefix: str, tmp_path: Path,
                                                    lz4: str) -> None:
    push_shared_base_images(client, tmp_path / "images", prefix)
    options = RunOptions(jobs=3, workdir=tmp_path / "work")
    engine = CountingEngine()
    first = run_job(shared_job(prefix, "mirror", lz4), client=client, options=options, convert_layer=engine)
    assert [i.status for i in first.images] == ["converted"] * 3, [i.error for i in first.images]
    for image in first.images:
        repo = image.source.rsplit("/", 1)[1].split(":")[0]
        assert image.layers_converted + image.layers_reused == LAYERS[repo]
    # 8 layers, 4 of them distinct: each distinct layer built once, the others came from the cache
    assert sorted(Counter(engine.built).values()) == [1, 1, 1, 1]
    assert first.summary["layers_converted"] == 4 and first.summary["layers_reused"] == 4
    assert first.summary["converted"] == 3 and not first.failed

    # the cache never changes a result: the same images converted without it
    plain = run_job(shared_job(prefix, "plain", lz4, cache=False), client=client, options=options)
    assert by_source(plain) == by_source(first)
    assert plain.summary["layers_converted"] == 8 and plain.summary["layers_reused"] == 0

    again = CountingEngine()
    second = run_job(shared_job(prefix, "mirror", lz4), client=client, options=options, convert_layer=again)
    assert [i.status for i in second.images] == ["skipped"] * 3
    assert again.built == [] and second.summary["layers_converted"] == 0
    assert {i.source: i.dest_digest for i in second.images} == by_source(first)
    assert second.seconds < first.seconds and second.seconds < 5
    table = format_report(second)
    assert "0 converted, 3 skipped, 0 failed" in table and table.count("already converted") == 3


def test_a_failing_image_does_not_stop_the_others(client: RegistryClient, prefix: str, tmp_path: Path) -> None:
    push_image(client, tmp_path / "images", sample_layers()[:1], [f"{prefix}/ok:1"])
    # a config that lies about its layers: the pipeline refuses this image
    push_image(client, tmp_path / "images", [other_top_layer()], [f"{prefix}/bad:1"])
    bad = parse_reference(f"{prefix}/bad:1")
    manifest = json.loads(client.get_manifest(bad).data)
    manifest["layers"].append(manifest["layers"][0])
    client.put_manifest(bad.registry, bad.repository, "1", json.dumps(manifest).encode(), manifest["mediaType"])
    job = parse_job(f"""
defaults:
  dest: "{prefix}/out/{{repository}}:{{tag}}"
images:
  - source: {prefix}/bad:1
  - source: {prefix}/missing:1
  - source: {prefix}/ok:1
""", filename="job.yaml")
    finished: list[str] = []
    report = run_job(job, client=client, options=RunOptions(jobs=2, workdir=tmp_path / "work"),
                     on_image=lambda image: finished.append(f"{image.status} {image.source}"))
    assert [i.status for i in report.images] == ["failed", "failed", "converted"]
    # progress callbacks for the images that went through the pipeline (missing:1 failed at planning)
    assert sorted(finished) == [f"converted {prefix}/ok:1", f"failed {prefix}/bad:1"]
    assert "diff_ids has 1 entries but the manifest has 2 layers" in (report.images[0].error or "")
    assert "404" in (report.images[1].error or "")
    assert report.failed and report.summary["failed"] == 2
    doc = report.to_json()
    assert set(doc["images"][0]) >= {"source", "dest", "status", "source_digest", "dest_digest",
                                     "layers_converted", "layers_reused", "bytes", "seconds", "error"}
    assert doc["images"][2]["error"] is None and doc["images"][2]["bytes"] > 0


def test_three_shard_processes_convert_each_image_once(client: RegistryClient, prefix: str, tmp_path: Path,
                                                       lz4: str) -> None:
    # Tags chosen so that every shard gets one image of each repository (3 shards x 3 images).
    picked: dict[tuple[str, int], str] = {}
    for n in range(200):
        for repo in LAYERS:
            key = source_key(parse_reference(f"{prefix}/{repo}:v{n}"))
            picked.setdefault((repo, shard_of(key, 3)), f"v{n}")
    assert len(picked) == 9
    layers = sample_layers()
    contents = {"app": layers, "base": layers[:2], "mid": [*layers[:2], other_top_layer()]}
    for repo, content in contents.items():
        push_image(client, tmp_path / "images", content,
                   [f"{prefix}/{repo}:{tag}" for (r, _), tag in sorted(picked.items()) if r == repo])
    sources = [f"{prefix}/{repo}:{tag}" for (repo, _), tag in sorted(picked.items())]

    single = run_job(shared_job(prefix, "single", lz4, sources=sources), client=client,
                     options=RunOptions(jobs=3, workdir=tmp_path / "work"))
    assert single.summary["converted"] == 9, format_report(single)
    # within one process each distinct layer is built once (L0, L1, and the two top layers of app
    # and mid); every other layer of the 9 images comes from the cache
    assert (single.summary["layers_converted"], single.summary["layers_reused"]) == (4, 20), format_report(single)

    job_file = tmp_path / "sharded.yaml"
    lines = ["defaults:", f"  to: {lz4}", f'  dest: "{prefix}/sharded/{{repository}}:{{tag}}-{{format}}"',
             f"  cache_repo: {prefix}/sharded-cache", "images:", *(f"  - source: {s}" for s in sources)]
    job_file.write_text("\n".join(lines) + "\n")
    processes = []
    for index in range(3):
        report = tmp_path / f"report-{index}.json"
        command = [sys.executable, "-m", "converter.cli", "mirror", str(job_file), "--shard", f"{index}/3",
                   "--jobs", "2", "--report", str(report), "--log-format", "json",
                   "--workdir", str(tmp_path / f"work-{index}")]
        processes.append((report, subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.PIPE,
                                                   stderr=subprocess.PIPE, text=True)))
    reports = []
    for report, process in processes:
        _, err = process.communicate(timeout=300)
        assert process.returncode == 0, err[-3000:]
        reports.append(json.loads(report.read_text()))

    converted = Counter(i["source"] for r in reports for i in r["images"] if i["status"] == "converted")
    assert converted == Counter(sources)  # every image exactly once, by exactly one shard
    assert all(i["status"] == "converted" for r in reports for i in r["images"])
    for index, doc in enumerate(reports):
        assert doc["summary"]["shard"] == f"{index}/3" and doc["summary"]["images_all_shards"] == 9
        assert doc["summary"]["images"] == 3
        for image in doc["images"]:
            repo = image["source"].rsplit("/", 1)[1].split(":")[0]
            assert image["layers_converted"] + image["layers_reused"] == LAYERS[repo]
    # Shards share layers through the registry cache (hits are counted in their reports). How many
    # each shard reuses depends on timing: three processes race to store the same entries, and
    # distribution briefly loses a blob's link when it is committed twice, which sends a lookup to
    # the fallback (rebuild) path. The exact in-process count is checked on the single run above.
    assert sum(doc["summary"]["layers_reused"] for doc in reports) >= 4, json.dumps(reports, indent=1)
    sharded = {i["source"]: i["dest_digest"] for r in reports for i in r["images"]}
    assert sharded == by_source(single)  # identical to the single-process run

    # and a rerun of the whole job finds everything done
    rerun = run_job(parse_job(job_file.read_text(), filename=str(job_file)), client=client,
                    options=RunOptions(jobs=3, workdir=tmp_path / "work"))
    assert rerun.summary["skipped"] == 9


def test_dry_run_reports_without_converting(client: RegistryClient, prefix: str, tmp_path: Path) -> None:
    push_image(client, tmp_path / "images", sample_layers()[:1], [f"{prefix}/one:1", f"{prefix}/two:1"])
    job = parse_job(f"""
defaults:
  dest: "{prefix}/out/{{repository}}:{{tag}}"
images:
  - source: {prefix}/one:1
  - source: {prefix}/two:1
""", filename="job.yaml")
    run_job(parse_job(f"""
images:
  - {{source: "{prefix}/one:1", dest: "{prefix}/out/{prefix.split('/', 1)[1]}/one:1"}}
""", filename="pre.yaml"), client=client, options=RunOptions(workdir=tmp_path / "work"))
    engine = CountingEngine()
    report = run_job(job, client=client, dry_run=True, convert_layer=engine)
    assert engine.built == [] and report.dry_run
    assert [i.status for i in report.images] == ["skipped", "pending"]
    assert report.images[1].bytes > 0 and report.images[0].bytes == 0
    with pytest.raises(Exception, match="404"):
        client.get_manifest(parse_reference(report.images[1].dest))
    assert "1 to convert" in format_report(report)
    assert Digest.parse(str(report.images[0].dest_digest))


def test_mirror_demo() -> None:
    assert run_mirror_demo(Path(__file__).resolve().parents[2] / "pipelines" / "local-sample.yaml") == 0


# --- the registry race the mirror guards against --------------------------------------------


def test_retry_blob_unknown_retries_only_that_error() -> None:
    sleeps: list[float] = []
    answers: list[Exception | str] = [RegistryError("x", code="DIGEST_INVALID,MANIFEST_BLOB_UNKNOWN"),
                                      RegistryError("x", code="MANIFEST_BLOB_UNKNOWN"), "ok"]

    def put() -> str:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    policy = dataclasses.replace(BLOB_UNKNOWN_RETRY, sleep=sleeps.append, random=lambda: 0.0)
    assert retry_blob_unknown(put, what="pushing", policy=policy) == "ok" and sleeps == [0.2, 0.4]
    answers[:] = [RegistryError("x", code="MANIFEST_BLOB_UNKNOWN")] * 3
    with pytest.raises(RegistryError):
        retry_blob_unknown(put, what="pushing", policy=policy)
    assert answers == []
    answers[:] = [RegistryError("x", code="DENIED"), "ok"]
    with pytest.raises(RegistryError, match="x"):
        retry_blob_unknown(put, what="pushing", policy=policy)


def test_retry_blob_unknown_stops_in_a_cancelled_scope() -> None:
    calls: list[int] = []

    def put() -> str:
        calls.append(1)
        raise RegistryError("x", code="MANIFEST_BLOB_UNKNOWN")

    scope = CancelScope()
    with scope.entered():
        scope.cancel()
        with pytest.raises(RequestCancelled):
            retry_blob_unknown(put, what="pushing")
    assert calls == []


def test_mirror_sink_pushes_a_shared_blob_once(prefix: str, tmp_path: Path) -> None:
    recorder = Recorder()
    blob = tmp_path / "blob"
    blob.write_bytes(b"shared layer" * 1000)
    digest = Digest.from_bytes(blob.read_bytes())
    locks = BlobLocks()
    with RegistryClient(transport=recorder) as client:
        ref = parse_reference(f"{prefix}/shared:1")
        sinks = [RegistrySink(client, ref, locks) for _ in range(6)]
        threads = [threading.Thread(target=s.push_blob, args=(blob, digest, blob.stat().st_size)) for s in sinks]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert sinks[0].has_blob(digest)
    uploads = [s for s in recorder.seen if s.method == "PUT" and "/blobs/uploads/" in s.url.path]
    assert len(uploads) == 1
