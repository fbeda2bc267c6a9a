"""The commands being raced: the C-toolchain baseline users run today, and ours.

Baseline, per layer::

    gzip -dc LAYER | mkfs.erofs --tar=f --aufs -b4096 -T0 --mkfs-time -Uclear [-zlz4] OUT

Baseline, end to end: ``skopeo copy docker://SRC dir:`` out, the per-layer pipeline above for
each layer in order (for ``erofs.zstd`` followed by ``zstd -3 -T0`` of the image),
``rewrite_manifest.py`` (new layer digests, sizes and media types, ``rootfs.diff_ids``,
``os.features``), and ``skopeo copy dir: docker://DEST`` back.

Ours: ``erofs-convert layer`` and ``erofs-convert SRC --dest DEST``. Every builder returns an
argv list for ``bench.measure.run_measured``; the shell scripts take their values as positional
parameters, never interpolated.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from converter.erofs.tools import erofs_utils

FORMATS = ("erofs", "erofs+lz4")
#: Image mode also races ``--blob-compression zstd`` (named by its tag suffix) against the user's
#: script that runs ``zstd -3 -T0`` over each mkfs.erofs image before pushing.
BLOB_ZSTD = "erofs.zstd"
IMAGE_FORMATS = (*FORMATS, BLOB_ZSTD)
MKFS_COMMON = ("--quiet", "--tar=f", "--aufs", "-b4096", "-T0", "--mkfs-time", "-Uclear")
REWRITE_SCRIPT = Path(__file__).with_name("rewrite_manifest.py")

_LAYER_SCRIPT = """set -o pipefail
gzip -dc "$1" | "$2" {common} $3 "$4"
""".format(common=" ".join(MKFS_COMMON))

_IMAGE_SCRIPT = """set -euo pipefail
src=$1 dest=$2 work=$3 mkfs=$4 zopt=$5 py=$6 rewrite=$7 blobzstd=$8
skopeo copy --quiet --src-tls-verify=false "docker://$src" "dir:$work/src"
mkdir -p "$work/out"
for digest in $(jq -r '.layers[].digest' "$work/src/manifest.json"); do
  hex=${{digest#sha256:}}
  gzip -dc "$work/src/$hex" | "$mkfs" {common} $zopt "$work/out/$hex.erofs"
  if [ -n "$blobzstd" ]; then zstd -q -3 -T0 "$work/out/$hex.erofs" -o "$work/out/$hex.erofs.zst"; fi
done
if [ -n "$blobzstd" ]; then
  "$py" "$rewrite" "$work/src" "$work/out" application/vnd.erofs+zstd
else
  "$py" "$rewrite" "$work/src" "$work/out"
fi
skopeo copy --quiet --dest-tls-verify=false "dir:$work/out" "docker://$dest"
""".format(common=" ".join(MKFS_COMMON))


def mkfs_option(fmt: str) -> str:
    """The mkfs.erofs compression option for one of FORMATS ("" for raw)."""
    if fmt in ("erofs", BLOB_ZSTD):
        return ""
    algorithm = fmt.split("+", 1)[1]
    return f"-z{algorithm}"


@dataclass(frozen=True, slots=True)
class Tools:
    """Resolved programs: the same mkfs.erofs our converter uses, our CLI, a python3 for the one-off."""

    mkfs: Path
    convert: Path
    python3: str

    @classmethod
    def find(cls) -> Tools:
        missing = [p for p in ("gzip", "skopeo", "jq", "bash", "zstd") if shutil.which(p) is None]
        if missing:
            raise SystemExit(f"bench: missing programs: {', '.join(missing)} (make setup installs them)")
        convert = Path(sys.executable).with_name("erofs-convert")
        if not convert.exists():
            found = shutil.which("erofs-convert")
            if found is None:
                raise SystemExit("bench: erofs-convert is not installed in the venv (make setup)")
            convert = Path(found)
        python3 = "/usr/bin/python3" if Path("/usr/bin/python3").exists() else sys.executable
        return cls(mkfs=erofs_utils(feature="the benchmark").mkfs, convert=convert, python3=python3)


def baseline_layer_argv(tools: Tools, gz: Path, out: Path, fmt: str) -> list[str]:
    """``gzip -dc GZ | mkfs.erofs --tar=f --aufs … OUT`` via bash (pipefail)."""
    return ["bash", "-c", _LAYER_SCRIPT, "bash", str(gz), str(tools.mkfs), mkfs_option(fmt), str(out)]


def ours_layer_argv(tools: Tools, gz: Path, out: Path, fmt: str, *, bottom: bool) -> list[str]:
    """``erofs-convert layer GZ -o OUT --to FMT [--bottom]``."""
    return [str(tools.convert), "layer", str(gz), "-o", str(out), "--to", fmt, *(["--bottom"] if bottom else [])]


def baseline_image_argv(tools: Tools, src_ref: str, dest_ref: str, work: Path, fmt: str) -> list[str]:
    """The whole skopeo → gzip|mkfs.erofs per layer → rewrite → skopeo pipeline as one bash script."""
    return ["bash", "-c", _IMAGE_SCRIPT, "bash", src_ref, dest_ref, str(work), str(tools.mkfs), mkfs_option(fmt),
            tools.python3, str(REWRITE_SCRIPT), "1" if fmt == BLOB_ZSTD else ""]


def ours_image_argv(tools: Tools, src_ref: str, dest_ref: str, fmt: str, host: str) -> list[str]:
    """``erofs-convert SRC --dest DEST --to FMT --plain-http HOST -q`` (prints REF@sha256:… on stdout)."""
    if fmt == BLOB_ZSTD:
        return [str(tools.convert), src_ref, "--dest", dest_ref, "--to", "erofs", "--blob-compression", "zstd",
                "--plain-http", host, "-q"]
    return [str(tools.convert), src_ref, "--dest", dest_ref, "--to", fmt, "--plain-http", host, "-q"]


def image_command_status(tools: Tools) -> tuple[bool, str]:
    """Whether ``convert SOURCE --dest DEST`` exists yet (converter.cli.image and a working --help)."""
    if importlib.util.find_spec("converter.cli.image") is None:
        return False, "converter/cli/image.py does not exist yet"
    try:
        res = subprocess.run([str(tools.convert), "--help"], capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return False, f"erofs-convert --help failed: {exc}"
    if res.returncode != 0:
        return False, f"erofs-convert --help exited {res.returncode}: {(res.stderr or res.stdout).strip()[-300:]}"
    return True, "available"
