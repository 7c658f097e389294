"""Load: 20 clients doing 200 mixed operations each on 50 instances, through the mount, the
CLI and the REST bridge, while the daemon is killed (SIGKILL) twice. No deadlock, no lost
instance, no answer of 500, and ``lxfsd --check`` finds nothing at the end."""

from __future__ import annotations

import errno
import http.client
import os
import random
import threading
import time

import pytest
from conftest import CLIError, call_with_timeout
from test_recovery_integration import check
from test_rest_instances_integration import api

pytestmark = pytest.mark.integration

CLIENTS = 20
OPERATIONS = 200
INSTANCES = 50
#: errors a client may meet: the daemon being killed (ENOTCONN...), a transition refused
#: because another client got there first (EBUSY, EEXIST, ENOENT, EINVAL...)
EXPECTED = {errno.ENOTCONN, errno.ECONNABORTED, errno.EBUSY, errno.EEXIST, errno.ENOENT,
            errno.EINVAL, errno.ENOTEMPTY, errno.EIO}
#: what a REST client meets while the daemon is down or restarting
REST_EXPECTED = {errno.ECONNREFUSED, errno.ENOENT, errno.ECONNRESET, errno.EPIPE}


class ServerError(Exception):
    """A REST answer of 500: input or a race must never produce one."""


def rest(d, method: str, path: str, body: object = None) -> None:
    """One REST request (and its operation, when async); a 500 raises ServerError."""
    status, doc, _ = api(d, method, path, body)
    if status >= 500 or doc.get("error_code", 0) >= 500:
        raise ServerError(f"{method} {path}: {status} {doc}")
    if doc.get("type") == "async":
        status, op, _ = api(d, "GET", doc["operation"] + "/wait?timeout=120")
        metadata = op.get("metadata") or {}
        if status >= 500 or (metadata.get("err") and "internal error" in metadata["err"]):
            raise ServerError(f"{method} {path}: operation {op}")


def test_twenty_clients_and_two_crashes(daemon_with_busybox):
    d = daemon_with_busybox
    names = [f"l{i:02d}" for i in range(INSTANCES)]
    for name in names[:10]:
        d.cli("launch", "busybox", name)
    for name in names[10:]:
        d.cli("create", "busybox", name)
    done = {"ops": 0, "expected_errors": 0}
    unexpected: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()

    def client(seed: int) -> None:
        rng = random.Random(seed)
        for _ in range(OPERATIONS):
            if stop.is_set():
                return
            name = rng.choice(names)
            base = d.path("instances", name)
            kind = rng.choice(["state", "read", "config", "snapshot", "list", "cli-list",
                               "cli-exec", "rest-list", "rest-state", "rest-config"])
            try:
                if kind == "state":
                    action = rng.choice(["start", "stop", "kill", "freeze", "unfreeze"])
                    call_with_timeout(lambda b=base, a=action: (b / "state").write_text(a + "\n"),
                                      120, f"{action} {name}")
                elif kind == "read":
                    call_with_timeout(lambda b=base: (b / "state").read_text(), 30, "read")
                elif kind == "config":
                    value = f"{rng.randint(32, 256)}MiB"
                    call_with_timeout(lambda b=base, v=value: (
                        b / "config" / "limits.memory").write_text(v + "\n"), 60, "config")
                elif kind == "snapshot":
                    snap = f"ls{rng.randint(0, 3)}"
                    path = base / "snapshots" / snap
                    if rng.random() < 0.5:
                        call_with_timeout(lambda p=path: os.mkdir(p), 120, "snapshot")
                    else:
                        call_with_timeout(lambda p=path: os.rmdir(p), 120, "snapshot delete")
                elif kind == "list":
                    call_with_timeout(
                        lambda: d.path("instances", ".list").read_text(), 30, "list")
                elif kind == "cli-list":
                    d.cli("list", timeout=60)
                elif kind == "rest-list":
                    call_with_timeout(lambda: rest(d, "GET", "/1.0/instances?recursion=2"),
                                      60, "rest list")
                elif kind == "rest-state":
                    action = rng.choice(["start", "stop", "restart", "freeze", "unfreeze"])
                    call_with_timeout(lambda n=name, a=action: rest(
                        d, "PUT", f"/1.0/instances/{n}/state",
                        {"action": a, "force": True, "timeout": 30}), 120, f"rest {action}")
                elif kind == "rest-config":
                    value = f"{rng.randint(32, 256)}MiB"
                    call_with_timeout(lambda n=name, v=value: rest(
                        d, "PATCH", f"/1.0/instances/{n}", {"config": {"limits.memory": v}}),
                        60, "rest config")
                else:
                    d.cli("exec", name, "--", "true", timeout=60, check=False)
            except ServerError as exc:
                with lock:
                    unexpected.append(f"{kind} {name}: {exc}")
            except http.client.HTTPException:  # an answer cut by a crash
                with lock:
                    done["expected_errors"] += 1
            except OSError as exc:
                allowed = EXPECTED | (REST_EXPECTED if kind.startswith("rest") else set())
                if exc.errno not in allowed:
                    with lock:
                        unexpected.append(f"{kind} {name}: {exc}")
                with lock:
                    done["expected_errors"] += 1
            except CLIError:
                with lock:
                    done["expected_errors"] += 1
            except TimeoutError as exc:
                with lock:
                    unexpected.append(f"{kind} {name}: {exc} (deadlock?)")
            with lock:
                done["ops"] += 1

    threads = [threading.Thread(target=client, args=(seed,), daemon=True)
               for seed in range(CLIENTS)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for _crash in range(2):
        time.sleep(8)
        d.kill9()
        d.start()
    for thread in threads:
        thread.join(600)
    stop.set()
    elapsed = time.monotonic() - started
    assert not any(t.is_alive() for t in threads), "clients still blocked: a deadlock"
    assert not unexpected, unexpected[:20]
    assert d.instance_names() == names, "an instance was lost"
    check(d)
    print(f"\nload: {done['ops']} operations by {CLIENTS} clients on {INSTANCES} instances "
          f"in {elapsed:.0f}s with 2 daemon crashes; {done['expected_errors']} refused or "
          "cut by a crash, 0 unexpected")
