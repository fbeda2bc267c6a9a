"""`verify: true` in mirror jobs: a pushed image that does not hold against its source fails."""

from __future__ import annotations

import dataclasses
import hashlib
import stat
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from converter.convert.layer import LayerOptions, LayerResult, convert_layer
from converter.erofs import format as fmt
from converter.erofs.reader import ErofsImage
from converter.layers.model import Inode, LowerView
from converter.mirror.jobs import parse_job
from converter.mirror.run import RunOptions, run_job
from converter.registry.client import RegistryClient
from converter.testing.sample import sample_layers
from tests.mirror.helpers import push_image


def _job(prefix: str, name: str, verify: str) -> str:
    return f"""
defaults:
  dest: "{prefix}/{name}/{{repository}}:{{tag}}"
  {verify}
images:
  - source: {prefix}/app:1
"""


def _tampering(src: BinaryIO, out_path: Path, *, options: LayerOptions, lower: LowerView | None = None,
               media_type: str | None = None, layer: str = "", workdir: Path | None = None,
               progress: Callable[[int], None] | None = None,
               on_tree: Callable[[Inode], None] | None = None, source_digest: str | None = None,
                 on_data_final: Callable[[Path, bytes, int], object] | None = None) -> LayerResult:
    """The real engine, then one byte of the first plain file with data flipped (a silent corruption)."""
    result = convert_layer(src, out_path, options=options, lower=lower, media_type=media_type, layer=layer,
                           workdir=workdir, progress=progress, on_tree=on_tree, source_digest=source_digest)
    with ErofsImage.open(result.path) as img:
        target = next(((img._inode(st.nid).i_u * img.block_size) for _, st in img.walk()
                       if stat.S_ISREG(st.st_mode) and st.layout == fmt.LAYOUT_FLAT_PLAIN and st.size > 1), None)
    if target is None:
        return result
    data = bytearray(result.path.read_bytes())
    data[target] ^= 0xFF
    result.path.write_bytes(data)
    return dataclasses.replace(result, digest="sha256:" + hashlib.sha256(data).hexdigest())


def test_mirror_verify(client: RegistryClient, prefix: str, tmp_path: Path) -> None:
    push_image(client, tmp_path / "images", sample_layers(), [f"{prefix}/app:1"])
    options = RunOptions(jobs=1, workdir=tmp_path / "work")
    good = run_job(parse_job(_job(prefix, "good", "verify: true"), filename="good.yaml"), client=client,
                   options=options)
    assert [i.status for i in good.images] == ["converted"], [i.error for i in good.images]

    bad = run_job(parse_job(_job(prefix, "bad", "verify: true"), filename="bad.yaml"), client=client,
                  options=options, convert_layer=_tampering)
    assert [i.status for i in bad.images] == ["failed"]
    assert "verifying " in (bad.images[0].error or "") and ": contents sha256:" in (bad.images[0].error or "")
    assert bad.failed

    # the same engine without verification: nothing notices
    unverified = run_job(parse_job(_job(prefix, "quiet", "verify: false"), filename="q.yaml"), client=client,
                         options=options, convert_layer=_tampering)
    assert [i.status for i in unverified.images] == ["converted"]
    # --verify on the command line (RunOptions.verify) catches it too
    flagged = run_job(parse_job(_job(prefix, "flag", ""), filename="f.yaml"), client=client,
                      options=dataclasses.replace(options, verify=True), convert_layer=_tampering)
    assert [i.status for i in flagged.images] == ["failed"]
