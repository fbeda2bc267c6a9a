"""The Kubernetes Indexed Job in deploy/k8s/mirror-job.yaml: its shape, and that its job file is valid."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from converter.cli.mirror import build_parser
from converter.mirror.jobs import parse_job
from converter.mirror.plan import parse_shard

MANIFEST = Path(__file__).resolve().parents[2] / "deploy" / "k8s" / "mirror-job.yaml"


def documents() -> dict[str, dict[str, Any]]:
    docs = [d for d in yaml.safe_load_all(MANIFEST.read_text()) if d]
    return {d["kind"]: d for d in docs}


def test_indexed_job_shape() -> None:
    job = documents()["Job"]
    assert job["apiVersion"] == "batch/v1"
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed"
    assert spec["parallelism"] == spec["completions"] >= 2
    pod = spec["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    (container,) = pod["containers"]
    command = container["command"]
    assert command[:3] == ["erofs-convert", "mirror", "/pipelines/mirror.yaml"]
    shard = command[command.index("--shard") + 1]
    assert shard == f"$(JOB_COMPLETION_INDEX)/{spec['completions']}"
    # what the container runs parses, and every index Kubernetes hands out is a valid shard
    args = build_parser().parse_args(command[2:])
    assert args.shard == shard and args.report == "-"
    for index in range(spec["completions"]):
        expanded = shard.replace("$(JOB_COMPLETION_INDEX)", str(index))
        assert parse_shard(expanded).index == index


def test_credentials_and_job_file_are_mounted() -> None:
    docs = documents()
    pod = docs["Job"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    env = {e["name"]: e.get("value") for e in container["env"]}
    # Docker config from a Secret, where DOCKER_CONFIG points
    auth = volumes[next(n for n, m in mounts.items() if m["mountPath"] == env["DOCKER_CONFIG"])]
    assert auth["secret"]["items"] == [{"key": ".dockerconfigjson", "path": "config.json"}]
    # the job file from the ConfigMap, at the path the command names
    pipelines = volumes[next(n for n, m in mounts.items() if m["mountPath"] == "/pipelines")]
    config_map = docs["ConfigMap"]
    assert pipelines["configMap"]["name"] == config_map["metadata"]["name"]
    job = parse_job(config_map["data"]["mirror.yaml"], filename="mirror.yaml")
    assert job.images and all(e.settings.cache_repo is not None for e in job.images)
    assert "emptyDir" in volumes[next(n for n, m in mounts.items() if m["mountPath"] == "/work")]
