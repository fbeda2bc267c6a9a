"""Editing converted OCI layouts the way a broken or hostile producer would (for verify tests)."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

JSON = dict[str, Any]


class Layout:
    """An OCI image layout holding one single-manifest image under a tag."""

    def __init__(self, path: Path, tag: str) -> None:
        self.path = path
        self.tag = tag

    def blob(self, digest: str) -> Path:
        return self.path / "blobs" / "sha256" / digest.split(":", 1)[1]

    def put(self, data: bytes) -> str:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        self.blob(digest).write_bytes(data)
        return digest

    def _entry(self) -> JSON:
        index = json.loads((self.path / "index.json").read_text())
        for entry in index["manifests"]:
            if entry.get("annotations", {}).get("org.opencontainers.image.ref.name") == self.tag:
                return dict(entry)
        raise AssertionError(f"no tag {self.tag} in {self.path}")

    def manifest(self) -> JSON:
        return dict(json.loads(self.blob(self._entry()["digest"]).read_bytes()))

    def config(self) -> JSON:
        return dict(json.loads(self.blob(self.manifest()["config"]["digest"]).read_bytes()))

    def layer_paths(self) -> list[Path]:
        return [self.blob(layer["digest"]) for layer in self.manifest()["layers"]]

    def copy(self, dest: Path) -> Layout:
        shutil.copytree(self.path, dest)
        return Layout(dest, self.tag)

    def rewrite(self, edit: Callable[[JSON, JSON], None], *, fix_config_digest: bool = True) -> None:
        """Apply ``edit(manifest, config)``; the config and manifest are re-stored and re-tagged."""
        manifest, config = self.manifest(), self.config()
        edit(manifest, config)
        if fix_config_digest:
            data = json.dumps(config).encode()
            manifest["config"]["digest"] = self.put(data)
            manifest["config"]["size"] = len(data)
        mdata = json.dumps(manifest).encode()
        entry = self._entry()
        entry["digest"] = self.put(mdata)
        entry["size"] = len(mdata)
        (self.path / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [entry]}))

    def replace_layer(self, i: int, data: bytes, *, fix_diff_id: bool = True) -> None:
        """Point layer ``i`` at ``data`` (digest and size consistent; diff_id too unless told not to)."""
        digest = self.put(data)

        def edit(manifest: JSON, config: JSON) -> None:
            manifest["layers"][i]["digest"] = digest
            manifest["layers"][i]["size"] = len(data)
            if fix_diff_id:
                config["rootfs"]["diff_ids"][i] = digest

        self.rewrite(edit)
