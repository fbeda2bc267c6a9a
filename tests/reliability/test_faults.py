"""Image conversions through a fault-injecting proxy in front of a real registry.

``convert SRC --dest DEST --retries 4 --timeout 2`` runs in-process (``converter.cli.main``)
against Debian's docker-registry behind ``FaultProxy``; the retry policy those flags make
records its sleeps instead of sleeping (``imageenv.fast_sleeps``). Each fault mode is either

* transient: the conversion must succeed with the digest of an undisturbed run, and the
  destination must hold the whole image; or
* permanent: exit status 1, one stderr line naming the source image, the layer digest (where a
  layer is at fault) and the cause; the destination tag must not exist or must still point at the
  image it held before; and a re-run without the fault must succeed with the same digest.

The registry is checked directly, never through the proxy. A table of attempts, successes,
identical digests and partial pushes (which must be 0) is written to
``<pytest basetemp>/reliability-faults.json`` (and ``.md``) and printed at the end.
"""

from __future__ import annotations

import contextlib
import email.utils
import io
import json
import random
import re
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pytest

from converter.cli import main
from converter.pipeline import graph
from converter.testing.localregistry import RunningRegistry, local_registry
from tests.reliability.imageenv import FastRetry, Probe, Sample, fast_sleeps, skopeo_copy, write_sample
from tests.reliability.proxy import Action, Fault, FaultProxy

pytestmark = pytest.mark.timeout(300)

ATTEMPTS = 4
#: ``--timeout``: short enough that a stalled body times out quickly, long enough for a loopback registry.
TIMEOUT = 2.0
CLIENT_FLAGS = ["--retries", str(ATTEMPTS), "--timeout", str(TIMEOUT)]
DEST_TAG = "conv"


@dataclass
class Row:
    """Counts for one fault mode."""

    kind: str
    attempted: int = 0
    succeeded: int = 0
    identical: int = 0
    failed_cleanly: int = 0
    reruns_ok: int = 0
    partial_pushes: int = 0
    error: str = ""  # the last error line seen (proxy address shown as PROXY)


@dataclass
class Env:
    """The registry, the proxy in front of it, the sample image and the undisturbed result."""

    registry: RunningRegistry
    proxy: FaultProxy
    probe: Probe
    sample: Sample
    baseline: str = ""
    table: dict[str, Row] = field(default_factory=dict)

    @property
    def source(self) -> str:
        return f"{self.proxy.host}/sample:v1"


@dataclass
class Outcome:
    """One conversion: exit status, stdout, stderr, the faults (with their counters), the sleeps."""

    rc: int
    out: str
    err: str
    faults: list[Fault]
    sleeps: list[float]

    @property
    def digest(self) -> str | None:
        match = re.search(r"@(sha256:[0-9a-f]{64})$", self.out.strip())
        return match.group(1) if match else None


def convert(env: Env, repo: str, capsys: pytest.CaptureFixture[str], *, faults: list[Fault] | None = None,
            quiet: bool = True, flags: list[str] = CLIENT_FLAGS) -> Outcome:
    """``convert SOURCE --dest PROXY/repo:conv FLAGS`` through the proxy with ``faults`` active."""
    retry = FastRetry()
    capsys.readouterr()
    with fast_sleeps(retry), env.proxy.scripted(faults or []) as active:
        rc = main([env.source, "--dest", f"{env.proxy.host}/{repo}:{DEST_TAG}", *flags, *(["-q"] if quiet else [])])
    captured = capsys.readouterr()
    return Outcome(rc, captured.out, captured.err, active, retry.sleeps)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    with local_registry() as registry, tempfile.TemporaryDirectory() as tmp, FaultProxy(registry.host) as proxy:
        sample = write_sample(Path(tmp) / "layout")
        skopeo_copy(sample, f"{registry.host}/sample:v1")
        probe = Probe(registry.host)
        environment = Env(registry, proxy, probe, sample)
        try:
            yield environment
        finally:
            probe.close()
            _write_table(environment.table, tmp_path_factory.getbasetemp())


@pytest.fixture(scope="module")
def baseline(env: Env) -> str:
    """The digest of an undisturbed conversion (through the proxy, no faults)."""
    out = io.StringIO()
    retry = FastRetry()
    with fast_sleeps(retry), env.proxy.scripted([]), \
            contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        rc = main([env.source, "--dest", f"{env.proxy.host}/baseline:{DEST_TAG}", *CLIENT_FLAGS, "-q"])
    assert rc == 0
    assert retry.clients == [(ATTEMPTS, TIMEOUT)], "the flags did not reach the registry client"
    digest = Outcome(rc, out.getvalue(), "", [], []).digest
    assert digest is not None
    assert env.probe.tag_digest("baseline", DEST_TAG) == digest
    assert env.probe.missing_blobs("baseline", digest) == []
    env.baseline = digest
    return digest


# --- fault modes --------------------------------------------------------------------------------


def _blob(digest: str, repo: str = "sample") -> str:
    return re.escape(f"/v2/{repo}/blobs/{digest}") + "$"


_MANIFEST_GET = r"^/v2/sample/manifests/v1$"
_UPLOAD_PUT = r"^/v2/out-[^/]+/blobs/uploads/"
_UPLOAD_POST = r"^/v2/out-[^/]+/blobs/uploads/$"
_BLOB_HEAD = r"^/v2/out-[^/]+/blobs/sha256:"
_MANIFEST_PUT = rf"^/v2/out-[^/]+/manifests/{DEST_TAG}$"


def _http_date(seconds_from_now: float) -> str:
    return email.utils.formatdate(time.time() + seconds_from_now, usegmt=True)


@dataclass(frozen=True)
class Mode:
    """A fault mode: its faults (built from the sample's digests) and what must happen."""

    name: str
    transient: bool
    faults: Callable[[Sample], list[Fault]]
    cause: str = ""  # permanent: a substring of the error line
    layer: int | None = None  # permanent: index of the layer the line must name
    names_dest: bool = False  # the line names the destination as well as the source image
    preexisting: bool = False  # the destination tag already holds an older image
    min_sleep: float = 0.0  # transient: a retry must have waited at least this long (Retry-After)
    xfail: str = ""
    stream: bool = False  # every layer's upload starts while it is built (graph.STREAM_MIN 0)


MODES: tuple[Mode, ...] = (
    # -- transient: must succeed with identical digests ---------------------------------------
    Mode("reset-mid-blob", True, lambda s: [Fault(Action.RESET_RESPONSE, _blob(s.layers[0]), "GET")]),
    Mode("reset-mid-blob-twice", True,
         lambda s: [Fault(Action.RESET_RESPONSE, _blob(s.layers[0]), "GET", times=2, fraction=0.3)]),
    Mode("reset-mid-manifest", True, lambda s: [Fault(Action.RESET_RESPONSE, _MANIFEST_GET, "GET")]),
    Mode("reset-mid-config", True, lambda s: [Fault(Action.RESET_RESPONSE, _blob(s.config), "GET")]),
    Mode("reset-upload-open", True, lambda s: [Fault(Action.RESET_REQUEST, _UPLOAD_POST, "POST")]),
    Mode("reset-mid-upload", True, lambda s: [Fault(Action.RESET_REQUEST, _UPLOAD_PUT, "PUT", fraction=0.5)]),
    Mode("reset-manifest-put", True, lambda s: [Fault(Action.RESET_REQUEST, _MANIFEST_PUT, "PUT")]),
    Mode("500-blob", True, lambda s: [Fault(Action.STATUS, _blob(s.layers[1]), "GET", status=500)]),
    Mode("502-manifest", True, lambda s: [Fault(Action.STATUS, _MANIFEST_GET, "GET", status=502)]),
    Mode("503-upload-retry-after", True,
         lambda s: [Fault(Action.STATUS, _UPLOAD_POST, "POST", status=503, retry_after="1")], min_sleep=1.0),
    Mode("503-manifest-retry-after-date", True,
         lambda s: [Fault(Action.STATUS, _MANIFEST_GET, "GET", status=503, retry_after=_http_date(4))],
         min_sleep=2.0),
    Mode("429-blob-retry-after", True,
         lambda s: [Fault(Action.STATUS, _blob(s.layers[1]), "GET", status=429, retry_after="2",
                          code="TOOMANYREQUESTS")], min_sleep=2.0),
    Mode("504-head", True, lambda s: [Fault(Action.STATUS, _BLOB_HEAD, "HEAD", status=504)]),
    Mode("500-manifest-put", True, lambda s: [Fault(Action.STATUS, _MANIFEST_PUT, "PUT", status=500)]),
    Mode("stall-blob", True, lambda s: [Fault(Action.STALL, _blob(s.layers[0]), "GET", stall=1.0)]),
    Mode("stall-past-timeout", True, lambda s: [Fault(Action.STALL, _blob(s.layers[0]), "GET", stall=5.0)]),
    Mode("short-blob", True, lambda s: [Fault(Action.SHORT, _blob(s.layers[0]), "GET")]),
    Mode("short-manifest", True, lambda s: [Fault(Action.SHORT, _MANIFEST_GET, "GET")]),
    Mode("corrupt-blob-once", True, lambda s: [Fault(Action.CORRUPT, _blob(s.layers[0]), "GET")]),
    Mode("corrupt-blob-thrice", True, lambda s: [Fault(Action.CORRUPT, _blob(s.layers[2]), "GET", times=3)]),
    Mode("corrupt-config-once", True, lambda s: [Fault(Action.CORRUPT, _blob(s.config), "GET")]),
    # streamed uploads (pipeline/graph.py): a failed part falls back to uploading the whole blob
    Mode("reset-mid-stream", True, lambda s: [Fault(Action.RESET_REQUEST, _UPLOAD_PUT, "PATCH", fraction=0.5)],
         stream=True),
    Mode("500-stream-part", True, lambda s: [Fault(Action.STATUS, _UPLOAD_PUT, "PATCH", status=500)], stream=True),
    Mode("reset-stream-always", True, lambda s: [Fault(Action.RESET_REQUEST, _UPLOAD_PUT, "PATCH", times=None)],
         stream=True),
    Mode("reset-stream-put", True, lambda s: [Fault(Action.RESET_REQUEST, _UPLOAD_PUT, "PUT")], stream=True),
    # -- permanent: exit 1, one line, nothing tagged, a clean re-run ---------------------------
    Mode("404-layer", False,
         lambda s: [Fault(Action.STATUS, _blob(s.layers[1]), "GET", status=404, code="BLOB_UNKNOWN", times=None)],
         cause="404 BLOB_UNKNOWN", layer=1, preexisting=True),
    Mode("corrupt-layer-always", False, lambda s: [Fault(Action.CORRUPT, _blob(s.layers[1]), "GET", times=None)],
         cause="digest mismatch: the content's digest is sha256:", layer=1, preexisting=True),
    Mode("401-layer", False,
         lambda s: [Fault(Action.STATUS, _blob(s.layers[1]), "GET", status=401, code="UNAUTHORIZED", times=None)],
         cause="401 UNAUTHORIZED", layer=1),
    Mode("403-layer", False,
         lambda s: [Fault(Action.STATUS, _blob(s.layers[1]), "GET", status=403, code="DENIED", times=None)],
         cause="403 DENIED", layer=1, preexisting=True),
    Mode("500-layer-always", False,
         lambda s: [Fault(Action.STATUS, _blob(s.layers[2]), "GET", status=500, times=None)],
         cause="500", layer=2),
    Mode("reset-layer-always", False,
         lambda s: [Fault(Action.RESET_RESPONSE, _blob(s.layers[0]), "GET", times=None)],
         cause="connection lost", layer=0),
    Mode("reset-upload-always", False, lambda s: [Fault(Action.RESET_REQUEST, _UPLOAD_PUT, "PUT", times=None)],
         cause="pushing blob sha256:", preexisting=True),
    Mode("reset-upload-always-streamed", False,
         lambda s: [Fault(Action.RESET_REQUEST, _UPLOAD_PUT, "PUT", times=None)],
         cause="pushing blob sha256:", preexisting=True, stream=True),
    Mode("403-manifest-put", False,
         lambda s: [Fault(Action.STATUS, _MANIFEST_PUT, "PUT", status=403, code="DENIED", times=None)],
         cause="403 DENIED", names_dest=True, preexisting=True),
    Mode("404-source-manifest", False,
         lambda s: [Fault(Action.STATUS, _MANIFEST_GET, "GET", status=404, code="MANIFEST_UNKNOWN", times=None)],
         cause="404 MANIFEST_UNKNOWN"),
)


def _params() -> list[object]:
    out: list[object] = []
    for mode in MODES:
        marks = [pytest.mark.xfail(strict=True, reason=mode.xfail)] if mode.xfail else []
        out.append(pytest.param(mode, id=mode.name, marks=marks))
    return out


# --- the checks ---------------------------------------------------------------------------------


def run_mode(env: Env, mode: Mode, repo: str, capsys: pytest.CaptureFixture[str], *,
             faults: list[Fault] | None = None) -> None:
    """Convert under ``mode``'s faults into ``repo`` and check (and count) what happened."""
    with pytest.MonkeyPatch.context() as patch:
        if mode.stream:
            patch.setattr(graph, "STREAM_MIN", 0)
        _run_mode(env, mode, repo, capsys, faults=faults)


def _run_mode(env: Env, mode: Mode, repo: str, capsys: pytest.CaptureFixture[str], *,
              faults: list[Fault] | None = None) -> None:
    row = env.table.setdefault(mode.name, Row("transient" if mode.transient else "permanent"))
    before = None
    if mode.preexisting:
        skopeo_copy(env.sample, f"{env.registry.host}/{repo}:{DEST_TAG}")
        before = env.probe.tag_digest(repo, DEST_TAG)
        assert before == env.sample.manifest
    result = convert(env, repo, capsys, faults=faults if faults is not None else mode.faults(env.sample))
    row.attempted += 1
    after = env.probe.tag_digest(repo, DEST_TAG)
    if result.rc == 0:
        row.succeeded += 1
        row.identical += result.digest == env.baseline
        if after is None or after != result.digest or env.probe.missing_blobs(repo, after) != []:
            row.partial_pushes += 1
    else:
        row.error = result.err.strip().splitlines()[-1].replace(env.proxy.host, "PROXY") if result.err else ""
        if after != before:
            row.partial_pushes += 1
    assert sum(f.fired for f in result.faults) >= 1, f"{mode.name}: the fault never fired"
    assert "Traceback" not in result.err, result.err
    if mode.transient:
        assert result.rc == 0, result.err
        assert result.digest == env.baseline, (result.out, env.baseline)
        assert after == env.baseline
        assert result.err == ""
        if mode.min_sleep:
            assert max(result.sleeps, default=0.0) >= mode.min_sleep, result.sleeps
        return
    _check_failure(env, mode, result)
    assert after == before, f"{mode.name}: the destination tag moved from {before} to {after}"
    row.failed_cleanly += 1
    rerun = convert(env, repo, capsys)
    assert rerun.rc == 0, rerun.err
    assert rerun.digest == env.baseline
    assert env.probe.tag_digest(repo, DEST_TAG) == env.baseline
    assert env.probe.missing_blobs(repo, env.baseline) == []
    row.reruns_ok += 1


def _check_failure(env: Env, mode: Mode, result: Outcome) -> None:
    lines = result.err.splitlines()
    assert result.rc == 1, result.err
    assert result.out == ""
    assert len(lines) == 1, result.err
    line = lines[0]
    assert line.startswith("convert: "), line
    assert mode.cause in line, line
    assert env.source in line, line
    if mode.names_dest:
        assert f"{env.proxy.host}/out-" in line, line
    if mode.layer is not None:
        assert env.sample.layers[mode.layer] in line, line


@pytest.mark.parametrize("mode", _params())
def test_fault_mode(mode: Mode, env: Env, baseline: str, capsys: pytest.CaptureFixture[str]) -> None:
    run_mode(env, mode, f"out-{mode.name}", capsys)


def test_failure_with_logs_still_ends_in_one_error_line(env: Env, baseline: str,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    """Without -q the JSON progress logs come first; the error is still one final line, and no
    log line carries a traceback."""
    mode = next(m for m in MODES if m.name == "404-layer")
    result = convert(env, "out-logs", capsys, faults=mode.faults(env.sample), quiet=False)
    assert result.rc == 1
    *logs, last = result.err.splitlines()
    assert last.startswith("convert: ") and mode.cause in last and env.sample.layers[1] in last, last
    for text in logs:
        record = json.loads(text)
        assert "exception" not in record and "Traceback" not in text, text
    assert env.probe.tag_digest("out-logs", DEST_TAG) is None


def test_corrupt_blob_is_downloaded_as_often_as_retries_allow(env: Env, baseline: str,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    """``--retries 2``: a blob that always arrives corrupted is downloaded twice, then the error is
    permanent and says so; with one corruption fewer than the attempts the conversion succeeds."""
    layer = env.sample.layers[1]
    always = [Fault(Action.CORRUPT, _blob(layer), "GET", times=None)]
    result = convert(env, "out-corrupt-retries", capsys, faults=always, flags=["--retries", "2", "--timeout", "2"])
    assert result.rc == 1, result.err
    [line] = result.err.splitlines()
    assert line.startswith(f"convert: converting {env.source} ") and f"layer 2/3 {layer}: pull: " in line, line
    assert line.endswith(" (after 2 downloads)") and "digest mismatch" in line, line
    assert result.faults[0].fired == 2
    once = [Fault(Action.CORRUPT, _blob(layer), "GET", times=1)]
    result = convert(env, "out-corrupt-retries", capsys, faults=once, flags=["--retries", "2", "--timeout", "2"])
    assert result.rc == 0, result.err
    assert result.digest == env.baseline


@pytest.mark.soak
def test_fault_soak(env: Env, baseline: str, capsys: pytest.CaptureFixture[str]) -> None:
    """200 conversions under randomly drawn modes, fractions and target layers (seeded)."""
    rng = random.Random(20240601)
    targets = {"transient": [m for m in MODES if m.transient and not m.xfail],
               "permanent": [m for m in MODES if not m.transient]}
    for i in range(200):
        mode = rng.choice(targets["transient"] if rng.random() < 0.75 else targets["permanent"])
        faults = mode.faults(env.sample)
        for fault in faults:
            fault.fraction = rng.uniform(0.05, 0.95)
            if fault.stall:
                fault.stall = min(fault.stall, 2.5)
        soak = Mode(f"soak/{mode.name}", mode.transient, mode.faults, mode.cause, mode.layer, mode.names_dest,
                    mode.preexisting, mode.min_sleep, stream=mode.stream)
        run_mode(env, soak, f"out-soak{i}", capsys, faults=faults)


# --- the table ----------------------------------------------------------------------------------


def _write_table(table: dict[str, Row], directory: Path) -> None:
    if not table:
        return
    data = {name: asdict(row) for name, row in table.items()}
    totals = Row("all")
    for row in table.values():
        for key in ("attempted", "succeeded", "identical", "failed_cleanly", "reruns_ok", "partial_pushes"):
            setattr(totals, key, getattr(totals, key) + getattr(row, key))
    data["TOTAL"] = asdict(totals)
    (directory / "reliability-faults.json").write_text(json.dumps(data, indent=2) + "\n")
    lines = ["| Fault mode | Kind | Attempted | Succeeded | Identical digests | Failed cleanly | Re-runs OK "
             "| Partial pushes |", "|---|---|---|---|---|---|---|---|"]
    for name, row in [*table.items(), ("TOTAL", totals)]:
        lines.append(f"| {name} | {row.kind} | {row.attempted} | {row.succeeded} | {row.identical} | "
                     f"{row.failed_cleanly} | {row.reruns_ok} | {row.partial_pushes} |")
    errors = [f"* `{name}`: `{row.error}`" for name, row in table.items() if row.error]
    text = "\n".join(lines) + "\n" + ("\nError lines:\n\n" + "\n".join(errors) + "\n" if errors else "")
    (directory / "reliability-faults.md").write_text(text)
    print(f"\nregistry fault table ({directory / 'reliability-faults.json'}):\n{text}")
