"""`make demo`: the main job end to end on an embedded sample image and a local registry.

Builds the sample image (converter.testing.sample: deletions, an opaque directory, file<->directory
changes, hard links, symlinks, xattrs, a setuid file), starts Debian's docker-registry on a free
loopback port, pushes the sample as tar+gzip with our registry client, converts it to ``erofs``
and ``erofs+lz4`` with the real command line, and shows what came out: the manifest, the sizes
and, as root, the kernel's overlay mount of the converted layers. The registry is stopped at
the end whatever happens.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from converter import log as logsetup
from converter.errors import ConverterError
from converter.oci.model import Manifest, parse_manifest
from converter.reference import Digest, parse_reference
from converter.registry.client import RegistryClient
from converter.testing.localregistry import local_registry
from converter.testing.sample import sample_layers, write_oci_layout

REPO = "sample/app"
TAG = "1.0"


def say(text: str = "") -> None:
    print(text, flush=True)


def push_layout(layout: Path, client: RegistryClient, host: str) -> str:
    """Push every blob of the sample OCI layout, then its manifest under ``TAG``."""
    index = json.loads((layout / "index.json").read_text())
    desc = index["manifests"][0]
    mdigest = Digest.parse(desc["digest"])
    mbytes = (layout / "blobs" / "sha256" / mdigest.hex).read_bytes()
    manifest = json.loads(mbytes)
    for blob in [manifest["config"], *manifest["layers"]]:
        d = Digest.parse(blob["digest"])
        client.push_blob(host, REPO, d, blob["size"], layout / "blobs" / "sha256" / d.hex)
    client.put_manifest(host, REPO, TAG, mbytes, desc["mediaType"])
    return str(mdigest)


def convert(args: list[str]) -> str:
    """Run the real command line as a user would; return the line it printed (REF@sha256:...)."""
    proc = subprocess.run([sys.executable, "-m", "converter.cli", *args], stdout=subprocess.PIPE, text=True,
                          check=False)
    if proc.returncode != 0:
        raise ConverterError(f"convert {' '.join(args)} failed with exit status {proc.returncode}")
    return proc.stdout.strip()


def show_image(client: RegistryClient, ref_line: str, workdir: Path) -> list[Path]:
    """Print a manifest summary and fetch the layer blobs; returns the blob paths, bottom first."""
    ref = parse_reference(ref_line)
    assert ref.digest is not None
    data, media_type, _ = client.get_manifest(ref.registry, ref.repository, str(ref.digest))
    manifest = parse_manifest(data, media_type)
    assert isinstance(manifest, Manifest), "the demo converts a single-platform image"
    config = json.loads(client.get_blob_bytes(ref.registry, ref.repository, manifest.config.digest,
                                              max_size=1 << 20))
    say(f"  manifest {ref.digest} ({media_type})")
    say(f"  config: os.features={config.get('os.features')} rootfs.diff_ids={len(config['rootfs']['diff_ids'])}")
    for k, v in sorted((manifest.annotations or {}).items()):
        say(f"  annotation {k}={v}")
    paths = []
    for i, layer in enumerate(manifest.layers):
        role = (layer.annotations or {}).get("org.erofs.role", "-")
        say(f"  layer {i}: {layer.media_type} {layer.size:>8} bytes role={role} {layer.digest}")
        p = workdir / f"{layer.digest.hex}.erofs"
        with client.open_blob(ref.registry, ref.repository, layer.digest) as src, open(p, "wb") as out:
            while chunk := src.read(1 << 20):
                out.write(chunk)
        paths.append(p)
    return paths


@contextlib.contextmanager
def overlay_mount(layers: list[Path], workdir: Path) -> Iterator[Path]:
    mounts: list[Path] = []
    try:
        for i, layer in enumerate(layers):
            m = workdir / f"lower{i}"
            m.mkdir()
            subprocess.run(["mount", "-t", "erofs", "-o", "ro,loop", str(layer), str(m)], check=True)
            mounts.append(m)
        merged = workdir / "merged"
        merged.mkdir()
        stack = mounts if len(mounts) > 1 else mounts * 2
        lowerdir = ":".join(str(p) for p in reversed(stack))
        subprocess.run(["mount", "-t", "overlay", "overlay", "-o", f"ro,lowerdir={lowerdir}", str(merged)],
                       check=True)
        mounts.append(merged)
        yield merged
    finally:
        for m in reversed(mounts):
            subprocess.run(["umount", str(m)], check=False)


def kernel_listing(layers: list[Path], workdir: Path) -> None:
    if os.geteuid() != 0 or "erofs" not in Path("/proc/filesystems").read_text():
        say("  (not root or no erofs in the kernel: skipping the overlay mount listing)")
        return
    with overlay_mount(layers, workdir) as merged:
        out = subprocess.run(["find", ".", "-printf", "  %M %4U/%-6G %8s %TY-%Tm-%Td %p %l\n"],
                             cwd=merged, capture_output=True, text=True, check=True).stdout
        say("  kernel overlay mount of the converted layers (find -printf):")
        for line in sorted(out.splitlines(), key=lambda s: s.split()[4]):  # by path
            say(line.rstrip())
        caps = subprocess.run(["getfattr", "-d", "-m", "-", "usr/bin/ping", "home/app/notes.txt"], cwd=merged,
                              capture_output=True, text=True, check=False).stdout
        say("  xattrs through the mount:")
        for line in caps.splitlines():
            if line.strip():
                say("    " + line)


def run_demo() -> int:
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="erofs-demo-") as tmp:
        work = Path(tmp)
        layout = write_oci_layout(work / "sample", sample_layers(), tag=TAG)
        say(f"== sample image: {len(layout.layer_tars)} tar+gzip layers in an OCI layout")
        with local_registry() as reg, RegistryClient() as client:
            say(f"== local registry on {reg.host}")
            digest = push_layout(layout.path, client, reg.host)
            source = f"{reg.host}/{REPO}:{TAG}"
            say(f"   pushed {source}@{digest}")
            for fmt in ("erofs", "erofs+lz4"):
                say(f"== convert {source} --to {fmt}")
                t0 = time.monotonic()
                line = convert([source, "--to", fmt, "--log-format", "json", "-q"])
                say(f"   -> {line}   ({time.monotonic() - t0:.2f}s)")
                layers = show_image(client, line, work)
                with tempfile.TemporaryDirectory(dir=work) as mnt:
                    kernel_listing(layers, Path(mnt))
            say(f"== done in {time.monotonic() - started:.1f}s; registry stopped")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m converter.testing.demo")
    parser.add_argument("--mirror", action="store_true", help="run the mirroring demo instead")
    parser.add_argument("--job", type=Path, default=Path("pipelines/local-sample.yaml"),
                        help="the mirroring demo's job file (default: pipelines/local-sample.yaml)")
    args = parser.parse_args(argv)
    logsetup.configure(fmt="console", verbosity=-1)  # the demo prints its own story; warnings only
    try:
        if args.mirror:
            from converter.testing.mirror_demo import run_mirror_demo

            result: int = run_mirror_demo(args.job)
            return result
        return run_demo()
    except ConverterError as exc:
        print(f"demo: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
