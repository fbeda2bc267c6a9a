"""``convert mirror`` as users run it: dry runs, reports, exit statuses, flags, error lines."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from converter.cli import main
from converter.cli.mirror import plain_http_hosts, run_mirror
from converter.errors import UsageError
from converter.mirror.jobs import JobFileError
from converter.reference import parse_reference
from converter.registry.client import RegistryClient
from converter.registry.credentials import DockerConfigCredentials
from converter.testing.sample import sample_layers
from tests.mirror.helpers import push_image, push_shared_base_images
from tests.support.registry import RegistryServer


def write_job(path: Path, prefix: str, *sources: str, cache: str = "null") -> Path:
    lines = ["defaults:", f'  dest: "{prefix}/out/{{repository}}:{{tag}}-{{format}}"', f"  cache_repo: {cache}",
             "images:", *(f"  - source: {s}" for s in sources)]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def one_image(client: RegistryClient, prefix: str, tmp_path: Path) -> str:
    push_image(client, tmp_path / "images", sample_layers()[:1], [f"{prefix}/app:1"])
    return f"{prefix}/app:1"


def test_dry_run_prints_the_plan(prefix: str, one_image: str, tmp_path: Path,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    """The plan's table goes where a run's table goes: stderr (stdout only carries --report -)."""
    job = write_job(tmp_path / "job.yaml", prefix, one_image)
    assert run_mirror([str(job), "--dry-run", "-q"]) == 0
    captured = capsys.readouterr()
    assert captured.out == ""
    err = captured.err
    assert "pending" in err and one_image in err and "1 to convert" in err and "to pull" in err


def test_run_then_rerun_with_report(prefix: str, one_image: str, tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    job = write_job(tmp_path / "job.yaml", prefix, one_image, cache=f"{prefix}/cache")
    report = tmp_path / "report.json"
    assert run_mirror([str(job), "--report", str(report), "--workdir", str(tmp_path / "w")]) == 0
    first = json.loads(report.read_text())
    assert first["summary"]["converted"] == 1 and first["images"][0]["status"] == "converted"
    assert first["images"][0]["reason"] == "the destination had no image"  # never "not converted yet"
    err = capsys.readouterr().err
    assert "STATUS" in err and "1 converted, 0 skipped, 0 failed" in err
    assert run_mirror([str(job), "--report", "-"]) == 0
    captured = capsys.readouterr()
    second = json.loads(captured.out)
    assert second["images"][0]["status"] == "skipped"
    assert second["images"][0]["dest_digest"] == first["images"][0]["dest_digest"]
    # one progress line per image (JSON logs, as stderr is not a terminal here)
    events = [json.loads(line)["event"] for line in captured.err.splitlines() if line.startswith("{")]
    assert events.count("mirror_image_skipped") == 1


def test_failed_image_exits_1(prefix: str, one_image: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    job = write_job(tmp_path / "job.yaml", prefix, one_image, f"{prefix}/nothing:1")
    report = tmp_path / "r.json"
    assert run_mirror([str(job), "--report", str(report), "--dry-run"]) == 1
    statuses = [i["status"] for i in json.loads(report.read_text())["images"]]
    assert statuses == ["pending", "failed"]
    assert "failed" in capsys.readouterr().err


def test_cache_repo_flag_overrides_the_job(prefix: str, one_image: str, tmp_path: Path) -> None:
    job = write_job(tmp_path / "job.yaml", prefix, one_image, cache="cache.invalid/never-used")
    report = tmp_path / "r.json"
    assert run_mirror([str(job), "--cache-repo", f"{prefix}/flag-cache", "--report", str(report)]) == 0
    assert json.loads(report.read_text())["images"][0]["status"] == "converted"
    with RegistryClient() as client:
        host, repo = f"{prefix}/flag-cache".split("/", 1)
        assert [t for t in client.list_tags(host, repo) if t.startswith("cache-")]
    with pytest.raises(UsageError, match="--cache-repo"):
        run_mirror([str(job), "--cache-repo", "x.example/c:1"])


def test_usage_errors(tmp_path: Path, prefix: str) -> None:
    job = write_job(tmp_path / "job.yaml", prefix, "a.example/x:1")
    for flag in ("--image-jobs", "--jobs", "--layer-jobs"):  # 0 is the default, as in convert
        with pytest.raises(UsageError, match=f"argument .*{flag}.*: not a number of jobs"):
            run_mirror([str(job), flag, "-1"])
    with pytest.raises(UsageError, match="JOB_COMPLETION_INDEX is not set"):
        run_mirror([str(job), "--shard", "/3"], env={})
    with pytest.raises(UsageError, match="unrecognized arguments"):
        run_mirror([str(job), "--bogus"])


def test_main_prints_job_errors_on_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    job = tmp_path / "job.yaml"
    job.write_text("images:\n  - source: a.example/x:1\n    to: erofs+lz5\n")
    assert main(["mirror", str(job)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"convert: {job}:3: images[0].to: format 'erofs+lz5': unknown compression algorithm 'lz5'; "
                   "known: lz4, lz4hc, zstd, deflate, lzma")
    with pytest.raises(JobFileError):
        run_mirror([str(job)])


def test_plain_http_hosts() -> None:
    assert plain_http_hosts(["a:5000", "b:1,c:2"], {"CONVERT_PLAIN_HTTP": "registry:5000 d:3"}) == [
        "a:5000", "b:1", "c:2", "registry:5000", "d:3"]
    assert plain_http_hosts([], {}) == []


def test_a_bug_fails_the_image_as_an_internal_error(prefix: str, one_image: str, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    import converter.convert.layer as layer_module

    def broken(*args: object, **kwargs: object) -> None:
        raise TypeError("a bug")

    monkeypatch.setattr(layer_module, "_parse_into", broken)
    job = write_job(tmp_path / "job.yaml", prefix, one_image)
    report = tmp_path / "r.json"
    # the patch reaches builds in this process only (not build processes)
    assert run_mirror([str(job), "--report", str(report), "--workdir", str(tmp_path / "w"),
                       "--no-build-processes"]) == 70
    [image] = json.loads(report.read_text())["images"]
    assert image["status"] == "failed" and image["error"] == "internal error: TypeError: a bug"
    err = capsys.readouterr().err
    assert "Traceback" in err and "in broken" in err  # logged in full


def test_mirror_layer_limits_reach_the_conversion(prefix: str, one_image: str, tmp_path: Path) -> None:
    job = write_job(tmp_path / "job.yaml", prefix, one_image)
    report = tmp_path / "r.json"
    assert run_mirror([str(job), "--report", str(report), "--max-entries", "1", "--retries", "1",
                       "--timeout", "30"]) == 1
    [image] = json.loads(report.read_text())["images"]
    assert image["status"] == "failed" and "too many entries: the limit is 1" in image["error"]


def test_dry_run_plan_predicts_failures_and_counts_shared_layers_once(
        client: RegistryClient, prefix: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """#13 item 11: what would certainly fail is marked failed, not pending; the bytes to pull
    count a layer shared by several images once; --report gives the plan as JSON."""
    digests = push_shared_base_images(client, tmp_path / "images", prefix)
    assert len(digests) == 3
    # an image that is EROFS already: a conversion of app:1.0
    job = write_job(tmp_path / "first.yaml", prefix, f"{prefix}/app:1.0")
    assert run_mirror([str(job), "--workdir", str(tmp_path / "w")]) == 0
    converted = f"{prefix}/out/{prefix.split('/', 1)[1]}/app:1.0-erofs"
    lines = ["defaults:", f'  dest: "{prefix}/out2/{{repository}}:{{tag}}-{{format}}"', "images:",
             f"  - source: {prefix}/app:1.0", f"  - source: {prefix}/base:1.0", f"  - source: {prefix}/mid:1.0",
             f"  - source: {prefix}/app:1.0", "    dest: " + f'"{prefix}/other/app:s390x"',
             "    platforms: [linux/s390x]",
             f"  - source: {converted}"]
    plan_job = tmp_path / "job.yaml"
    plan_job.write_text("\n".join(lines) + "\n")
    report = tmp_path / "plan.json"
    capsys.readouterr()
    assert run_mirror([str(plan_job), "--dry-run", "--report", str(report)]) == 1
    document = json.loads(report.read_text())
    statuses = [image["status"] for image in document["images"]]
    assert statuses == ["pending", "pending", "pending", "failed", "failed"], document
    errors = [image["error"] for image in document["images"]]
    assert "the image is linux/amd64, not linux/s390x" in errors[3]
    assert "already an EROFS layer" in errors[4]
    per_image = sum(image["bytes"] for image in document["images"][:3])
    manifests = {name: json.loads(client.get_manifest(parse_reference(f"{prefix}/{name}:1.0")).data)
                 for name in ("app", "base", "mid")}
    unique = {layer["digest"]: layer["size"] for m in manifests.values() for layer in m["layers"]}
    assert document["summary"]["bytes"] == sum(unique.values()) < per_image


def test_the_table_shows_the_whole_cause(prefix: str, one_image: str, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    """#13 item 9: a failure's cause comes last in its message; the table never cuts it off."""
    job = write_job(tmp_path / "job.yaml", prefix, one_image)
    assert run_mirror([str(job), "--max-entries", "1", "--log-format", "console"]) == 1
    table = capsys.readouterr().err.splitlines()
    [row] = [line for line in table if line.startswith("failed")]
    assert row.endswith("too many entries: the limit is 1"), row


def test_no_push_access_fails_the_image_before_pulling(registry_token: RegistryServer, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    """#13 item 5 in mirror runs: anonymous users may pull public/ but not push; the image fails
    at once, before any layer is pulled or built."""
    config = registry_token.write_docker_config(tmp_path / "docker")
    with RegistryClient(credentials=DockerConfigCredentials(env={"DOCKER_CONFIG": str(config.parent)})) as admin:
        push_image(admin, tmp_path / "images", sample_layers()[:1], [f"{registry_token.host}/public/src:1"])
    job = tmp_path / "job.yaml"
    job.write_text(f"images:\n  - source: {registry_token.host}/public/src:1\n"
                   f'    dest: "{registry_token.host}/public/out:1"\n')
    report = tmp_path / "r.json"
    env = {"DOCKER_CONFIG": str(tmp_path / "anonymous"), "HOME": str(tmp_path)}
    assert run_mirror([str(job), "--report", str(report), "--retries", "1"], env=env) == 1
    [image] = json.loads(report.read_text())["images"]
    assert image["status"] == "failed" and image["layers_converted"] == 0
    assert image["error"].startswith(f"checking push access to {registry_token.host}/public/out before "), image


def test_build_processes_behind_the_layer_cache(client: RegistryClient, prefix: str, tmp_path: Path) -> None:
    # The mirror's caching wrapper around build processes: the graph overlaps the builds (the
    # wrapper says its engine runs apart), and the result is the image made without them.
    push_image(client, tmp_path / "images", sample_layers(), [f"{prefix}/app:1"])
    digests = []
    for n, mode in enumerate(["--build-processes", "--no-build-processes"]):
        job = write_job(tmp_path / f"job{n}.yaml", prefix, f"{prefix}/app:1", cache=f"{prefix}/cache{n}")
        job.write_text(job.read_text().replace("/out/", f"/out{n}/"))
        report = tmp_path / f"r{n}.json"
        assert run_mirror([str(job), "--report", str(report), "--layer-jobs", "3", mode]) == 0
        [image] = json.loads(report.read_text())["images"]
        assert image["status"] == "converted"
        digests.append(image["dest_digest"])
    assert digests[0] == digests[1]
