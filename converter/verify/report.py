"""Problems found by ``convert verify``, their one-line rendering and the JSON report."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing that does not hold; ``got``/``want`` are the image's and the source's values."""

    platform: str
    where: str  # "manifest", "config", "index", or "layer 2/4 sha256:…"
    what: str  # the field or check: "mode", "diff_id", "media type", ...
    got: str = ""
    want: str = ""
    path: str = ""  # a path inside the layer, when there is one

    def line(self) -> str:
        head = " ".join(p for p in (self.platform, self.where) if p)
        loc = f"{head}: {self.path}: " if self.path else f"{head}: "
        if self.got or self.want:
            return f"{loc}{self.what} {self.got or '(none)'}, source says {self.want or '(none)'}" \
                if self.path else f"{loc}{self.what} {self.got or '(none)'}, expected {self.want or '(none)'}"
        return f"{loc}{self.what}"


@dataclass(slots=True)
class Report:
    """Everything one verification found and did."""

    image: str
    digest: str = ""
    source: str = ""
    problems: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # e.g. "layer 1/3: read with fsck.erofs --extract"
    layers_checked: int = 0
    files_compared: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems

    def add(self, problem: Problem) -> None:
        self.problems.append(problem)

    def to_json(self) -> dict[str, Any]:
        return {
            "image": self.image,
            "digest": self.digest,
            "source": self.source,
            "ok": self.ok,
            "layers_checked": self.layers_checked,
            "files_compared": self.files_compared,
            "problems": [{**asdict(p), "message": p.line()} for p in self.problems],
            "notes": list(self.notes),
        }

    def write(self, path: Path) -> None:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(self.to_json(), indent=2) + "\n")
        tmp.replace(path)
