"""deploy/k8s/mirror-job.yaml through a real kubectl (Debian sid's), as far as a client goes
without a cluster: ``kubectl apply --dry-run=client --validate=false -o yaml``.

kubectl needs an API server for discovery (which kinds exist, and where) even for a client-side
dry run, and asks it whether each object exists yet. No Kubernetes API server is packaged in
Debian, so a stub answers exactly that: the discovery documents of the four kinds the manifest
may use, and 404 for every object. It records every request, so the test also proves that
nothing was written.
"""

from __future__ import annotations

import http.server
import json
import re
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.docker.engine import REPO, EngineError, sid_tool

KUBECTL = sid_tool("kubectl", "usr/bin/kubectl")
MANIFEST = REPO / "deploy" / "k8s" / "mirror-job.yaml"
VERBS = ["create", "delete", "get", "list", "patch", "update", "watch"]
DISCOVERY: dict[str, dict[str, Any]] = {
    "/api": {"kind": "APIVersions", "versions": ["v1"],
             "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}]},
    "/apis": {"kind": "APIGroupList", "apiVersion": "v1", "groups": [
        {"name": "batch", "versions": [{"groupVersion": "batch/v1", "version": "v1"}],
         "preferredVersion": {"groupVersion": "batch/v1", "version": "v1"}}]},
    "/api/v1": {"kind": "APIResourceList", "groupVersion": "v1", "resources": [
        {"name": "configmaps", "singularName": "configmap", "namespaced": True, "kind": "ConfigMap", "verbs": VERBS},
        {"name": "secrets", "singularName": "secret", "namespaced": True, "kind": "Secret", "verbs": VERBS}]},
    "/apis/batch/v1": {"kind": "APIResourceList", "groupVersion": "batch/v1", "resources": [
        {"name": "jobs", "singularName": "job", "namespaced": True, "kind": "Job", "verbs": VERBS},
        {"name": "cronjobs", "singularName": "cronjob", "namespaced": True, "kind": "CronJob", "verbs": VERBS}]},
}


class DiscoveryStub(http.server.ThreadingHTTPServer):
    requests: list[tuple[str, str]]


class _Handler(http.server.BaseHTTPRequestHandler):
    server: DiscoveryStub

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _answer(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _any(self) -> None:
        path = self.path.split("?")[0]
        self.server.requests.append((self.command, path))
        if self.command == "GET" and path in DISCOVERY:
            self._answer(200, DISCOVERY[path])
            return
        name = path.rsplit("/", 1)[-1]
        self._answer(404, {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound",
                           "code": 404, "message": f"{name!r} not found"})

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _any


@pytest.fixture
def api_stub() -> Iterator[DiscoveryStub]:
    server = DiscoveryStub(("127.0.0.1", 0), _Handler)
    server.requests = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def kubectl(stub: DiscoveryStub, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    if not KUBECTL.is_file():
        raise EngineError(f"{KUBECTL} is missing: run scripts/setup-system.sh (sid's kubectl)")
    config = tmp_path / "kubeconfig"
    config.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "stub",
        "clusters": [{"name": "stub", "cluster": {"server": f"http://127.0.0.1:{stub.server_address[1]}"}}],
        "contexts": [{"name": "stub", "context": {"cluster": "stub", "user": "stub", "namespace": "default"}}],
        "users": [{"name": "stub", "user": {}}]}))
    return subprocess.run([str(KUBECTL), "--kubeconfig", str(config), "--cache-dir", str(tmp_path / "cache"), *args],
                          capture_output=True, text=True, timeout=120, check=False)


def test_kubectl_client_dry_run_applies_the_manifest_unchanged(api_stub: DiscoveryStub, tmp_path: Path) -> None:
    proc = kubectl(api_stub, tmp_path, "apply", "--dry-run=client", "--validate=false", "-o", "yaml",
                   "-f", str(MANIFEST))
    assert proc.returncode == 0, proc.stderr
    listed = yaml.safe_load(proc.stdout)
    items = listed["items"] if listed.get("kind") == "List" else [listed]
    source = [d for d in yaml.safe_load_all(MANIFEST.read_text()) if d]
    assert [(i["apiVersion"], i["kind"], i["metadata"]["name"]) for i in items] == \
           [(d["apiVersion"], d["kind"], d["metadata"]["name"]) for d in source]
    for item, doc in zip(items, source, strict=True):
        # kubectl kept every field (nothing unknown dropped or renamed); it only adds its
        # last-applied-configuration annotation and the namespace
        assert {k: v for k, v in item.items() if k != "metadata"} == {k: v for k, v in doc.items() if k != "metadata"}
        applied = json.loads(item["metadata"]["annotations"]["kubectl.kubernetes.io/last-applied-configuration"])
        assert applied["metadata"]["name"] == doc["metadata"]["name"]
        assert item["metadata"]["namespace"] == "default"
    writes = [r for r in api_stub.requests if r[0] != "GET"]
    assert writes == [], writes
    assert ("GET", "/api/v1/namespaces/default/configmaps/erofs-mirror-pipelines") in api_stub.requests
    assert ("GET", "/apis/batch/v1/namespaces/default/jobs/erofs-mirror") in api_stub.requests


def test_kubectl_refuses_a_broken_manifest(api_stub: DiscoveryStub, tmp_path: Path) -> None:
    """The check above has teeth: a kind kubectl cannot map, or bad YAML, fails the same command."""
    for broken in (MANIFEST.read_text().replace("kind: Job", "kind: Jb"),
                   MANIFEST.read_text().replace("  completions: 4", "  completions: [4")):
        path = tmp_path / "broken.yaml"
        path.write_text(broken)
        proc = kubectl(api_stub, tmp_path, "apply", "--dry-run=client", "--validate=false", "-o", "yaml",
                       "-f", str(path))
        assert proc.returncode != 0 and proc.stderr.strip(), proc.stdout


def test_pod_runs_as_the_images_user() -> None:
    """The Job asks for the user the image runs as, non-root, read-only, and mounts the Docker
    config where DOCKER_CONFIG points inside that user's home."""
    user = re.search(r"^USER (\d+):(\d+)$", (REPO / "docker" / "Dockerfile").read_text(), re.M)
    assert user is not None
    job = next(d for d in yaml.safe_load_all(MANIFEST.read_text()) if d and d["kind"] == "Job")
    pod = job["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert (pod["securityContext"]["runAsUser"], pod["securityContext"]["runAsGroup"]) == \
           (int(user[1]), int(user[2]))
    (container,) = pod["containers"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert {"/tmp", "/work", env["DOCKER_CONFIG"]} <= mounts
    assert env["DOCKER_CONFIG"].startswith("/home/erofs/")
