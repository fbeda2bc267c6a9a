"""Mirror jobs against a hostile registry (a real one behind ``HostileRegistry``, which lies on
demand): one bad answer fails one image, never the job, and the report is always written."""

from __future__ import annotations

import json
import os
import stat
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from converter.cli import main
from converter.mirror import plan as plan_module
from converter.mirror.jobs import JobFileError, job_environment, parse_job
from converter.mirror.plan import Status, make_plan
from converter.registry.client import RegistryClient
from converter.testing.sample import sample_layers
from tests.mirror.helpers import push_image
from tests.support.hostile import HostileRegistry, Reply
from tests.support.registry import RegistryServer


@pytest.fixture
def hostile(registry_open: RegistryServer) -> Iterator[HostileRegistry]:
    with HostileRegistry(registry_open.host) as server:
        yield server


def test_invalid_listed_tags_fail_no_healthy_image(hostile: HostileRegistry, client: RegistryClient, prefix: str,
                                                   tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    push_image(client, tmp_path / "images", sample_layers()[:1], [f"{prefix}/app:1", f"{prefix}/app:2"])
    namespace = prefix.split("/", 1)[1]
    repo = f"{namespace}/app"
    long_tag = "a" * 128  # a valid tag, but "{tag}-{format}" makes the destination's tag too long
    hostile.answer(rf"^GET /v2/{repo}/tags/list", Reply.json(
        {"name": repo, "tags": ["1", "not valid!", "2", "\x1b]0;pwned\x07", "", long_tag]}))
    job = tmp_path / "job.yaml"
    job.write_text(f"""\
defaults:
  dest: "{prefix}/out/app:{{tag}}-{{format}}"
images:
  - source: {hostile.host}/{repo}
    tags: {{include: ["*"]}}
""")
    report = tmp_path / "report.json"
    assert main(["mirror", str(job), "--report", str(report), "--workdir", str(tmp_path / "w")]) == 1
    images = {i["source"].rsplit(":", 1)[1]: i for i in json.loads(report.read_text())["images"]}
    assert {t: i["status"] for t, i in images.items()} == {"1": "converted", "2": "converted", long_tag: "failed"}
    assert "is not a valid reference" in images[long_tag]["error"]
    err = capsys.readouterr().err
    warnings = [json.loads(line) for line in err.splitlines() if "mirror_invalid_tags_skipped" in line]
    assert len(warnings) == 1 and warnings[0]["count"] == 3
    assert "\x1b" not in err and "\x07" not in err


def test_a_listed_tag_taking_a_named_destination_fails_alone(hostile: HostileRegistry, client: RegistryClient,
                                                             prefix: str, tmp_path: Path) -> None:
    push_image(client, tmp_path / "images", sample_layers()[:1], [f"{prefix}/app:1", f"{prefix}/other:2"])
    repo = f"{prefix.split('/', 1)[1]}/app"
    hostile.answer(rf"^GET /v2/{repo}/tags/list", Reply.json({"name": repo, "tags": ["1", "2"]}))
    job = parse_job(textwrap.dedent(f"""\
        defaults: {{dest: "{prefix}/out/x:{{tag}}"}}
        images:
          - source: {hostile.host}/{repo}
            tags: {{include: ["*"]}}
          - source: {prefix}/other:2
        """), filename="job.yaml")
    plan = make_plan(job, client)
    got = {p.source.replace(hostile.host, "H").replace(prefix, "P"): p for p in plan.images}
    assert {s: p.status for s, p in got.items()} == {
        f"H/{repo}:1": Status.CONVERT, f"H/{repo}:2": Status.FAILED, "P/other:2": Status.CONVERT}
    assert got[f"H/{repo}:2"].error.endswith(f"is also the destination of {prefix}/other:2 (images[1])")


def test_report_is_never_written_through_a_planted_path(client: RegistryClient, prefix: str, tmp_path: Path) -> None:
    push_image(client, tmp_path / "images", sample_layers()[:1], [f"{prefix}/app:1"])
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    report = tmp_path / "report.json"
    (tmp_path / f".report.json.tmp-{os.getpid()}").symlink_to(victim)  # the name the report used to go through
    job = tmp_path / "job.yaml"
    job.write_text(f'defaults: {{dest: "{prefix}/out/app:{{tag}}"}}\nimages:\n  - source: {prefix}/app:1\n')
    old = os.umask(0o027)
    try:
        assert main(["mirror", str(job), "--dry-run", "-q", "--report", str(report)]) == 0
    finally:
        os.umask(old)
    assert victim.read_text() == "precious\n"
    assert json.loads(report.read_text())["summary"]["pending"] == 1
    assert stat.S_ISREG(report.lstat().st_mode) and stat.S_IMODE(report.stat().st_mode) == 0o640


# --- environment variables in job files ---------------------------------------------------------------

SECRET = "tok3n-s3cr3t-value"


def test_job_environment_is_an_allow_list() -> None:
    environ = {"SECRET_TOKEN": SECRET, "CONVERT_JOB_REGISTRY": "r.example", "HOME": "/root", "ALLOWED": "a"}
    assert job_environment(environ, ["ALLOWED", "NOT_SET"]) == {"CONVERT_JOB_REGISTRY": "r.example", "ALLOWED": "a"}
    with pytest.raises(JobFileError) as err:
        parse_job('images:\n  - {source: "r.example/x:${SECRET_TOKEN}", dest: "m.example/x:1"}\n',
                  filename="job.yaml", env=job_environment(environ))
    assert "allow it with --env SECRET_TOKEN" in str(err.value) and SECRET not in str(err.value)


def test_a_job_file_reads_no_variable_it_was_not_given(prefix: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("SECRET_TOKEN", SECRET)
    job = tmp_path / "job.yaml"
    job.write_text(f'defaults: {{dest: "{prefix}/out/app:{{tag}}"}}\n'
                   f'images:\n  - source: "{prefix}/app:${{SECRET_TOKEN}}"\n')
    assert main(["mirror", str(job), "--dry-run", "--env", f"SECRET_TOKEN={SECRET}"]) == 2
    assert capsys.readouterr().err.strip() == ("convert: convert mirror: --env 'SECRET_TOKEN'=...: give the name of "
                                               "an environment variable (its value comes from the environment)")
    assert main(["mirror", str(job), "--dry-run"]) == 2
    captured = capsys.readouterr()
    assert SECRET not in captured.out + captured.err
    (line,) = captured.err.splitlines()
    assert line.startswith(f"convert: {job}:3: images[0].source: environment variable SECRET_TOKEN is not set or "
                           "not given to job files")


def test_expanded_values_are_never_shown(client: RegistryClient, prefix: str, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    push_image(client, tmp_path / "images", sample_layers()[:1], [f"{prefix}/app:{SECRET}"])
    capsys.readouterr()  # the push's own log lines
    monkeypatch.setenv("SECRET_TOKEN", SECRET)
    monkeypatch.setenv("CONVERT_JOB_NS", prefix)
    job = tmp_path / "job.yaml"
    job.write_text("""\
defaults: {dest: "${CONVERT_JOB_NS}/out/{repository}:{tag}-{format}"}
images:
  - source: "${CONVERT_JOB_NS}/app:${SECRET_TOKEN}"
  - source: "${CONVERT_JOB_NS}/missing:${SECRET_TOKEN}"
""")
    report = tmp_path / "report.json"
    args = ["mirror", str(job), "--env", "SECRET_TOKEN", "--report", str(report), "--workdir", str(tmp_path / "w")]
    assert main([*args, "-v"]) == 1  # the missing image fails, the other converts
    assert main([*args, "--dry-run"]) == 1
    captured = capsys.readouterr()
    shown = captured.out + captured.err + report.read_text()
    assert SECRET not in shown and prefix not in shown
    images = json.loads(report.read_text())["images"]
    assert [i["source"] for i in images] == ["${CONVERT_JOB_NS}/app:${SECRET_TOKEN}",
                                             "${CONVERT_JOB_NS}/missing:${SECRET_TOKEN}"]
    assert [i["status"] for i in images] == ["skipped", "failed"]
    assert "${CONVERT_JOB_NS}/missing:${SECRET_TOKEN}" in images[1]["error"]
    assert "mirror_image_converted" in captured.err and "${SECRET_TOKEN}" in captured.err


def test_a_crash_while_planning_one_image_fails_only_that_image(client: RegistryClient, prefix: str, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    push_image(client, tmp_path / "images", sample_layers()[:1], [f"{prefix}/app:1", f"{prefix}/app:2"])
    real = plan_module.parse_manifest

    def buggy(data: bytes, media_type: str, **kwargs: object) -> object:  # a bug, for one image only
        if str(kwargs.get("what", "")).endswith("app:2"):
            raise KeyError("bug")
        return real(data, media_type, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(plan_module, "parse_manifest", buggy)
    job = parse_job(f'defaults: {{dest: "{prefix}/out/app:{{tag}}"}}\nimages:\n  - source: {prefix}/app:1\n'
                    f'  - source: {prefix}/app:2\n', filename="job.yaml")
    first, second = make_plan(job, client).images
    assert first.status is Status.CONVERT
    assert second.status is Status.FAILED
    assert second.error == f"internal error: planning {prefix}/app:2: KeyError: 'bug'"
