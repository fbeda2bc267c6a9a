"""The image conversion engine: a stage graph per manifest, driven by ``convert_image``.

Public API (used by the CLI and mirror jobs)::

    convert_image(source, src_ref, sink, dest_ref, *, options, progress=None, log=None) -> ConvertResult
    default_destination(src_ref, fmt) -> Reference | OciLayoutRef
"""

from __future__ import annotations

from converter.errors import LayerFailed, PushFailed
from converter.pipeline.engine import convert_image, private_workdir
from converter.pipeline.options import (
    ConvertOptions,
    ConvertResult,
    LayerOutcome,
    PlatformResult,
    default_destination,
    default_jobs,
    destination_tag,
)
from converter.pipeline.progress import ProgressCallback, ProgressEvent, Stage

__all__ = [
    "ConvertOptions",
    "ConvertResult",
    "LayerFailed",
    "LayerOutcome",
    "PlatformResult",
    "ProgressCallback",
    "ProgressEvent",
    "PushFailed",
    "Stage",
    "convert_image",
    "default_destination",
    "default_jobs",
    "destination_tag",
    "private_workdir",
]
