"""No credential ever reaches the output: stdout, stderr and the -v debug logs of conversions
against registries with htpasswd (Basic) and bearer-token authentication.

Credentials come from a Docker config file (``$DOCKER_CONFIG``), as users provide them. The
secrets searched for are the password, the base64 ``user:password`` of a Basic header, the
identity token and every bearer token the token service issued during the test; the word
"Authorization" (any case) and "Basic "/"Bearer " followed by a credential-looking word must
not appear either. Failures are covered too: a wrong password and a missing tag.
"""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from converter.cli import main
from tests.reliability.imageenv import Sample, skopeo_copy, write_sample
from tests.support.registry import RegistryServer

pytestmark = pytest.mark.timeout(300)
REPO = Path(__file__).resolve().parents[2]
_CREDENTIAL_WORD = re.compile(r"(?i)\b(basic|bearer)\s+[A-Za-z0-9._~+/=-]{8,}")


@pytest.fixture(scope="module")
def sample() -> Iterator[Sample]:
    with tempfile.TemporaryDirectory() as tmp:
        yield write_sample(Path(tmp) / "layout")


def _assert_clean(text: str, secrets: list[str]) -> None:
    for secret in secrets:
        assert secret not in text, "a secret leaked into the output"
    assert "authorization" not in text.lower(), "an Authorization header leaked into the output"
    assert not _CREDENTIAL_WORD.search(text), _CREDENTIAL_WORD.search(text)


def _run_all(server: RegistryServer, sample: Sample, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
             capsys: pytest.CaptureFixture[str], repo: str) -> tuple[str, list[str]]:
    """Good, wrong-password and missing-tag conversions with -v; all output and the secrets."""
    assert server.username and server.password
    skopeo_copy(sample, f"{server.host}/{repo}/sample:v1", creds=f"{server.username}:{server.password}")
    good = server.write_docker_config(tmp_path / "good")
    wrong_password = "wrong-" + server.password
    bad = tmp_path / "bad" / "config.json"
    bad.parent.mkdir()
    bad.write_text(json.dumps({"auths": {server.host: {"auth": base64.b64encode(
        f"{server.username}:{wrong_password}".encode()).decode()}}}))
    monkeypatch.delenv("REGISTRY_AUTH_FILE", raising=False)
    output: list[str] = []
    runs = [
        (good.parent, f"{server.host}/{repo}/sample:v1", ["--log-format", "json"], 0),
        (good.parent, f"{server.host}/{repo}/sample:v1", ["--log-format", "console"], 0),
        (good.parent, f"{server.host}/{repo}/sample:missing", [], 1),
        (bad.parent, f"{server.host}/{repo}/sample:v1", [], 1),
    ]
    for config_dir, source, flags, status in runs:
        monkeypatch.setenv("DOCKER_CONFIG", str(config_dir))
        capsys.readouterr()
        rc = main([source, "--dest", f"{server.host}/{repo}/out:erofs", "-v", *flags])
        captured = capsys.readouterr()
        assert rc == status, captured.err[-2000:]
        output += [captured.out, captured.err]
    # And the real process, whose logging setup is not shared with the test process.
    env = {**os.environ, "DOCKER_CONFIG": str(good.parent), "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "converter.cli", f"{server.host}/{repo}/sample:v1", "--dest",
                           f"{server.host}/{repo}/out:sub", "-v"], capture_output=True, text=True, env=env,
                          cwd=REPO, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    output += [proc.stdout, proc.stderr]
    text = "\n".join(output)
    assert "registry_http" in text, "the -v run logged no HTTP requests: the check would be vacuous"
    return text, [*server.secrets(), wrong_password,
                  base64.b64encode(f"{server.username}:{wrong_password}".encode()).decode()]


def test_no_secret_in_output_basic_auth(registry_basic: RegistryServer, sample: Sample, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    text, secrets = _run_all(registry_basic, sample, tmp_path, monkeypatch, capsys, "basic")
    _assert_clean(text, secrets)


def test_no_secret_in_output_token_auth(registry_token: RegistryServer, sample: Sample, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    text, secrets = _run_all(registry_token, sample, tmp_path, monkeypatch, capsys, "private")
    assert registry_token.issuer is not None and registry_token.issuer.issued, "no token was issued"
    _assert_clean(text, secrets)
