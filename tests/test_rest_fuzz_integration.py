"""Schema-driven fuzzing of the REST bridge: schemathesis generates requests from the OpenAPI
document lxfs serves (``GET /openapi.json``) and sends them to a live daemon with a running
instance. No request may get a 500, crash the daemon or leave inconsistent state
(``lxfsd --check``).

Schemathesis speaks TCP: the test forwards a loopback port to the unix socket with socat
(loopback only, as the project's network rule asks). Creating pools and networks is left out:
their generated configs would create loop files and bridges on the host.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from test_recovery_integration import check

pytestmark = pytest.mark.integration

EXAMPLES_PER_OPERATION = 25


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_generated_requests_never_break_the_daemon(daemon_with_busybox, tmp_path):
    d = daemon_with_busybox
    d.cli("launch", "busybox", "c1")
    d.cli("snapshot", "c1", "s0")
    port = free_port()
    proxy = subprocess.Popen(["socat", f"TCP-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork",
                              f"UNIX-CONNECT:{d.data_dir / 'unix.socket'}"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(100):
            try:
                spec = json.load(urllib.request.urlopen(f"{url}/openapi.json", timeout=5))
                break
            except OSError:
                time.sleep(0.05)
        else:
            pytest.fail("the REST bridge does not answer through the proxy")
        assert len(spec["paths"]) > 50
        report = tmp_path / "fuzz.json"
        fingerprint = d.read("images", "aliases", "busybox", "fingerprint")
        config = tmp_path / "schemathesis.toml"
        # existing names for path parameters, so that requests reach real resources; 501
        # ("not implemented yet", said clearly) is an answer, not a server error
        config.write_text(
            '[checks.not_a_server_error]\n'
            'expected-statuses = ["1XX", "2XX", "3XX", "4XX", "501"]\n'
            '[parameters]\n'
            '"path.name" = "c1"\n"path.snapshot" = "s0"\n'
            f'"path.fingerprint" = "{fingerprint}"\n"path.pool" = "default"\n'
            '"path.file" = "lxc.log"\n')
        result = subprocess.run(
            [str(Path(sys.executable).parent / "schemathesis"), "--config-file", str(config),
             "run", f"{url}/openapi.json",
             "--checks", "not_a_server_error", "--max-examples", str(EXAMPLES_PER_OPERATION),
             "--seed", "20261203", "--generation-deterministic",
             "--exclude-path-regex", r"^/1\.0/(storage-pools|networks)$",
             "--exclude-path-regex", r"/(websocket|events|console)$",
             "--exclude-method", "HEAD", "--phases", "examples,coverage,fuzzing",
             "--request-timeout", "60", "--report", "ndjson",
             "--report-ndjson-path", str(report)],
            capture_output=True, text=True, timeout=1500)
        start = max(result.stdout.find("FAILURES"), result.stdout.find("ERRORS"), 0)
        failures = result.stdout[start:][:8000]
        assert result.returncode == 0, failures + result.stderr[-2000:]
        generated = [line.strip() for line in result.stdout.splitlines() if "generated" in line]
        print(f"\nfuzz: {' '.join(generated)}; " + result.stdout.strip().splitlines()[-1])
    finally:
        proxy.terminate()
        proxy.wait(10)
    assert d.running, "the daemon died"
    assert d.read("environment", "server_pid") == str(d.proc.pid)
    check(d)
