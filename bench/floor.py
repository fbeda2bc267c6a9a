"""The floor of a benchmark row: the work no converter can avoid, timed on this machine.

    python -m bench.floor --output-bytes N --out PATH [--hash-blobs] BLOB.tar.gz [BLOB.tar.gz ...]

For each blob: read it, decompress it with isal (the fastest gzip decoder we have), SHA-256 the
tar (its DiffID); with ``--hash-blobs`` also SHA-256 the blob itself (a registry download is
verified against its digest). Then write ``N`` bytes (the size of the output the row produced)
to ``PATH`` and SHA-256 them (the new layer's digest). One thread, 1 MiB pieces. Parsing the tar,
laying out and compressing the filesystem are not in it: the floor is what is left of the row if
those cost nothing, so ``ours / floor`` says how far our own work is from free.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from collections.abc import Sequence
from pathlib import Path

from isal import isal_zlib

PIECE = 1 << 20


def drain_blob(blob: Path, *, hash_blob: bool) -> str:
    """Read, (optionally) hash and gunzip ``blob`` (every member); the DiffID of its tar."""
    blob_hash = hashlib.sha256()
    tar_hash = hashlib.sha256()
    # wbits 47 = 32 + 15: a gzip stream, as ``gzip -dc`` reads it
    decoder = isal_zlib.decompressobj(47)
    with blob.open("rb") as f:
        while piece := f.read(PIECE):
            if hash_blob:
                blob_hash.update(piece)
            while piece:
                tar_hash.update(decoder.decompress(piece))
                piece = decoder.unused_data
                if piece:  # a multi-member gzip file: the next member starts here
                    tar_hash.update(decoder.flush())
                    decoder = isal_zlib.decompressobj(47)
        tar_hash.update(decoder.flush())
    return "sha256:" + tar_hash.hexdigest()


def write_output(path: Path, size: int) -> str:
    """Write and hash ``size`` bytes to ``path``; their digest."""
    digest = hashlib.sha256()
    zeros = bytes(PIECE)
    view = memoryview(zeros)
    with path.open("wb") as f:
        left = size
        while left > 0:
            piece = view[: min(left, PIECE)]
            f.write(piece)
            digest.update(piece)
            left -= len(piece)
    return "sha256:" + digest.hexdigest()


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.floor", description=__doc__.split("\n\n")[0] if __doc__ else "")
    p.add_argument("blobs", nargs="+", type=Path, metavar="BLOB")
    p.add_argument("--output-bytes", type=int, required=True, metavar="N")
    p.add_argument("--out", type=Path, required=True, metavar="PATH")
    p.add_argument("--hash-blobs", action="store_true")
    args = p.parse_args(argv)
    if args.output_bytes < 0:
        p.error("--output-bytes must not be negative")
    for blob in args.blobs:
        print(f"{blob.name} {drain_blob(blob, hash_blob=args.hash_blobs)}")
    print(f"output {write_output(args.out, args.output_bytes)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
