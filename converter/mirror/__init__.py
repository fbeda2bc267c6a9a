"""Registry mirroring jobs: a YAML job file of images → EROFS conversions pushed to a mirror.

Why a package of its own: mirroring many images (nightly, sharded over a Kubernetes Indexed
Job) needs more than one ``convert`` call — tag listing and filters, an idempotency check so a
rerun only converts what changed, a layer cache shared by every worker, and a report. The
modules, in import order:

* ``jobs``: the job file (YAML) → frozen dataclasses; errors cite file, line and field.
* ``plan``: a job → work items (tags listed, sharded, source digests resolved, already
  converted images marked skipped).
* ``cache``: the shared layer cache stored in the registry, wrapped around the pipeline's
  ``convert_layer`` seam.
* ``run``: executes a plan (images in parallel, failures isolated) into a ``MirrorReport``.
* ``cli``: ``convert mirror JOB.yaml ...``; ``demo``: ``make mirror-demo``.
"""

from __future__ import annotations
