"""``make mirror-demo``: mirror the embedded sample image into a local registry, twice.

Why: it shows a mirror job end to end on any machine with Debian's docker-registry and no
network — tag filters, the layer cache (the second image's layers are mounted, not rebuilt)
and idempotency (the second run skips everything). Steps:

1. start docker-registry on a free loopback port (``converter.testing.localregistry``);
2. push the sample image as ``sample/app:1.0`` and an image of its first two layers as
   ``sample/base:0.9`` and ``sample/base:1.0`` (the same layer blobs: a shared base);
3. write a temporary job file from ``pipelines/local-sample.yaml`` with ``localhost:5000``
   replaced by the registry's host;
4. run the job twice with ``convert mirror`` and print both JSON reports;
5. run the same job into a fresh destination as three concurrent shard processes
   (``--shard I/3``), as a Kubernetes Indexed Job would: each image is converted by exactly one
   shard, and every layer comes from the registry-backed cache the first run filled.

``run_mirror_demo`` returns 0 when the first run converted everything (reusing cached layers)
and the second skipped everything. ``push_layout_image`` is also used by the tests.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from converter.log import configure
from converter.oci.model import parse_image_manifest
from converter.reference import Digest, OciLayoutRef, Reference, parse_reference
from converter.registry.client import RegistryClient
from converter.testing.localregistry import local_registry
from converter.testing.sample import sample_layers, write_oci_layout
from converter.transports import LayoutSource, RegistrySink

PLACEHOLDER_HOST = "localhost:5000"


def push_layout_image(client: RegistryClient, layout: Path, tags: Sequence[Reference]) -> Digest:
    """Push the single image of an OCI layout directory (blobs, then the manifest) under ``tags``."""
    source = LayoutSource(OciLayoutRef(layout))
    data, media_type, digest = source.get_manifest()
    manifest = parse_image_manifest(data, media_type, digest=digest, what=f"manifest in {layout}")
    for ref in tags:
        sink = RegistrySink(client, ref)
        for desc in (manifest.config, *manifest.layers):
            if not sink.has_blob(desc.digest):
                sink.push_blob(source.blob_path(desc.digest), desc.digest, desc.size)
        assert ref.tag is not None
        sink.put_manifest(data, media_type, ref.tag)
    return digest


def push_sample_images(client: RegistryClient, host: str, workdir: Path) -> None:
    """``HOST/sample/app:1.0`` (the sample image) and ``HOST/sample/base:{0.9,1.0}`` (its first two layers)."""
    layers = sample_layers()
    write_oci_layout(workdir / "app", layers)
    write_oci_layout(workdir / "base", layers[:2])
    push_layout_image(client, workdir / "app", [parse_reference(f"{host}/sample/app:1.0")])
    push_layout_image(client, workdir / "base", [parse_reference(f"{host}/sample/base:0.9"),
                                                 parse_reference(f"{host}/sample/base:1.0")])


def _summary(path: Path) -> dict[str, object]:
    summary: dict[str, object] = json.loads(path.read_text())["summary"]
    return summary


def run_mirror_demo(pipeline: Path) -> int:
    """Run the demo (see the module docstring); 0 if both runs did what they should."""
    if not pipeline.is_file():
        print(f"mirror demo: {pipeline} is missing (run the demo from a checkout of the repository)")
        return 1
    configure(fmt="auto", verbosity=0)
    with tempfile.TemporaryDirectory(prefix="mirror-demo-") as tmp, local_registry() as registry:
        work = Path(tmp)
        print(f"mirror demo: registry at {registry.host}, pushing the sample images")
        with RegistryClient() as client:
            push_sample_images(client, registry.host, work)
        job = work / "local-sample.yaml"
        job.write_text(pipeline.read_text().replace(PLACEHOLDER_HOST, registry.host))
        summaries = []
        for run in (1, 2):
            report = work / f"report-{run}.json"
            print(f"\nmirror demo: run {run}: convert mirror {pipeline.name} --report {report.name}")
            status = subprocess.run([sys.executable, "-m", "converter.cli", "mirror", str(job), "--jobs", "2",
                                     "--report", str(report)], check=False).returncode
            print(report.read_text())
            if status != 0:
                print(f"mirror demo: run {run} failed (exit status {status})")
                return status
            summaries.append(_summary(report))
        first, second = summaries
        shards = _run_shards(job, work)
        converted = sum(int(str(sh["converted"])) for sh in shards)
        reused = sum(int(str(sh["layers_reused"])) for sh in shards)
        built = sum(int(str(sh["layers_converted"])) for sh in shards)
        ok = (first["failed"] == 0 and first["converted"] == first["images"] and int(str(first["layers_reused"])) > 0
              and second["skipped"] == second["images"] and second["converted"] == 0
              and converted == first["images"] and all(sh["failed"] == 0 for sh in shards))
        print(f"mirror demo: first run converted {first['converted']} images ({first['layers_converted']} layers "
              f"built, {first['layers_reused']} from the cache); second run skipped {second['skipped']} of "
              f"{second['images']} in {second['seconds']}s; 3 shards converted {converted} images into a fresh "
              f"destination ({built} layers built, {reused} from the cache)"
              + ("" if ok else " -- NOT what was expected"))
        return 0 if ok else 1


def _run_shards(job: Path, work: Path) -> list[dict[str, object]]:
    """The job into ``…/mirror-sharded/…`` as three concurrent ``--shard I/3`` processes."""
    sharded = work / "local-sample-sharded.yaml"
    sharded.write_text(job.read_text().replace("/mirror/{", "/mirror-sharded/{"))
    print(f"\nmirror demo: run 3: three concurrent processes: convert mirror {sharded.name} --shard I/3")
    procs = []
    for i in range(3):
        report = work / f"report-shard-{i}.json"
        cmd = [sys.executable, "-m", "converter.cli", "mirror", str(sharded), "--shard", f"{i}/3",
               "--report", str(report), "--log-format", "json", "-q"]
        procs.append((subprocess.Popen(cmd), report))
    summaries = []
    for i, (proc, report) in enumerate(procs):
        proc.wait()
        summary = _summary(report)
        print(f"  shard {i}/3: exit {proc.returncode}, converted {summary['converted']}, skipped "
              f"{summary['skipped']}, layers built {summary['layers_converted']}, from the cache "
              f"{summary['layers_reused']}, {summary['seconds']}s")
        summaries.append(summary)
    return summaries


if __name__ == "__main__":
    raise SystemExit(run_mirror_demo(Path(sys.argv[1] if len(sys.argv) > 1 else "pipelines/local-sample.yaml")))
