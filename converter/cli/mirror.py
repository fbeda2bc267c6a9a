"""``convert mirror JOB.yaml``: flags, logging, output; the work is in ``plan`` and ``run``.

    convert mirror JOB.yaml [--image-jobs N] [--shard I/N] [--dry-run] [--report FILE]
                            [--env NAME] [--cache-repo REPO] [--local-cache FILE] [--plain-http HOST] ...

Output: ``--dry-run`` prints the plan on stdout (what would be converted, what is already
done, the bytes to pull). A run logs one line per image (structlog, on stderr) and ends with
a summary table on stderr. ``--report FILE`` writes the JSON report (``-``: stdout). Exit
status: 0 when every image was converted or skipped, 1 when any failed, 70 when a bug failed
any (its traceback is logged), 2 for usage and job
file errors (raised as ``UsageError`` for ``converter.cli.main`` to print).

Kubernetes: ``--shard $(JOB_COMPLETION_INDEX)/N`` (the kubelet expands ``$(VAR)``), or
``--shard /N`` to read the index from ``$JOB_COMPLETION_INDEX`` here.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import structlog

from converter import __version__
from converter.cli.args import (
    INTERNAL_ERROR,
    UsageParser,
    add_builder_flag,
    add_limit_flags,
    add_output_flags,
    add_process_flag,
    add_registry_flags,
    jobs,
    limit,
    verbosity,
)
from converter.cli.image import PLAIN_HTTP_ENV, client_timeout, plain_http_hosts
from converter.convert.layer import DEFAULT_MAX_ENTRIES, DEFAULT_MAX_EXPANDED, default_build_time
from converter.errors import ConverterError, InvalidReference, UsageError
from converter.files import write_atomic
from converter.log import configure
from converter.mirror.jobs import JOB_ENV_PREFIX, job_environment, load_job, parse_repository
from converter.mirror.plan import Status, make_plan, parse_shard
from converter.mirror.run import ImageReport, MirrorReport, RunOptions, format_report, plan_report, run_plan
from converter.registry.client import DEFAULT_RETRY, RegistryClient
from converter.registry.credentials import DockerConfigCredentials
from converter.registry.retry import RetryPolicy

JOB_SCHEMA = """\
job file (YAML):
  version: 1                      # optional
  defaults:                       # apply to every image unless the image overrides them
    to: erofs+lz4                 # the format, as for convert --to
    dest: "registry.example/mirror/{repository}:{tag}-{format}"   # also {registry}; required
    profile: spec                 # or containerd-2.1, containerd-2.3
    platforms: [linux/amd64]      # default: every platform
    merge_index: false
    cache_repo: registry.example/mirror/layer-cache                # shared layer cache (optional)
  images:
    - source: ghcr.io/org/app:1.4
    - source: docker.io/library/python              # a repository: tags filtered
      tags: {include: ["3.12*", "/^3\\.13/"], exclude: ["*-slim"], newest: 3}
${VAR} in source, dest and cache_repo comes from the environment; credentials never go in the
file (they come from the Docker config). Examples: pipelines/*.yaml.

examples:
  convert mirror pipelines/debian-to-erofs.yaml --dry-run --report plan.json
  convert mirror job.yaml --image-jobs 4 --shard /8 --report report.json

exit status: 0 every image converted or skipped, 1 some failed, 2 usage or job file error,
70 internal error (a bug), 130 interrupted (the report is still written)"""


DEFAULT_IMAGE_JOBS = 2


def build_parser() -> argparse.ArgumentParser:
    p = UsageParser(prog="convert mirror", description="Convert the images of a mirroring job file to EROFS "
                    "and push them;\nimages already converted with the same options are skipped.",
                    epilog=JOB_SCHEMA)
    p.add_argument("job", help="the job file (YAML; schema below)")
    p.add_argument("--image-jobs", "--jobs", dest="image_jobs", type=jobs, default=0, metavar="N",
                   help=f"images converted at once (0 = default: {DEFAULT_IMAGE_JOBS})")
    p.add_argument("--layer-jobs", type=jobs, default=0, metavar="N",
                   help="layers converted at once per image (0 = default: by CPU count)")
    p.add_argument("--shard", metavar="I/N", help="convert only shard I of N (0-based); /N reads I from "
                   "$JOB_COMPLETION_INDEX")
    p.add_argument("--dry-run", action="store_true", help="plan only: print what would be done, convert "
                   "nothing (with --report, the plan as JSON)")
    p.add_argument("--verify", action="store_true", help="verify each pushed image against its source "
                   "(as `convert verify`); a failure counts as a failed image")
    p.add_argument("--report", metavar="FILE", help="write the JSON report here (- for stdout)")
    p.add_argument("--env", action="append", default=[], metavar="NAME",
                   help=f"let the job file read ${{NAME}} from the environment (repeatable); {JOB_ENV_PREFIX}* "
                   "variables always may, no other")
    p.add_argument("--cache-repo", metavar="REPO", help="the shared layer cache repository (overrides the "
                   "job's cache_repo); 'none' turns the cache off")
    p.add_argument("--local-cache", metavar="FILE", help="a JSON file remembering layer cache entries "
                   "on this machine")
    add_registry_flags(p, plain_http_env=PLAIN_HTTP_ENV)
    add_builder_flag(p)
    add_process_flag(p)
    add_limit_flags(p)
    p.add_argument("--workdir", metavar="DIR", help="temporary files go here (default: the temp dir)")
    add_output_flags(p)
    p.add_argument("--version", action="version", version=f"erofs-converter {__version__}")
    return p


def _engine_log(verbose: bool) -> Any:
    """The logger handed to convert_image: its per-layer lines only with -v (one line per image)."""
    if verbose:
        return None
    return structlog.wrap_logger(None, wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))


def _write_report(target: str, document: dict[str, Any]) -> None:
    text = json.dumps(document, indent=2) + "\n"
    if target == "-":
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    path = Path(target)
    try:
        write_atomic(path, text.encode("utf-8"), prefix=f".{path.name}.tmp-")
    except OSError as exc:
        raise ConverterError(f"writing report {target}: {exc.strerror or exc}") from exc


def run_mirror(argv: Sequence[str], *, env: Mapping[str, str] | None = None) -> int:
    """The ``convert mirror`` command; ``env`` defaults to the process environment."""
    environ = dict(os.environ if env is None else env)
    args = build_parser().parse_args(list(argv))
    for name in args.env:
        if not name.isidentifier() or not name.isascii():
            shown = ascii(name.split("=", 1)[0]) + ("=..." if "=" in name else "")  # never echo a value
            raise UsageError(f"convert mirror: --env {shown}: give the name of an environment variable "
                             "(its value comes from the environment)")
    configure(fmt=args.log_format or "auto", verbosity=verbosity(args))
    job = load_job(args.job, env=job_environment(environ, args.env))
    if job.expanded:  # expanded job-file variables never reach a log line
        configure(fmt=args.log_format or "auto", verbosity=verbosity(args), redact=job.redact)
    if args.cache_repo is not None:
        try:
            job = job.with_cache_repo(None if args.cache_repo == "none" else parse_repository(args.cache_repo))
        except InvalidReference as exc:
            raise UsageError(f"--cache-repo: {exc}") from None
    shard = parse_shard(args.shard, env=environ) if args.shard else None
    options = RunOptions(
        jobs=args.image_jobs or DEFAULT_IMAGE_JOBS, layer_jobs=args.layer_jobs, builder=args.builder,
        max_expanded=limit(args.max_expanded, DEFAULT_MAX_EXPANDED),
        max_entries=limit(args.max_entries, DEFAULT_MAX_ENTRIES),
        workdir=Path(args.workdir) if args.workdir else None,
        build_time=default_build_time(environ),
        local_cache=Path(args.local_cache) if args.local_cache else None,
        verify=args.verify,
        build_processes=args.build_processes,
    )
    client = RegistryClient(credentials=DockerConfigCredentials(env=environ),
                            plain_http=plain_http_hosts(args.plain_http, environ), ca_bundle=args.ca_bundle,
                            retry=RetryPolicy(attempts=args.retries) if args.retries is not None else DEFAULT_RETRY,
                            timeout=client_timeout(args.timeout, args.deadline))
    with client, _hiding_values(job.redact):
        try:
            plan = make_plan(job, client, shard=shard, estimate=args.dry_run, workers=max(4, options.jobs),
                             recipe=options.recipe)
        except KeyboardInterrupt:
            if args.report:  # interrupted while planning: no image was started, the report says so
                _write_report(args.report, MirrorReport(job=job.path, shard=str(shard) if shard else None,
                                                        dry_run=args.dry_run, images=(),
                                                        interrupted=True).to_json())
            raise
        if args.dry_run:
            report = plan_report(plan)
            structlog.get_logger().info("mirror_planned", **{k: v for k, v in report.summary.items()
                                                             if k not in ("job", "dry_run")})
        else:
            todo = sum(1 for image in plan.images if image.status is Status.CONVERT)
            bars = sys.stderr.isatty() and not args.quiet and args.log_format != "json"
            with _overall_progress(todo if bars else 0, job.redact) as on_image:
                report = run_plan(plan, client=client, options=options, engine_log=_engine_log(args.verbose),
                                  on_image=on_image)
    # The table goes to stderr for a run and a dry run alike (stdout is for --report -); with
    # JSON logs every stderr line is JSON, and the log lines and --report carry the same facts.
    if args.log_format != "json":
        print(job.redact(format_report(report)), file=sys.stderr)
    if args.report:
        _write_report(args.report, _redact_json(report.to_json(), job.redact))
    if report.interrupted:
        raise KeyboardInterrupt  # the report is written; main() says so and exits 130
    if report.internal_error:
        return INTERNAL_ERROR
    return 1 if report.failed else 0


@contextlib.contextmanager
def _hiding_values(redact: Callable[[str], str]) -> Iterator[None]:
    """Errors leave with expanded job-file variables shown as ``${NAME}`` (main prints ``str(exc)``)."""
    try:
        yield
    except ConverterError as exc:
        exc.args = (redact(str(exc)),)
        raise


def _redact_json(value: Any, redact: Callable[[str], str]) -> Any:
    """A JSON document with ``redact`` applied to every string in it."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, list):
        return [_redact_json(v, redact) for v in value]
    if isinstance(value, dict):
        return {k: _redact_json(v, redact) for k, v in value.items()}
    return value


@contextlib.contextmanager
def _overall_progress(total: int, redact: Callable[[str], str]) -> Iterator[Callable[[ImageReport], None] | None]:
    """On a TTY: one rich bar of images finished out of ``total`` (0: no bar)."""
    if total <= 0:
        yield None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=Console(stderr=True)) as progress:
        task = progress.add_task("images", total=total)

        def advance(report: ImageReport) -> None:
            progress.update(task, advance=1, description=redact(f"images (last: {report.status} {report.source})"))

        yield advance


__all__ = ["PLAIN_HTTP_ENV", "build_parser", "plain_http_hosts", "run_mirror"]
