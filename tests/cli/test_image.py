"""The image command's flags for layer limits and registry behaviour, end to end through ``main``.

Conversions go from an OCI layout of the sample image (converter/sample.py) to another layout,
so no registry is needed; the registry flags are checked on the client ``make_client`` builds
(tests/reliability/test_faults.py runs them against a real registry).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from converter.cli import image as imagecli
from converter.cli import main
from converter.convert.layer import DEFAULT_MAX_ENTRIES, DEFAULT_MAX_EXPANDED
from converter.errors import UsageError
from converter.pipeline import ConvertOptions
from converter.registry.client import DEFAULT_TIMEOUT, RegistryClient, Timeouts
from converter.registry.credentials import DockerConfigCredentials
from converter.registry.retry import RetryPolicy
from converter.testing.sample import SampleLayout, sample_layers, write_oci_layout
from tests.mirror.helpers import push_image
from tests.support.registry import RegistryServer


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> SampleLayout:
    return write_oci_layout(tmp_path_factory.mktemp("sample") / "layout", sample_layers(), tag="v1")


def convert(capsys: pytest.CaptureFixture[str], sample: SampleLayout, dest: Path, *flags: str) -> tuple[int, str, str]:
    rc = main([f"oci:{sample.path}:v1", "--dest", f"oci:{dest}:conv", "-q", *flags])
    out, err = capsys.readouterr()
    return rc, out, err


def layer_digests(sample: SampleLayout) -> list[str]:
    manifest = json.loads((sample.path / "blobs" / "sha256" / sample.manifest_digest.split(":")[1]).read_bytes())
    return [layer["digest"] for layer in manifest["layers"]]


@pytest.mark.parametrize(("flags", "cause"), [
    (("--max-entries", "5"), "too many entries: the limit is 5"),
    (("--max-expanded", "100K"), "layer expands to more than the limit of 102400 bytes"),
], ids=["max-entries", "max-expanded"])
@pytest.mark.parametrize("mode", ["--build-processes", "--no-build-processes"])
def test_layer_limits_fail_the_image_in_one_line(capsys: pytest.CaptureFixture[str], sample: SampleLayout,
                                                 tmp_path: Path, flags: tuple[str, ...], cause: str,
                                                 mode: str) -> None:
    # Every layer is over the limit; overlapping builds (build processes) name the lowest too.
    rc, out, err = convert(capsys, sample, tmp_path / "out", *flags, mode)
    assert rc == 1 and out == ""
    [line] = err.splitlines()
    first = layer_digests(sample)[0]
    assert line.startswith(f"convert: converting oci:{sample.path}:v1 (linux/amd64): layer 1/3 {first}: "), line
    assert line.endswith(cause), line
    index = tmp_path / "out" / "index.json"
    refs = [m.get("annotations", {}).get("org.opencontainers.image.ref.name")
            for m in (json.loads(index.read_bytes())["manifests"] if index.exists() else [])]
    assert "conv" not in refs


def test_zero_lifts_the_limits(capsys: pytest.CaptureFixture[str], sample: SampleLayout, tmp_path: Path) -> None:
    rc, out, err = convert(capsys, sample, tmp_path / "out", "--max-entries", "0", "--max-expanded", "0")
    assert rc == 0, err
    assert re.fullmatch(rf"oci:{re.escape(str(tmp_path / 'out'))}:conv@sha256:[0-9a-f]{{64}}\n", out), out


def test_limits_reach_the_conversion_options(monkeypatch: pytest.MonkeyPatch, sample: SampleLayout,
                                             tmp_path: Path) -> None:
    seen: list[tuple[int | None, int | None]] = []

    def fake_convert_image(*args: object, options: ConvertOptions, **kwargs: object) -> object:
        seen.append((options.max_expanded, options.max_entries))
        raise UsageError("stop here")

    monkeypatch.setattr(imagecli, "convert_image", fake_convert_image)
    base = [f"oci:{sample.path}:v1", "--dest", f"oci:{tmp_path}:x", "-q"]
    for flags in ([], ["--max-expanded", "2G", "--max-entries", "7"], ["--max-expanded", "0", "--max-entries", "0"]):
        assert main([*base, *flags]) == 2
    assert seen == [(DEFAULT_MAX_EXPANDED, DEFAULT_MAX_ENTRIES), (2 << 30, 7), (None, None)]


@pytest.mark.parametrize("collecting", [True, False])
def test_the_conversion_runs_with_the_collector_paused(monkeypatch: pytest.MonkeyPatch, sample: SampleLayout,
                                                       tmp_path: Path, collecting: bool) -> None:
    # One image per command: the cyclic collector pauses for the conversion (its objects hold
    # next to no cycles; converter/convert/tuning.py) and comes back afterwards, whether it
    # succeeded or failed; a collector that was off stays off.
    import gc

    seen: list[bool] = []

    def fake_convert_image(*args: object, **kwargs: object) -> object:
        seen.append(gc.isenabled())
        raise UsageError("stop here")

    monkeypatch.setattr(imagecli, "convert_image", fake_convert_image)
    (gc.enable if collecting else gc.disable)()
    try:
        assert main([f"oci:{sample.path}:v1", "--dest", f"oci:{tmp_path}:x", "-q"]) == 2
        assert seen == [False]
        assert gc.isenabled() is collecting
    finally:
        gc.enable()


@pytest.mark.parametrize("flags", [
    ["--retries", "0"], ["--retries", "two"], ["--timeout", "0"], ["--timeout", "-1"], ["--timeout", "nan"],
    ["--timeout", "inf"], ["--max-entries", "-1"], ["--max-expanded", "1Q"],
])
def test_bad_flag_values_are_usage_errors(capsys: pytest.CaptureFixture[str], flags: list[str]) -> None:
    assert main(["oci:/nonexistent:v1", *flags]) == 2
    [line] = capsys.readouterr().err.splitlines()
    assert f"argument {flags[0]}" in line, line


def test_help_documents_the_flags(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    for flag in ("--retries N", "--timeout SECONDS", "--max-expanded SIZE", "--max-entries N"):
        assert flag in text, flag
    assert "Connecting always gives up after 10 s" in text


@pytest.fixture
def built() -> Iterator[list[RegistryClient]]:
    clients: list[RegistryClient] = []
    yield clients
    for client in clients:
        client.close()


def test_make_client_applies_retry_and_timeout(built: list[RegistryClient]) -> None:
    default = imagecli.make_client()
    policy = RetryPolicy(attempts=2)
    tuned = imagecli.make_client(retry=policy, timeout=3.5, deadline=9.0)
    exact = imagecli.make_client(timeout=Timeouts(connect=1.0, stall=7.0, pool=2.0, total=30.0))
    built += [default, tuned, exact]
    assert default.retry == RetryPolicy() and default.timeouts == DEFAULT_TIMEOUT == Timeouts()
    assert tuned.retry is policy
    assert tuned.timeouts == Timeouts(connect=DEFAULT_TIMEOUT.connect, stall=3.5, pool=DEFAULT_TIMEOUT.pool,
                                      total=9.0)
    assert exact.timeouts == Timeouts(connect=1.0, stall=7.0, pool=2.0, total=30.0)
    slow = imagecli.make_client(timeout=500.0)
    built.append(slow)
    assert slow.timeouts.total == 500.0  # never shorter than a stall


def test_the_flags_reach_make_client(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[dict[str, object]] = []

    def fake_make_client(**kwargs: object) -> RegistryClient:
        calls.append(kwargs)
        raise UsageError("stop here")

    monkeypatch.setattr(imagecli, "make_client", fake_make_client)
    assert main(["r.example/a:1", "-q", "--retries", "6", "--timeout", "2.5"]) == 2
    assert main(["r.example/a:1", "-q"]) == 2
    retry = calls[0]["retry"]
    assert isinstance(retry, RetryPolicy) and retry.attempts == 6 and calls[0]["timeout"] == 2.5
    assert calls[1]["retry"] is None and calls[1]["timeout"] is None


# --- reruns and the destination (#13 items 4, 5) --------------------------------------------------


def _events(err: str) -> list[str]:
    return [json.loads(line)["event"] for line in err.splitlines()]


def test_a_rerun_skips_an_identical_conversion(client: RegistryClient, prefix: str, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    push_image(client, tmp_path / "images", sample_layers()[:2], [f"{prefix}/app:1"])
    capsys.readouterr()
    argv = [f"{prefix}/app:1", "--to", "erofs+lz4", "--log-format", "json"]
    assert main(argv) == 0
    first = capsys.readouterr()
    assert "image_converted" in _events(first.err)
    assert main(argv) == 0
    again = capsys.readouterr()
    assert again.out == first.out  # the same result line
    events = _events(again.err)
    assert events.count("already_converted") == 1 and "image_conversion_started" not in events
    # another request (a platform selection) is not "already converted"; --force converts again
    assert main([*argv, "--platform", "linux/amd64"]) == 0
    assert "image_conversion_started" in _events(capsys.readouterr().err)
    assert main([*argv, "--force"]) == 0
    forced = capsys.readouterr()
    assert "image_conversion_started" in _events(forced.err) and forced.out == first.out


def test_build_processes_give_the_same_image(client: RegistryClient, prefix: str, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    # Registry to registry, through build processes and without: the same manifest digest.
    push_image(client, tmp_path / "images", sample_layers(), [f"{prefix}/app:1"])
    capsys.readouterr()
    outs = []
    for n, mode in enumerate(["--build-processes", "--no-build-processes"]):
        assert main([f"{prefix}/app:1", "--dest", f"{prefix}/out{n}:x", "--to", "erofs+lz4", "--jobs", "3",
                     "-q", mode]) == 0
        outs.append(capsys.readouterr().out.split("@")[1])
    assert outs[0] == outs[1]


def test_a_layout_rerun_skips_too(capsys: pytest.CaptureFixture[str], sample: SampleLayout, tmp_path: Path) -> None:
    rc, first, _ = convert(capsys, sample, tmp_path / "out")
    assert rc == 0
    index = (tmp_path / "out" / "index.json").stat().st_mtime_ns
    rc = main([f"oci:{sample.path}:v1", "--dest", f"oci:{tmp_path / 'out'}:conv", "--log-format", "json"])
    again = capsys.readouterr()
    assert rc == 0 and "already_converted" in _events(again.err)
    assert again.out == first  # the same REF@DIGEST line
    assert (tmp_path / "out" / "index.json").stat().st_mtime_ns == index  # not written again


def test_no_push_access_fails_before_pulling(registry_token: RegistryServer, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    """Anonymous users may pull public/ on this registry but not push: the conversion fails at
    once, naming the destination, instead of after pulling and converting every layer."""
    config = registry_token.write_docker_config(tmp_path / "docker")
    with RegistryClient(credentials=DockerConfigCredentials(env={"DOCKER_CONFIG": str(config.parent)})) as admin:
        push_image(admin, tmp_path / "images", sample_layers()[:1], [f"{registry_token.host}/public/src:1"])
    capsys.readouterr()
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "anonymous"))
    monkeypatch.delenv("REGISTRY_AUTH_FILE", raising=False)
    rc = main([f"{registry_token.host}/public/src:1", "--dest", f"{registry_token.host}/public/out:1", "-q"])
    _, err = capsys.readouterr()
    assert rc == 1
    [line] = err.splitlines()
    prefix = f"convert: checking push access to {registry_token.host}/public/out before converting: "
    assert line.startswith(prefix), line
    assert "layer" not in line


def test_an_unreachable_destination_fails_before_pulling(client: RegistryClient, prefix: str, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    push_image(client, tmp_path / "images", sample_layers()[:1], [f"{prefix}/app:1"])
    capsys.readouterr()
    rc = main([f"{prefix}/app:1", "--dest", "127.0.0.1:9/nowhere:1", "-q", "--retries", "1"])
    _, err = capsys.readouterr()
    assert rc == 1
    [line] = err.splitlines()
    assert "127.0.0.1:9" in line and "layer" not in line, line
