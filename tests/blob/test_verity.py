"""Our dm-verity tree is byte for byte what `veritysetup format` writes, and `veritysetup verify`
accepts its root digest and rejects data with one flipped bit (cryptsetup is the oracle)."""

from __future__ import annotations

import os
import random
import subprocess
import uuid
from pathlib import Path

import pytest

from converter.blob.verity import SALT, VerityBuilder, level_blocks, tree_size

VOLUME = uuid.UUID("12345678-1234-5678-1234-567812345678")


def build(data: bytes, step: int) -> tuple[bytes, bytes]:
    builder = VerityBuilder()
    try:
        for i in range(0, len(data), step):
            builder.update(data[i:i + step])
        root, pieces = builder.tree(volume=VOLUME)
        return root, b"".join(pieces)
    finally:
        builder.close()


@pytest.mark.parametrize("blocks", [1, 2, 127, 128, 129, 128 * 128, 128 * 128 + 1],
                         ids=lambda b: f"{b}-blocks")
def test_matches_veritysetup_format(tmp_path: Path, blocks: int) -> None:
    data = random.Random(blocks).randbytes(blocks * 4096)
    root, tree = build(data, step=10_000 if blocks < 1000 else 1 << 20)
    assert len(tree) == tree_size(len(data)) == 4096 * (1 + sum(level_blocks(blocks)))
    ours = tmp_path / "ours"
    ours.write_bytes(data + tree)
    ok = subprocess.run(["veritysetup", "verify", str(ours), str(ours), root.hex(), f"--hash-offset={len(data)}"],
                        capture_output=True, text=True, check=False)
    assert ok.returncode == 0, ok.stderr
    theirs = tmp_path / "theirs"
    theirs.write_bytes(data)
    made = subprocess.run(["veritysetup", "format", str(theirs), str(theirs), f"--hash-offset={len(data)}",
                           "--salt", SALT.hex(), "--uuid", str(VOLUME)], capture_output=True, text=True, check=True)
    assert root.hex() in made.stdout
    assert theirs.read_bytes() == data + tree


def test_flipped_bit_is_rejected(tmp_path: Path) -> None:
    data = os.urandom(300 * 4096)
    root, tree = build(data, step=4096)
    for where in (0, 150 * 4096 + 17, len(data) - 1, len(data) + 4096 + 5):  # data, then the tree itself
        bad = bytearray(data + tree)
        bad[where] ^= 0x40
        path = tmp_path / "bad"
        path.write_bytes(bytes(bad))
        res = subprocess.run(["veritysetup", "verify", str(path), str(path), root.hex(),
                              f"--hash-offset={len(data)}"], capture_output=True, text=True, check=False)
        assert res.returncode != 0, where


def test_data_must_be_whole_blocks() -> None:
    builder = VerityBuilder()
    builder.update(b"x" * 5000)
    with pytest.raises(ValueError, match="multiple of 4096"):
        builder.tree(volume=VOLUME)
    builder.close()
