"""The REST bridge's instances (``/1.0/instances``: create, state, config, snapshots, logs,
metadata, files), driven by the real ``lxc`` 5.0.2 client, pylxd and raw requests, checked
against the reference captures of LXD 5.0.2 and against the mount (and the reverse)."""

from __future__ import annotations

import http.client
import ipaddress
import json
import os
import secrets
import signal
import socket
import stat
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.integration

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference" / "lxd-5.0-api"
#: objects whose keys are data (config keys, device and interface names), not fields
FREE_MAPS = {"config", "expanded_config", "devices", "expanded_devices", "disk", "network",
             "resources", "properties", "templates"}


# --- helpers -------------------------------------------------------------------------------

def lxc(d, *args: str, input: str | None = None, check: bool = True,
        env: dict[str, str] | None = None, timeout: float = 120
        ) -> subprocess.CompletedProcess[str]:
    """The real client on this daemon's socket (``LXD_DIR``), with a configuration of its
    own (``LXD_CONF``)."""
    conf = d.base / "lxc-conf"
    conf.mkdir(exist_ok=True)
    environ = dict(os.environ, LXD_DIR=str(d.data_dir), LXD_CONF=str(conf), **(env or {}))
    result = subprocess.run(["lxc", *args], input=input, capture_output=True, text=True,
                            env=environ, timeout=timeout,
                            stdin=None if input is not None else subprocess.DEVNULL)
    if check and result.returncode != 0:
        raise AssertionError(f"lxc {' '.join(args)} exited with {result.returncode}\n"
                             f"stdout: {result.stdout}\nstderr: {result.stderr}")
    return result


class UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: Path, timeout: float = 120) -> None:
        super().__init__("lxd", timeout=timeout)
        self.socket_path = str(path)

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.socket_path)


def raw(d, method: str, path: str, body: bytes | None = None,
        headers: dict[str, str] | None = None) -> tuple[int, bytes, dict[str, str]]:
    """One request: (status, body, headers with lower-case names)."""
    conn = UnixConnection(d.data_dir / "unix.socket")
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.read(), {k.lower(): v for k, v in resp.getheaders()}
    finally:
        conn.close()


def api(d, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
        ) -> tuple[int, dict[str, Any], dict[str, str]]:
    """One JSON request: (status, document, headers)."""
    data = None
    if isinstance(body, bytes):
        data = body
    elif body is not None:
        data = json.dumps(body).encode()
    status, content, hdrs = raw(d, method, path, data, headers)
    return status, json.loads(content) if content else {}, hdrs


def wait(d, response: dict[str, Any]) -> dict[str, Any]:
    """The finished operation of an async response."""
    assert response["type"] == "async", response
    status, doc, _ = api(d, "GET", response["operation"] + "/wait?timeout=120")
    assert status == 200, doc
    return doc["metadata"]


def succeeds(d, method: str, path: str, body: Any = None, **kw: Any) -> dict[str, Any]:
    """An async request that must succeed: its finished operation."""
    status, doc, _ = api(d, method, path, body, **kw)
    assert status == 202, doc
    op = wait(d, doc)
    assert op["status"] == "Success", op
    return op


def reference(name: str) -> Any:
    path = REFERENCE / f"{name}.json"
    if not path.is_file():
        pytest.fail(f"reference capture {path} is missing", pytrace=False)
    return json.loads(path.read_text())


def assert_fields(ours: Any, theirs: Any, where: str = "") -> None:
    """The same fields, recursively, as a capture of LXD (values and the keys of free maps
    may differ; scalar types must agree where both are set)."""
    if isinstance(theirs, dict) and isinstance(ours, dict):
        key = where.rsplit(".", 1)[-1]
        if key in FREE_MAPS:
            if key == "network" and theirs and ours:  # each interface as LXD's
                for iface, doc in ours.items():
                    assert_fields(doc, next(iter(theirs.values())), f"{where}.{iface}")
            return
        assert set(ours) == set(theirs), \
            f"{where or 'document'}: extra {sorted(set(ours) - set(theirs))}, " \
            f"missing {sorted(set(theirs) - set(ours))}"
        for k in theirs:
            assert_fields(ours[k], theirs[k], f"{where}.{k}")
    elif isinstance(theirs, list) and isinstance(ours, list):
        if theirs and ours:
            assert_fields(ours[0], theirs[0], f"{where}[0]")
    elif ours is not None and theirs is not None:
        assert type(ours) is type(theirs), \
            f"{where}: {type(ours).__name__} {ours!r}, LXD has {type(theirs).__name__}"


def launch(d, name: str, *args: str) -> None:
    lxc(d, "launch", "busybox", name, *args)
    assert d.read("instances", name, "state") == "RUNNING"


def wait_for(predicate, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


class Monitor:
    """``lxc monitor --type lifecycle --format json [FLAGS...]``: the events of
    ``/1.0/events`` (``--project P``, ``--all-projects``)."""

    def __init__(self, d, *flags: str) -> None:
        conf = d.base / "lxc-conf"
        conf.mkdir(exist_ok=True)
        self.proc = subprocess.Popen(
            ["lxc", "monitor", "--type", "lifecycle", "--format", "json", *flags],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
            env=dict(os.environ, LXD_DIR=str(d.data_dir), LXD_CONF=str(conf)))
        self.events: list[dict[str, Any]] = []
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()
        time.sleep(0.5)  # the websocket is up

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.strip():
                self.events.append(json.loads(line))

    def actions(self) -> list[tuple[str, str]]:
        return [(e["metadata"]["action"], e["metadata"]["source"]) for e in list(self.events)]

    def wait_for(self, action: str, source: str) -> None:
        wait_for(lambda: (action, source) in self.actions(), f"event {action} {source}")

    def close(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


# --- lifecycle with the real client ---------------------------------------------------------

def test_launch_list_info_stop_restart_delete_with_lxc(daemon_with_busybox):
    """The everyday commands of the real client, each checked on the mount; the documents
    they read have LXD's fields; instance events appear on /1.0/events whoever acts."""
    d = daemon_with_busybox
    monitor = Monitor(d)
    try:
        launch(d, "c1")
        listed = lxc(d, "list", "--format", "csv", "-c", "ns").stdout.split()
        assert listed == ["c1,RUNNING"]
        info = lxc(d, "info", "c1").stdout
        assert "Status: RUNNING" in info
        assert f"PID: {d.read('instances', 'c1', 'pid')}" in info

        status, doc, headers = api(d, "GET", "/1.0/instances/c1")
        assert status == 200 and headers["etag"].startswith('"')
        assert_fields(doc, reference("get_instance_c1"))
        assert doc["metadata"]["config"]["image.os"] == "busybox"
        assert doc["metadata"]["expanded_devices"]["root"] == \
            {"type": "disk", "path": "/", "pool": "default"}
        _, full, _ = api(d, "GET", "/1.0/instances/c1?recursion=1")
        assert_fields(full, reference("get_instance_c1_recursion1"))
        assert full["metadata"]["state"]["pid"] == int(d.read("instances", "c1", "pid"))
        _, state, _ = api(d, "GET", "/1.0/instances/c1/state")
        assert_fields(state, reference("get_instance_c1_state"))
        assert state["metadata"]["processes"] >= 1 and state["metadata"]["memory"]["usage"] > 0
        assert state["metadata"]["network"]["lo"]["addresses"][0]["address"] == "127.0.0.1"

        pid = d.read("instances", "c1", "pid")
        lxc(d, "restart", "c1")
        assert d.read("instances", "c1", "state") == "RUNNING"
        assert d.read("instances", "c1", "pid") != pid
        lxc(d, "stop", "c1")
        assert d.read("instances", "c1", "state") == "STOPPED"
        _, stopped, _ = api(d, "GET", "/1.0/instances/c1/state")
        assert stopped == reference("get_instance_c1_state_stopped")
        again = lxc(d, "stop", "c1", check=False)
        assert again.returncode != 0 and "The instance is already stopped" in again.stderr

        d.write("instances", "c1", "state", "start")  # the mount acts, REST sees it
        assert lxc(d, "list", "--format", "csv", "-c", "ns").stdout.split() == ["c1,RUNNING"]
        refused = lxc(d, "delete", "c1", check=False)
        assert refused.returncode != 0 and "stop it first" in refused.stderr
        lxc(d, "delete", "--force", "c1")
        assert d.instance_names() == []
        status, gone, _ = api(d, "GET", "/1.0/instances/c1")
        assert (status, gone) == (404, reference("get_instance_missing"))
        for action in ("instance-created", "instance-started", "instance-restarted",
                       "instance-stopped", "instance-deleted"):
            monitor.wait_for(action, "/1.0/instances/c1")
    finally:
        monitor.close()


def test_create_errors_are_sync_or_async_as_in_lxd_and_leave_nothing(daemon_with_busybox):
    d = daemon_with_busybox
    status, doc, _ = api(d, "POST", "/1.0/instances", b"")
    assert (status, doc) == (400, reference("post_instances_bad_json"))
    status, doc, _ = api(d, "POST", "/1.0/instances",
                         {"name": "c3", "source": {"type": "image", "alias": "nope"}})
    assert (status, doc) == (404, reference("post_instances_bad_alias"))
    # an image server that does not answer: the pull is the operation's, and fails there
    status, doc, _ = api(d, "POST", "/1.0/instances", {"name": "c3", "source": {
        "type": "image", "alias": "ubuntu/22.04", "server": "https://127.0.0.1:9",
        "protocol": "simplestreams"}})
    assert status == 202
    op = wait(d, doc)
    assert op["status"] == "Failure" and "127.0.0.1:9" in op["err"]
    for body, words in (({"name": "0bad", "source": {"type": "none"}}, "Invalid instance name"),
                        ({"name": "c3", "source": {"type": "bogus"}}, "Unknown source type"),
                        ({"name": "c3", "source": {"type": "none"},
                          "config": {"bogus.key": "1"}}, "unknown configuration key"),
                        ({"name": "c3", "source": {"type": "none"},
                          "config": {"limits.memory": "lots"}}, "limits.memory"),
                        ({"name": "c3", "source": {"type": "none"},
                          "devices": {"d": {"type": "warp-drive"}}}, "unknown type"),
                        ({"name": "c3", "source": {"type": "none"}, "type": "virtual-machine"},
                         "containers only")):
        status, doc, _ = api(d, "POST", "/1.0/instances", body)
        assert status == 400 and words in doc["error"], (body, doc)
    status, doc, _ = api(d, "POST", "/1.0/instances",
                         {"name": "c3", "source": {"type": "none"}, "profiles": ["nope"]})
    assert status == 404 and "nope" in doc["error"]
    assert d.instance_names() == []

    # failures LXD reports in the operation: there too, and the record is gone again
    status, doc, headers = api(d, "POST", "/1.0/instances", {
        "name": "c3", "source": {"type": "image", "fingerprint": "f" * 64}})
    assert status == 202 and headers["location"] == doc["operation"]
    assert_fields(doc, reference("post_instances_c3"))
    assert doc["metadata"]["resources"] == reference("post_instances_c3")["metadata"][
        "resources"]
    op = wait(d, doc)
    assert op["status"] == "Failure" and op["status_code"] == 400 and "not found" in op["err"]
    assert d.instance_names() == []
    succeeds(d, "POST", "/1.0/instances",
             {"name": "c3", "source": {"type": "image", "alias": "busybox"}})
    status, doc, _ = api(d, "POST", "/1.0/instances",
                         {"name": "c3", "source": {"type": "image", "alias": "busybox"}})
    assert status == 202
    op = wait(d, doc)
    assert_fields(op, reference("get_operation_dup_name_wait")["metadata"])
    assert op["status"] == "Failure" and "already exists" in op["err"]
    assert d.instance_names() == ["c3"] and d.read("instances", "c3", "source")

    status, doc, _ = api(d, "POST", "/1.0/instances/missing", {"name": "other"})
    assert (status, doc) == (404, reference("post_instance_rename_missing"))
    lxc(d, "start", "c3")
    status, doc, _ = api(d, "DELETE", "/1.0/instances/c3")
    assert (status, doc) == (400, reference("delete_instance_running"))
    assert d.read("instances", "c3", "state") == "RUNNING"


def test_create_with_config_devices_profiles_and_empty(daemon_with_busybox):
    """What a create carries lands on the instance as the mount shows it; an empty create
    is a record without a root filesystem, as ``mkdir instances/NAME``."""
    d = daemon_with_busybox
    os.mkdir(d.path("profiles", "extra"))
    d.write("profiles", "extra", "config", "user.from-profile", "yes")
    succeeds(d, "POST", "/1.0/instances", {
        "name": "c1", "source": {"type": "image", "alias": "busybox"},
        "config": {"user.note": "hello", "limits.processes": "100"},
        "devices": {"tmp": {"type": "disk", "source": "/tmp", "path": "/mnt/tmp"}},
        "profiles": ["default", "extra"], "ephemeral": True, "description": "made by REST"})
    assert d.read("instances", "c1", "config", "user.note") == "hello"
    assert d.read("instances", "c1", "config", "limits.processes") == "100"
    assert d.read("instances", "c1", "devices", "tmp", "source") == "/tmp"
    assert d.read("instances", "c1", "profiles").splitlines() == ["default", "extra"]
    assert d.read("instances", "c1", "ephemeral") == "true"
    assert d.read("instances", "c1", "description") == "made by REST"
    assert d.read("instances", "c1", "expanded", "config", "user.from-profile") == "yes"
    assert d.read("instances", "c1", "state") == "STOPPED"  # no start: lxc sends its own

    succeeds(d, "POST", "/1.0/instances", {"name": "empty", "source": {"type": "none"}})
    assert d.read("instances", "empty", "source") == ""
    assert not d.path("instances", "empty", "rootfs").exists()
    _, doc, _ = api(d, "GET", "/1.0/instances/empty")
    assert doc["metadata"]["status"] == "Stopped"
    lxc(d, "init", "--empty", "empty2")
    assert "empty2" in d.instance_names()

    status, doc, _ = api(d, "POST", "/1.0/instances", {"source": {"type": "none"}})
    assert status == 202
    named = wait(d, doc)["resources"]["instances"][0].rsplit("/", 1)[1]
    assert named in d.instance_names()


# --- configuration --------------------------------------------------------------------------

def test_put_replaces_all_or_nothing_patch_merges_etag_guards(daemon_with_busybox):
    d = daemon_with_busybox
    launch(d, "c1")
    lxc(d, "config", "set", "c1", "user.a", "1")
    assert d.read("instances", "c1", "config", "user.a") == "1"
    _, doc, headers = api(d, "GET", "/1.0/instances/c1")
    before = doc["metadata"]

    # a PUT with one refused key changes nothing, not even the keys that were fine
    bad = dict(before, config={**before["config"], "user.b": "2", "limits.memory": "lots"},
               description="changed", devices={"tmp": {"type": "disk", "source": "/tmp",
                                                       "path": "/mnt/tmp"}})
    status, doc, _ = api(d, "PUT", "/1.0/instances/c1", bad)
    op = wait(d, doc)
    assert op["status"] == "Failure" and "limits.memory" in op["err"]
    _, after, _ = api(d, "GET", "/1.0/instances/c1")
    assert after["metadata"]["config"] == before["config"]
    assert after["metadata"]["devices"] == {} and after["metadata"]["description"] == ""
    assert not d.path("instances", "c1", "config", "user.b").exists()
    # a refused device, and a profile list leaving no root disk: the same
    for change in ({"devices": {"x": {"type": "disk", "path": "/x", "readonly": "maybe"}}},
                   {"profiles": []}):
        status, doc, _ = api(d, "PUT", "/1.0/instances/c1", dict(before, **change))
        assert wait(d, doc)["status"] == "Failure"
    assert api(d, "GET", "/1.0/instances/c1")[1]["metadata"] == after["metadata"]

    # a good PUT replaces: a key left out is removed, new ones are set, in one event
    good = dict(before, config={k: v for k, v in before["config"].items() if k != "user.a"}
                | {"user.c": "3"}, description="replaced",
                devices={"tmp": {"type": "disk", "source": "/tmp", "path": "/mnt/tmp"}})
    succeeds(d, "PUT", "/1.0/instances/c1", good, headers={"If-Match": headers["etag"]})
    assert not d.path("instances", "c1", "config", "user.a").exists()
    assert d.read("instances", "c1", "config", "user.c") == "3"
    assert d.read("instances", "c1", "description") == "replaced"
    assert d.read("instances", "c1", "devices", "tmp", "path") == "/mnt/tmp"
    # the stale ETag is refused now
    status, doc, _ = api(d, "PUT", "/1.0/instances/c1", good,
                         headers={"If-Match": headers["etag"]})
    assert status == 412 and "ETag" in doc["error"]

    # PATCH merges (sync), an empty value drops a key
    status, doc, _ = api(d, "PATCH", "/1.0/instances/c1",
                         {"config": {"user.d": "4", "user.c": ""}})
    assert (status, doc["type"]) == (200, "sync")
    assert d.read("instances", "c1", "config", "user.d") == "4"
    assert not d.path("instances", "c1", "config", "user.c").exists()
    assert d.read("instances", "c1", "description") == "replaced"
    status, doc, _ = api(d, "PATCH", "/1.0/instances/c1", {"config": {"limits.cpu": "nope"}})
    assert status == 400 and not d.path("instances", "c1", "config", "limits.cpu").exists()
    status, doc, _ = api(d, "PATCH", "/1.0/instances/c1",
                         {"config": {"volatile.foo": "x"}})
    assert status == 400 and "managed by lxfs" in doc["error"]

    # the mount's changes show on REST, the client's on the mount
    d.write("instances", "c1", "config", "user.mount", "yes")
    assert api(d, "GET", "/1.0/instances/c1")[1]["metadata"]["config"]["user.mount"] == "yes"
    lxc(d, "config", "device", "add", "c1", "opt", "disk", "source=/opt", "path=/mnt/opt")
    assert d.read("instances", "c1", "devices", "opt", "source") == "/opt"
    lxc(d, "config", "unset", "c1", "user.d")
    assert not d.path("instances", "c1", "config", "user.d").exists()
    edited = lxc(d, "config", "show", "c1").stdout.replace("description: replaced",
                                                           "description: edited")
    lxc(d, "config", "edit", "c1", input=edited)
    assert d.read("instances", "c1", "description") == "edited"
    bad_edit = lxc(d, "config", "set", "c1", "limits.memory", "lots", check=False)
    assert bad_edit.returncode != 0 and "limits.memory" in bad_edit.stderr


def test_list_recursion_filters_all_projects_and_containers_alias(daemon_with_busybox):
    d = daemon_with_busybox
    launch(d, "web1")
    lxc(d, "init", "busybox", "db1")
    assert api(d, "GET", "/1.0/instances")[1]["metadata"] == \
        ["/1.0/instances/db1", "/1.0/instances/web1"]
    _, doc, _ = api(d, "GET", "/1.0/instances")
    assert_fields(doc, reference("get_instances"))
    _, doc, _ = api(d, "GET", "/1.0/instances?recursion=1")
    assert_fields(doc, reference("get_instances_recursion1"))
    _, doc, _ = api(d, "GET", "/1.0/instances?recursion=2")
    assert_fields(doc, reference("get_instances_recursion2"))
    running = next(i for i in doc["metadata"] if i["name"] == "web1")
    assert running["state"]["status"] == "Running"

    def names(query: str) -> list[str]:
        status, found, _ = api(d, "GET", "/1.0/instances?recursion=1&filter=" +
                               query.replace(" ", "+"))
        assert status == 200, found
        return sorted(i["name"] for i in found["metadata"])

    assert names("name eq web1") == ["web1"]
    assert names("status eq Running") == ["web1"]
    assert names("status eq stopped") == ["db1"]  # case-insensitive, as LXD's
    assert names("name eq web1 or name eq db1") == ["db1", "web1"]
    assert names("name eq web.* and status ne Running") == []
    assert names("not name eq web1") == ["db1"]
    assert names("config.image.os eq busybox") == ["db1", "web1"]
    assert names('description eq ""') == ["db1", "web1"]  # quoted values
    _, doc, _ = api(d, "GET", "/1.0/instances?filter=name+eq+db1")
    assert doc["metadata"] == ["/1.0/instances/db1"]
    status, doc, _ = api(d, "GET", "/1.0/instances?filter=name+eq")
    assert status == 400 and "Invalid filter" in doc["error"]
    _, doc, _ = api(d, "GET", "/1.0/instances?all-projects=true")
    assert doc["metadata"] == ["/1.0/instances/db1", "/1.0/instances/web1"]
    _, doc, _ = api(d, "GET", "/1.0/instances?recursion=1&all-projects=true")
    assert {i["project"] for i in doc["metadata"]} == {"default"}
    _, doc, _ = api(d, "GET", "/1.0/containers")
    assert doc["metadata"] == ["/1.0/containers/db1", "/1.0/containers/web1"]
    assert api(d, "GET", "/1.0/containers/web1/state")[1]["metadata"]["status"] == "Running"
    assert api(d, "GET", "/1.0/instances?project=other")[0] == 404
    listed = lxc(d, "list", "--format", "csv", "-c", "ns", "status=stopped").stdout.split()
    assert listed == ["db1,STOPPED"]


# --- state ---------------------------------------------------------------------------------

def test_state_actions_over_raw_requests(daemon_with_busybox):
    d = daemon_with_busybox
    launch(d, "c1")
    status, doc, headers = api(d, "PUT", "/1.0/instances/c1/state",
                               {"action": "freeze", "timeout": -1, "force": False})
    assert status == 202 and wait(d, doc)["status"] == "Success"
    assert d.read("instances", "c1", "state") == "FROZEN"
    assert api(d, "GET", "/1.0/instances/c1")[1]["metadata"]["status_code"] == 110
    succeeds(d, "PUT", "/1.0/instances/c1/state", {"action": "unfreeze"})
    assert d.read("instances", "c1", "state") == "RUNNING"

    status, doc, headers = api(d, "PUT", "/1.0/instances/c1/state",
                               {"action": "stop", "timeout": -1, "force": True})
    assert status == 202
    assert_fields(doc, reference("put_instance_c1_state_stop"))
    assert doc["metadata"]["resources"] == {"instances": ["/1.0/instances/c1"]}
    assert doc["metadata"]["description"] == "Stopping instance"
    op = wait(d, doc)
    assert_fields(op, reference("get_operation_c1_stop_wait")["metadata"])
    assert op["status"] == "Success"
    assert d.read("instances", "c1", "state") == "STOPPED"
    status, doc, _ = api(d, "PUT", "/1.0/instances/c1/state",
                         {"action": "stop", "timeout": -1, "force": False})
    assert status == 202
    failed = wait(d, doc)
    expected = reference("get_operation_failed_wait")["metadata"]
    assert (failed["status"], failed["status_code"], failed["err"]) == \
        (expected["status"], expected["status_code"], expected["err"])

    succeeds(d, "PUT", "/1.0/instances/c1/state", {"action": "start"})
    assert d.read("instances", "c1", "state") == "RUNNING"
    status, doc, _ = api(d, "PUT", "/1.0/instances/c1/state", {"action": "start"})
    assert wait(d, doc)["err"] == "The instance is already running"
    pid = d.read("instances", "c1", "pid")
    succeeds(d, "PUT", "/1.0/instances/c1/state", {"action": "restart", "force": True})
    assert d.read("instances", "c1", "state") == "RUNNING"
    assert d.read("instances", "c1", "pid") != pid
    succeeds(d, "PUT", "/1.0/instances/c1/state", {"action": "stop", "timeout": 5})
    assert d.read("instances", "c1", "state") == "STOPPED"

    for body, words in (({"action": "explode"}, "Unknown action"),
                        ({"action": "start", "stateful": True}, "stateful"),
                        ({"action": "stop", "timeout": "soon"}, "timeout")):
        status, doc, _ = api(d, "PUT", "/1.0/instances/c1/state", body)
        assert status == 400 and words in doc["error"], doc
    assert api(d, "PUT", "/1.0/instances/nope/state", {"action": "start"})[0] == 404
    assert d.read("instances", "c1", "state") == "STOPPED"


def test_network_state_from_the_network_plugin(daemon_with_busybox):
    """Addresses in the state document (and so ``lxc list``'s IPV4 column) are what the
    network plugin's ``instances/NAME/ipv4`` shows; counters and prefixes are the
    instance's own namespace's."""
    from lxfs_plugins.network import config as cfg

    d = daemon_with_busybox
    name = "lxr" + secrets.token_hex(3)
    used = [ipaddress.IPv4Network(line.split()[0], strict=False) for line in subprocess.run(
        ["ip", "-4", "-o", "route", "show", "table", "all"], capture_output=True, text=True,
        check=True).stdout.splitlines() if "/" in line.split()[0]]
    subnet = cfg.pick_ipv4_subnet(used, "10.251.0.0/16")
    try:
        d.cli("network", "create", name, f"ipv4.address={subnet}", "ipv4.nat=false",
              "ipv6.address=none")
        launch(d, "c1", "--network", name)
        wait_for(lambda: d.read("instances", "c1", "ipv4"), "an IPv4 address", 15)
        address, _, iface = d.read("instances", "c1", "ipv4").splitlines()[0].partition(" ")
        assert iface == "(eth0)"
        _, state, _ = api(d, "GET", "/1.0/instances/c1/state")
        assert_fields(state, reference("get_instance_c1_state"))
        eth0 = state["metadata"]["network"]["eth0"]
        inet = [a for a in eth0["addresses"] if a["family"] == "inet"]
        assert inet == [{"family": "inet", "address": address,
                         "netmask": str(subnet.network.prefixlen), "scope": "global"}]
        assert eth0["hwaddr"] == d.read("instances", "c1", "config", "volatile.eth0.hwaddr")
        assert eth0["counters"]["packets_sent"] > 0 and eth0["type"] == "broadcast"
        listed = lxc(d, "list", "--format", "csv", "-c", "n4").stdout.strip()
        assert listed == f"c1,{address} (eth0)"
    finally:
        if d.running:
            d._remove_instances()
            with_network = d.path("networks", name)
            if with_network.exists():
                os.rmdir(with_network)
        pidfile = d.data_dir / "networks" / name / "dnsmasq.pid"
        try:
            pid = int(pidfile.read_text())
            if f"--pid-file={pidfile}".encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                os.kill(pid, signal.SIGKILL)
        except (OSError, ValueError):
            pass
        subprocess.run(["ip", "link", "del", name], capture_output=True, check=False)
        subprocess.run(["nft", "delete", "table", "inet", cfg.table_name(name)],
                       capture_output=True, check=False)


# --- snapshots, copies, renames --------------------------------------------------------------

def test_snapshots_restore_and_rename(daemon_with_busybox):
    d = daemon_with_busybox
    launch(d, "c1")
    marker = d.path("instances", "c1", "rootfs", "root", "marker")
    marker.write_text("before\n")
    lxc(d, "snapshot", "c1", "s1")
    assert os.listdir(d.path("instances", "c1", "snapshots")) == ["s1"]
    os.mkdir(d.path("instances", "c1", "snapshots", "from-mount"))
    _, doc, _ = api(d, "GET", "/1.0/instances/c1/snapshots")
    assert doc["metadata"] == ["/1.0/instances/c1/snapshots/s1",
                               "/1.0/instances/c1/snapshots/from-mount"]
    status, doc, headers = api(d, "GET", "/1.0/instances/c1/snapshots/s1")
    assert status == 200 and "etag" in headers
    snapshot = doc["metadata"]
    assert set(snapshot) == {"expires_at", "architecture", "config", "created_at", "devices",
                             "ephemeral", "expanded_config", "expanded_devices",
                             "last_used_at", "name", "profiles", "stateful", "size"}
    assert snapshot["name"] == "s1" and snapshot["config"]["image.os"] == "busybox"
    assert snapshot["expanded_devices"]["root"]["path"] == "/"
    full = api(d, "GET", "/1.0/instances/c1/snapshots?recursion=1")[1]["metadata"]
    assert [s["name"] for s in full] == ["s1", "from-mount"]
    info = lxc(d, "info", "c1").stdout
    assert "s1" in info and "from-mount" in info

    # a name is chosen when none is given (LXD's snapN)
    op = succeeds(d, "POST", "/1.0/instances/c1/snapshots", {})
    assert op["description"] == "Snapshotting instance"
    assert "snap0" in os.listdir(d.path("instances", "c1", "snapshots"))
    for body in ({"name": "s9", "stateful": True}, {"name": "s9", "expires_at":
                                                     "2030-01-01T00:00:00Z"},
                 {"name": "a/b"}):
        assert api(d, "POST", "/1.0/instances/c1/snapshots", body)[0] == 400
    status, doc, _ = api(d, "POST", "/1.0/instances/c1/snapshots", {"name": "s1"})
    assert wait(d, doc)["status"] == "Failure"

    marker.write_text("after\n")
    lxc(d, "restore", "c1", "s1")
    assert marker.read_text() == "before\n"
    assert d.read("instances", "c1", "state") == "RUNNING"
    status, doc, _ = api(d, "PUT", "/1.0/instances/c1", {"restore": "nope"})
    failed = wait(d, doc)
    assert failed["status"] == "Failure" and "does not exist" in failed["err"]

    status, doc, _ = api(d, "POST", "/1.0/instances/c1/snapshots/s1", {"name": "snap0"})
    assert status == 409
    succeeds(d, "POST", "/1.0/instances/c1/snapshots/s1", {"name": "renamed"})
    assert "renamed" in os.listdir(d.path("instances", "c1", "snapshots"))
    succeeds(d, "PUT", "/1.0/instances/c1/snapshots/renamed", {"expires_at": None})
    assert api(d, "PUT", "/1.0/instances/c1/snapshots/renamed",
               {"expires_at": "2030-01-01T00:00:00Z"})[0] == 400
    lxc(d, "delete", "c1/renamed")
    succeeds(d, "DELETE", "/1.0/instances/c1/snapshots/snap0")
    assert os.listdir(d.path("instances", "c1", "snapshots")) == ["from-mount"]
    assert api(d, "GET", "/1.0/instances/c1/snapshots/renamed")[0] == 404


def test_copy_rename_and_move(daemon_with_busybox):
    d = daemon_with_busybox
    launch(d, "c1")
    (d.path("instances", "c1", "rootfs", "root", "file")).write_text("original\n")
    lxc(d, "config", "set", "c1", "user.origin", "c1")
    lxc(d, "snapshot", "c1", "s1")
    lxc(d, "copy", "c1", "c2")
    assert d.read("instances", "c2", "config", "user.origin") == "c1"
    assert os.listdir(d.path("instances", "c2", "snapshots")) == ["s1"]
    assert (d.path("instances", "c2", "rootfs", "root", "file")).read_text() == "original\n"
    lxc(d, "copy", "c1", "c3", "--instance-only")
    assert os.listdir(d.path("instances", "c3", "snapshots")) == []
    lxc(d, "copy", "c1/s1", "c4")
    assert d.read("instances", "c4", "source") == "instances/c1/snapshots/s1"
    succeeds(d, "POST", "/1.0/instances", {"name": "c5", "source": {
        "type": "copy", "source": "c1", "instance_only": True}, "config": {"user.own": "x"}})
    assert d.read("instances", "c5", "config", "user.own") == "x"
    assert d.read("instances", "c5", "config", "user.origin") == "c1"
    status, doc, _ = api(d, "POST", "/1.0/instances", {"name": "c6", "source": {
        "type": "copy", "source": "nope"}})
    assert status == 404

    # a rename of a running instance fails in the operation, as LXD's
    status, doc, _ = api(d, "POST", "/1.0/instances/c1", {"name": "renamed"})
    assert status == 202 and wait(d, doc)["status"] == "Failure"
    assert api(d, "POST", "/1.0/instances/c2", {"name": "c3"})[0] == 409
    assert api(d, "POST", "/1.0/instances/c2", {"name": "-bad"})[0] == 400
    lxc(d, "rename", "c2", "moved")
    assert "moved" in d.instance_names() and "c2" not in d.instance_names()
    assert api(d, "GET", "/1.0/instances/moved")[1]["metadata"]["name"] == "moved"
    os.rename(d.path("instances", "moved"), d.path("instances", "back"))  # the mount's mv
    assert api(d, "GET", "/1.0/instances/back")[0] == 200
    assert api(d, "GET", "/1.0/instances/moved")[0] == 404
    # a migration to another host: a websocket operation with LXD's secrets (issue 15;
    # tests/test_migration_integration.py drives it)
    status, doc, _ = api(d, "POST", "/1.0/instances/back", {"name": "x", "migration": True})
    assert status == 202 and doc["metadata"]["class"] == "websocket", doc
    assert set(doc["metadata"]["metadata"]) == {"control", "fs"}


# --- files ---------------------------------------------------------------------------------

def test_file_push_pull_recursive_and_headers(daemon_with_busybox, tmp_path):
    d = daemon_with_busybox
    launch(d, "c1")
    src = tmp_path / "tree"
    (src / "sub").mkdir(parents=True)
    (src / "a.txt").write_text("hello\n")
    (src / "a.txt").chmod(0o600)
    (src / "sub" / "b.bin").write_bytes(os.urandom(3 << 20))  # several chunks
    (src / "link").symlink_to("a.txt")
    lxc(d, "file", "push", "-r", str(src), "c1/root/")
    rootfs = d.path("instances", "c1", "rootfs")
    assert (rootfs / "root/tree/a.txt").read_text() == "hello\n"
    assert stat.S_IMODE((rootfs / "root/tree/a.txt").stat().st_mode) == 0o600
    assert (rootfs / "root/tree/sub/b.bin").read_bytes() == (src / "sub" / "b.bin").read_bytes()
    assert os.readlink(d.data_dir / "storage-pools" / "default" / "containers" / "c1" /
                       "rootfs" / "root" / "tree" / "link") == "a.txt"
    out = tmp_path / "out"
    out.mkdir()
    lxc(d, "file", "pull", "-r", "c1/root/tree", str(out))
    assert (out / "tree" / "a.txt").read_text() == "hello\n"
    assert (out / "tree" / "sub" / "b.bin").read_bytes() == \
        (src / "sub" / "b.bin").read_bytes()
    assert os.readlink(out / "tree" / "link") == "/root/tree/a.txt"  # LXD's absolute target
    single = tmp_path / "one"
    single.write_text("one\n")
    lxc(d, "file", "push", str(single), "c1/etc/one", "--uid", "1000", "--gid", "1001",
        "--mode", "0640")
    on_disk = d.data_dir / "storage-pools" / "default" / "containers" / "c1" / "rootfs"
    st = (on_disk / "etc" / "one").stat()
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (1000, 1001, 0o640)  # unshifted
    lxc(d, "file", "pull", "c1/etc/one", str(tmp_path / "back"))
    assert (tmp_path / "back").read_text() == "one\n"

    # raw requests: LXD's headers
    status, content, headers = raw(d, "GET", "/1.0/instances/c1/files?path=/etc/one")
    assert status == 200 and content == b"one\n"
    assert (headers["x-lxd-uid"], headers["x-lxd-gid"], headers["x-lxd-mode"],
            headers["x-lxd-type"]) == ("1000", "1001", "0640", "file")
    status, doc, headers = api(d, "GET", "/1.0/instances/c1/files?path=/root/tree")
    assert headers["x-lxd-type"] == "directory" and doc["metadata"] == ["a.txt", "link", "sub"]
    status, content, headers = raw(d, "GET", "/1.0/instances/c1/files?path=/root/tree/link")
    assert headers["x-lxd-type"] == "symlink" and content == b"/root/tree/a.txt"
    status, _, _ = raw(d, "POST", "/1.0/instances/c1/files?path=/etc/one", b"two\n",
                       {"X-LXD-write": "append", "X-LXD-uid": "5"})
    assert status == 200 and (on_disk / "etc" / "one").read_text() == "one\ntwo\n"
    assert (on_disk / "etc" / "one").stat().st_uid == 1000  # an existing file keeps its own
    status, _, _ = raw(d, "POST", "/1.0/instances/c1/files?path=/etc/one", b"new\n")
    assert (on_disk / "etc" / "one").read_text() == "new\n"
    status, _, _ = raw(d, "POST", "/1.0/instances/c1/files?path=/mnt/data", b"",
                       {"X-LXD-type": "directory", "X-LXD-mode": "0700", "X-LXD-uid": "7"})
    st = (on_disk / "mnt" / "data").stat()
    assert status == 200 and stat.S_ISDIR(st.st_mode) and st.st_uid == 7
    assert stat.S_IMODE(st.st_mode) == 0o700
    status, _, _ = raw(d, "POST", "/1.0/instances/c1/files?path=/mnt/ln", b"/etc/one",
                       {"X-LXD-type": "symlink"})
    assert status == 200 and os.readlink(on_disk / "mnt" / "ln") == "/etc/one"
    for path, words in (("/srv/missing/x", 404), ("/etc/one", 400)):
        status, _, _ = raw(d, "POST", f"/1.0/instances/c1/files?path={path}", b"x",
                           {"X-LXD-write": "bogus" if words == 400 else "overwrite"})
        assert status == words
    assert api(d, "GET", "/1.0/instances/c1/files?path=/nope")[0] == 404
    assert api(d, "GET", "/1.0/instances/c1/files")[0] == 400
    lxc(d, "file", "delete", "c1/etc/one")
    assert not (on_disk / "etc" / "one").exists()
    assert api(d, "DELETE", "/1.0/instances/c1/files?path=/mnt/data")[0] == 200
    assert api(d, "DELETE", "/1.0/instances/c1/files?path=/root")[0] == 400  # not empty
    assert raw(d, "GET", "/1.0/instances/c1/files?path=/mnt/ln")[2]["x-lxd-type"] == "symlink"


def test_files_never_leave_the_container(daemon_with_busybox, tmp_path):
    """Links a container planted resolve inside its own root filesystem; FIFOs and device
    nodes are never opened."""
    d = daemon_with_busybox
    launch(d, "c1")
    on_disk = d.data_dir / "storage-pools" / "default" / "containers" / "c1" / "rootfs"
    host_secret = tmp_path / "host-secret"
    host_secret.write_text("host only\n")
    os.symlink(str(tmp_path), on_disk / "root" / "to-host")  # absolute: the host's path
    os.symlink("../../../../../../../../..", on_disk / "root" / "up")
    os.symlink("/etc", on_disk / "root" / "etc-link")
    status, _, _ = raw(d, "GET", "/1.0/instances/c1/files?path=/root/to-host/host-secret")
    assert status == 404
    status, content, _ = raw(d, "GET", "/1.0/instances/c1/files?path=/root/up/etc/hostname")
    assert status == 200 and content == (on_disk / "etc" / "hostname").read_bytes()
    status, _, _ = raw(d, "POST", "/1.0/instances/c1/files?path=/root/etc-link/planted",
                       b"inside\n")
    assert status == 200
    assert (on_disk / "etc" / "planted").read_text() == "inside\n"
    assert not Path("/etc/planted").exists()
    status, _, _ = raw(d, "POST", "/1.0/instances/c1/files?path=/root/to-host/host-secret",
                       b"overwritten\n")
    assert status == 404 and host_secret.read_text() == "host only\n"
    status, _, _ = raw(d, "DELETE", "/1.0/instances/c1/files?path=/root/to-host/host-secret")
    assert status == 404 and host_secret.exists()
    os.mkfifo(on_disk / "root" / "fifo")
    os.mknod(on_disk / "root" / "null", 0o600 | stat.S_IFCHR, os.makedev(1, 3))
    for path in ("/root/fifo", "/root/null"):
        started = time.monotonic()
        assert raw(d, "GET", f"/1.0/instances/c1/files?path={path}")[0] == 400
        assert raw(d, "POST", f"/1.0/instances/c1/files?path={path}", b"x")[0] == 400
        assert time.monotonic() - started < 5
    status, _, _ = raw(d, "POST", "/1.0/instances/c1/files?path=/", b"x")
    assert status == 400


# --- logs, metadata ------------------------------------------------------------------------

def test_logs_metadata_and_templates(daemon_with_busybox):
    d = daemon_with_busybox
    launch(d, "c1")
    _, doc, _ = api(d, "GET", "/1.0/instances/c1/logs")
    assert_fields(doc, reference("get_instance_c1_logs"))
    assert "/1.0/instances/c1/logs/lxc.log" in doc["metadata"]
    status, content, headers = raw(d, "GET", "/1.0/instances/c1/logs/lxc.log")
    assert status == 200 and content.decode() == d.path("instances", "c1", "log").read_text()
    assert headers["content-type"] == "application/octet-stream"
    status, content, _ = raw(d, "GET", "/1.0/instances/c1/logs/console.log")
    assert status == 200
    assert api(d, "GET", "/1.0/instances/c1/logs/..%2Fetc")[0] in (400, 404)
    assert api(d, "DELETE", "/1.0/instances/c1/logs/lxc.log")[0] == 400
    shown = lxc(d, "info", "c1", "--show-log").stdout
    assert "Log:" in shown

    status, doc, headers = api(d, "GET", "/1.0/instances/c1/metadata")
    meta = doc["metadata"]
    assert set(meta) == {"architecture", "creation_date", "expiry_date", "properties",
                         "templates"}
    assert meta["properties"]["os"] == "busybox" and meta["creation_date"] > 0
    assert "/etc/hostname" in meta["templates"]
    meta["properties"]["description"] = "edited over REST"
    status, doc, _ = api(d, "PUT", "/1.0/instances/c1/metadata", meta,
                         headers={"If-Match": headers["etag"]})
    assert status == 200, doc
    assert api(d, "GET", "/1.0/instances/c1/metadata")[1]["metadata"]["properties"][
        "description"] == "edited over REST"
    assert api(d, "PUT", "/1.0/instances/c1/metadata", meta,
               headers={"If-Match": headers["etag"]})[0] == 412
    bad = dict(meta, templates={"/etc/x": {"when": ["never"], "template": "x.tpl"}})
    assert api(d, "PUT", "/1.0/instances/c1/metadata", bad)[0] == 400
    shown = lxc(d, "config", "metadata", "show", "c1").stdout
    assert "edited over REST" in shown

    _, doc, _ = api(d, "GET", "/1.0/instances/c1/metadata/templates")
    template = meta["templates"]["/etc/hostname"]["template"]
    assert template in doc["metadata"]
    status, content, _ = raw(d, "GET",
                             f"/1.0/instances/c1/metadata/templates?path={template}")
    assert status == 200 and b"{{" in content
    assert raw(d, "POST", "/1.0/instances/c1/metadata/templates?path=motd.tpl",
               b"hello {{ container.name }}\n")[0] == 200
    assert "motd.tpl" in api(d, "GET", "/1.0/instances/c1/metadata/templates")[1]["metadata"]
    assert raw(d, "POST", "/1.0/instances/c1/metadata/templates?path=../x", b"x")[0] == 400
    assert api(d, "DELETE", "/1.0/instances/c1/metadata/templates?path=motd.tpl")[0] == 200
    assert api(d, "DELETE", "/1.0/instances/c1/metadata/templates?path=motd.tpl")[0] == 404


# --- pylxd ---------------------------------------------------------------------------------

def test_pylxd_instances_snapshots_files(daemon_with_busybox):
    import pylxd

    d = daemon_with_busybox
    client = pylxd.Client(endpoint=str(d.data_dir / "unix.socket"))
    inst = client.instances.create({"name": "p1", "source": {"type": "image",
                                                             "alias": "busybox"}}, wait=True)
    assert d.read("instances", "p1", "state") == "STOPPED"
    inst.start(wait=True)
    assert d.read("instances", "p1", "state") == "RUNNING"
    assert inst.state().status == "Running" and "lo" in inst.state().network
    inst.files.put("/root/hello", b"hi there", mode="0640", uid=1000, gid=1000)
    on_disk = d.data_dir / "storage-pools" / "default" / "containers" / "p1" / "rootfs"
    st = (on_disk / "root" / "hello").stat()
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (1000, 0o640)
    assert inst.files.get("/root/hello") == b"hi there"
    snapshot = inst.snapshots.create("s1", wait=True)
    assert [s.name for s in inst.snapshots.all()] == ["s1"]
    snapshot.rename("s2", wait=True)
    assert os.listdir(d.path("instances", "p1", "snapshots")) == ["s2"]
    inst.files.put("/root/hello", b"changed")
    inst.restore_snapshot("s2", wait=True)
    assert inst.files.get("/root/hello") == b"hi there"
    inst.config["user.pylxd"] = "yes"
    inst.save(wait=True)
    assert d.read("instances", "p1", "config", "user.pylxd") == "yes"
    inst.stop(wait=True)
    assert d.read("instances", "p1", "state") == "STOPPED"
    client.instances.get("p1").snapshots.get("s2").delete(wait=True)
    inst.delete(wait=True)
    assert d.instance_names() == [] and [i.name for i in client.instances.all()] == []


# --- the mount and REST see each other ---------------------------------------------------------

def test_mount_made_instances_on_rest_and_events(daemon_with_busybox):
    d = daemon_with_busybox
    monitor = Monitor(d)
    try:
        os.mkdir(d.path("instances", "m1"))
        d.write("instances", "m1", "source", "busybox")
        _, doc, _ = api(d, "GET", "/1.0/instances/m1")
        assert doc["metadata"]["config"]["image.os"] == "busybox"
        assert doc["metadata"]["status"] == "Stopped"
        d.write("instances", "m1", "state", "start")
        assert api(d, "GET", "/1.0/instances/m1/state")[1]["metadata"]["pid"] == \
            int(d.read("instances", "m1", "pid"))
        lxc(d, "file", "push", "/etc/hostname", "m1/root/pushed")
        d.write("instances", "m1", "config", "user.k", "v")
        os.mkdir(d.path("instances", "m1", "devices", "t"))
        d.write("instances", "m1", "devices", "t", "type", "disk")
        d.write("instances", "m1", "state", "kill")
        os.rmdir(d.path("instances", "m1"))
        assert api(d, "GET", "/1.0/instances/m1")[0] == 404
        for action in ("instance-created", "instance-started", "instance-file-pushed",
                       "instance-updated", "instance-stopped", "instance-deleted"):
            monitor.wait_for(action, "/1.0/instances/m1")
    finally:
        monitor.close()
