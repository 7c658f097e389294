"""Shared pytest fixtures for lxfs.

Integration tests drive the real kernel (FUSE, LXC, namespaces) as root. They must fail, never
skip, when a requirement is missing: a skipped integration suite would look green in CI.

Fixtures:

- ``lxfs_daemon_factory``: ``start(**kwargs) -> LxfsDaemon`` starts an ``lxfsd`` subprocess on a
  fresh data directory and mount point; every daemon it started is torn down after the test.
- ``lxfs_daemon``: one started daemon (``LxfsDaemon``).
- ``busybox_image`` (session): ``Path`` of the busybox image tarball built once per session by
  ``contrib/images/busybox.sh``.
- ``daemon_with_busybox``: ``lxfs_daemon`` with that image imported under the alias ``busybox``.

Tests that use any of these are marked ``integration`` automatically.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # bench/ shares its hosts on one machine with the tests
    sys.path.insert(0, str(REPO))

from bench.hosts import HostNetwork  # noqa: E402 - after the path; tests import it from here

TMP_BASE = Path("/var/tmp")
READY_TIMEOUT = 20.0  # seconds for MOUNT/environment/server_pid to become readable
STOP_TIMEOUT = 10.0  # seconds for the daemon to exit after SIGTERM
FS_OP_TIMEOUT = 30.0  # seconds for one filesystem operation during teardown
LOG_TAIL_LINES = 60

# Fixtures whose use makes a test an integration test.
INTEGRATION_FIXTURES = {
    "lxfs_daemon",
    "lxfs_daemon_factory",
    "daemon_with_busybox",
    "busybox_image",
}


# --------------------------------------------------------------------------------------------
# Requirements: fail (not skip) integration tests that cannot run here.


def integration_problems() -> list[str]:
    """What this machine lacks for integration tests, in words (empty if nothing)."""
    problems = []
    if os.geteuid() != 0:
        problems.append(f"must run as root (euid is {os.geteuid()}): sudo bash contrib/test.sh")
    if not os.path.exists("/dev/fuse"):
        problems.append("/dev/fuse is missing (no FUSE support in this kernel or container)")
    for tool in ("fusermount3", "lxc-ls", "lxc-stop"):
        if shutil.which(tool) is None:
            problems.append(f"{tool} not found on PATH: run contrib/install-deps.sh")
    return problems


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "integration: drives the real kernel (FUSE, LXC); needs root and the packages "
        "contrib/test.sh installs",
    )


@pytest.hookimpl(tryfirst=True)  # before `-m "not integration"` deselects
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if INTEGRATION_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.integration)


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("integration") is None:
        return
    problems = integration_problems()
    if problems:
        pytest.fail(
            "integration test cannot run on this machine:\n  - " + "\n  - ".join(problems),
            pytrace=False,
        )


# --------------------------------------------------------------------------------------------
# Helpers.


def _venv_command(script: str, module: str) -> list[str]:
    """The console script next to sys.executable, else ``python -m module``."""
    candidate = Path(sys.executable).parent / script
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return [str(candidate)]
    return [sys.executable, "-m", module]


def lxfsd_command() -> list[str]:
    return _venv_command("lxfsd", "lxfs.daemon")


def lxfs_cli_command() -> list[str]:
    return _venv_command("lxfs", "lxfs.cli")


def _unescape_mountinfo(field: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \ooo.
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and i + 4 <= len(field) and field[i + 1 : i + 4].isdigit():
            out.append(chr(int(field[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def mounts_under(path: Path) -> list[str]:
    """Mount points at or below ``path`` (absolute, symlink-free), deepest first. Reads /proc
    only: never touches a (possibly hung) FUSE mount, so the path is not resolved here."""
    root = os.path.abspath(path)
    found = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            if len(fields) < 5:
                continue
            point = _unescape_mountinfo(fields[4])
            if point == root or point.startswith(root.rstrip("/") + "/"):
                found.append(point)
    return sorted(set(found), key=lambda p: p.count("/"), reverse=True)


def is_mounted(path: Path) -> bool:
    return os.path.abspath(path) in mounts_under(path)


def call_with_timeout(fn: Callable[[], Any], timeout: float, what: str) -> Any:
    """Run ``fn`` in a daemon thread; raise TimeoutError if it has not returned in time. A
    filesystem call into a hung FUSE daemon blocks, and must not hang the test session."""
    result: dict[str, Any] = {}

    def run() -> None:
        try:
            result["value"] = fn()
        except BaseException as exc:  # re-raised in the caller's thread
            result["error"] = exc

    thread = threading.Thread(target=run, name=f"fs-call {what}", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise TimeoutError(f"{what}: no answer within {timeout:.0f}s (hung FUSE daemon?)")
    if "error" in result:
        raise result["error"]
    return result.get("value")


def tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 256 * 1024))
            data = f.read().decode("utf-8", "replace")
    except OSError as exc:
        return f"({path}: {exc.strerror})"
    return "\n".join(data.splitlines()[-lines:])


class CLIError(subprocess.CalledProcessError):
    """A failed ``lxfs`` CLI call; its message includes stdout and stderr."""

    def __str__(self) -> str:
        return (
            f"{' '.join(map(str, self.cmd))} exited with {self.returncode}\n"
            f"--- stdout:\n{self.stdout}\n--- stderr:\n{self.stderr}"
        )


# --------------------------------------------------------------------------------------------
# The daemon under test.


class LxfsDaemon:
    """An ``lxfsd`` subprocess with its own data directory and mount point.

    Attributes: ``mount`` (Path), ``data_dir`` (Path), ``proc`` (Popen of the current run),
    ``log_path`` (DATA_DIR/lxfsd.log), ``stderr_path`` (the process's stdout+stderr),
    ``lxc_path`` (DATA_DIR/containers, or what the mount reports), ``env`` (for subprocesses:
    LXFS_MOUNT and LXFS_DIR set), ``server_pid`` (read from the mount at readiness).
    """

    def __init__(
        self, base: Path, extra_args: list[str] | None = None, log_level: str = "debug",
        netns: str | None = None,
    ) -> None:
        self.base = base
        self.netns = netns  # a network namespace (``ip netns``) the daemon runs in
        self.data_dir = base / "data"
        self.mount = base / "mnt"
        self.log_path = self.data_dir / "lxfsd.log"
        self.stderr_path = base / "lxfsd.stderr"
        self.lxc_path = self.data_dir / "containers"
        self.extra_args = list(extra_args or [])
        self.log_level = log_level
        self.proc: subprocess.Popen[bytes] | None = None
        self.server_pid: int | None = None
        self.env = dict(os.environ)
        self.env.update(
            LXFS_MOUNT=str(self.mount),
            LXFS_DIR=str(self.data_dir),
            PYTHONUNBUFFERED="1",
        )
        self._lxc_paths = {str(self.lxc_path)}
        # Exits we caused (stop, kill9): any other exit is a daemon crash, reported at teardown.
        self._expected_exit = False

    def __repr__(self) -> str:
        pid = self.proc.pid if self.proc else None
        return f"<LxfsDaemon pid={pid} mount={self.mount}>"

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> LxfsDaemon:
        """Start lxfsd and wait until the mount answers."""
        if self.running:
            raise RuntimeError(f"{self!r} is already running")
        cmd = [
            *(["nsenter", f"--net=/run/netns/{self.netns}", "--"] if self.netns else []),
            *lxfsd_command(),
            "--data-dir",
            str(self.data_dir),
            "--mount",
            str(self.mount),
            "--log-level",
            self.log_level,
            *self.extra_args,
        ]
        with open(self.stderr_path, "ab") as err:
            err.write(f"--- {time.strftime('%H:%M:%S')} starting: {' '.join(cmd)}\n".encode())
            err.flush()
            self.proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=err,
                stderr=err,
                env=self.env,
                cwd=self.base,
                # Our own session: a ^C to pytest does not race with the teardown's SIGTERM.
                start_new_session=True,
            )
        self._expected_exit = False
        self.wait_ready()
        return self

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> None:
        """Wait until MOUNT/environment/server_pid is readable; fail with the log otherwise."""
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        server_pid = self.mount / "environment" / "server_pid"
        last_error = "not mounted yet"
        while True:
            if self.proc.poll() is not None:
                pytest.fail(
                    f"lxfsd exited with {self.proc.returncode} before {self.mount} was ready\n"
                    + self.log_tails(),
                    pytrace=False,
                )
            if is_mounted(self.mount):
                try:
                    text = call_with_timeout(server_pid.read_text, 2.0, f"read {server_pid}")
                    if text.strip():
                        self.server_pid = int(text.strip()) if text.strip().isdigit() else None
                        self._learn_lxc_path()
                        return
                    last_error = "server_pid is empty"
                except (OSError, TimeoutError) as exc:
                    last_error = str(exc)
            if time.monotonic() > deadline:
                pytest.fail(
                    f"lxfsd (pid {self.proc.pid}) not ready after {timeout:.0f}s: "
                    f"{server_pid}: {last_error}\n" + self.log_tails(),
                    pytrace=False,
                )
            time.sleep(0.05)

    def _learn_lxc_path(self) -> None:
        try:
            text = call_with_timeout(
                (self.mount / "environment" / "lxc_path").read_text, 2.0, "read lxc_path"
            )
        except (OSError, TimeoutError):
            return
        if text.strip():
            self._lxc_paths.add(text.strip())

    def stop(self, timeout: float = STOP_TIMEOUT) -> int:
        """SIGTERM the daemon and wait for it; return its exit code. Fails the test (after a
        SIGKILL) if it does not exit in time."""
        if self.proc is None:
            raise RuntimeError("daemon was never started")
        self._expected_exit = True
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill9()
                pytest.fail(
                    f"lxfsd did not exit within {timeout:.0f}s of SIGTERM (killed)\n"
                    + self.log_tails(),
                    pytrace=False,
                )
        return self.proc.returncode

    def kill9(self) -> None:
        """SIGKILL the daemon (a crash): the mount is left behind and answers ENOTCONN."""
        if self.proc is None:
            raise RuntimeError("daemon was never started")
        self._expected_exit = True
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()

    def restart(self) -> LxfsDaemon:
        """Start again on the same data dir and mount (after ``kill9`` or ``stop``; a running
        daemon is stopped first). The daemon must clean a stale mount by itself."""
        if self.running:
            self.stop()
        return self.start()

    # -- use ---------------------------------------------------------------------------------

    def cli(
        self, *args: Any, check: bool = True, input: str | bytes | None = None, timeout: float = 60
    ) -> subprocess.CompletedProcess:
        """Run the ``lxfs`` CLI against this daemon (LXFS_MOUNT set). Output is captured as
        text (bytes if ``input`` is bytes). With ``check``, a non-zero exit raises CLIError
        (a CalledProcessError) showing stdout and stderr."""
        cmd = [*lxfs_cli_command(), *map(str, args)]
        text = not isinstance(input, bytes)
        result = subprocess.run(
            cmd,
            input=input,
            capture_output=True,
            text=text,
            env=self.env,
            timeout=timeout,
        )
        if check and result.returncode != 0:
            raise CLIError(result.returncode, cmd, result.stdout, result.stderr)
        return result

    def path(self, *parts: str) -> Path:
        """A path inside the mount: ``d.path("instances", "c1", "state")``."""
        return self.mount.joinpath(*parts)

    def instance_names(self) -> list[str]:
        """The instances' directories (``instances/`` without its ``.list`` file), sorted."""
        return sorted(n for n in os.listdir(self.path("instances")) if not n.startswith("."))

    def read(self, *parts: str) -> str:
        """Read a file of the mount, without its trailing newline."""
        return self.path(*parts).read_text().rstrip("\n")

    def write(self, *parts_and_value: str) -> None:
        """``d.write("instances", "c1", "state", "start")``: like ``echo start > .../state``."""
        *parts, value = parts_and_value
        with open(self.path(*parts), "w") as f:
            f.write(value + "\n")

    def log_tails(self) -> str:
        return (
            f"--- {self.stderr_path} (stdout+stderr, last {LOG_TAIL_LINES} lines):\n"
            f"{tail(self.stderr_path)}\n"
            f"--- {self.log_path} (last {LOG_TAIL_LINES} lines):\n{tail(self.log_path)}"
            + "".join(f"\n--- {log} (errors):\n{errors}" for log, errors in self.lxc_errors())
        )

    def lxc_errors(self) -> list[tuple[Path, str]]:
        """The ERROR lines of the instances' LXC logs (liblxc's starts and attaches)."""
        found = []
        for log in sorted(self.lxc_path.glob("*/lxc.log")):
            lines = [line for line in tail(log, 2000).splitlines() if " ERROR " in line]
            if lines:
                found.append((log, "\n".join(lines[-20:])))
        return found

    # -- teardown ----------------------------------------------------------------------------

    def teardown(self) -> list[str]:
        """Remove instances, stop the daemon, clean every leftover (the temporary directory
        too, unless LXFS_TEST_KEEP=1). Never raises; returns the problems found (a crashed or
        stuck daemon, with the log tails), for the fixture to report."""
        problems: list[str] = []
        crashed = self.proc is not None and self.proc.poll() is not None and not self._expected_exit
        if crashed:
            problems.append(f"lxfsd exited by itself during the test (code {self.proc.returncode})")

        if self.running and is_mounted(self.mount):
            self._remove_instances()

        if self.running:
            assert self.proc is not None
            self._expected_exit = True
            self.proc.send_signal(signal.SIGTERM)
            try:
                code = self.proc.wait(STOP_TIMEOUT)
                if code != 0:
                    problems.append(f"lxfsd exited with {code} after SIGTERM (expected 0)")
            except subprocess.TimeoutExpired:
                problems.append(f"lxfsd did not exit within {STOP_TIMEOUT:.0f}s of SIGTERM")
                self.kill9()

        if is_mounted(self.mount):
            if self.proc is not None and not crashed and self.proc.returncode == 0:
                problems.append(f"lxfsd exited after SIGTERM but left {self.mount} mounted")
            subprocess.run(
                ["fusermount3", "-u", "-z", str(self.mount)], capture_output=True, check=False
            )

        self._stop_leftover_containers()
        self._remove_daemon_cgroup()
        if problems:
            problems.append(self.log_tails())
        if os.environ.get("LXFS_TEST_KEEP") == "1":
            print(f"LXFS_TEST_KEEP=1: keeping {self.base}")
        else:
            self._remove_tree()
        return problems

    def _remove_daemon_cgroup(self) -> None:
        """A daemon that was killed leaves its helper cgroup (a clean exit removes it)."""
        from lxfs.reaper import daemon_cgroup

        cgroup = daemon_cgroup(self.data_dir)
        if cgroup is not None and cgroup.is_dir():
            try:
                cgroup.rmdir()
            except OSError:
                pass  # still busy: the next daemon of this data directory ends its processes

    def _remove_instances(self) -> None:
        instances = self.mount / "instances"
        try:
            names = call_with_timeout(self.instance_names, 5.0, "list instances")
        except (OSError, TimeoutError):
            return
        for name in names:
            state = instances / name / "state"

            def kill(state: Path = state) -> None:
                with open(state, "w") as f:
                    f.write("kill\n")

            for what, fn in (("kill", kill), ("rmdir", lambda n=name: os.rmdir(instances / n))):
                try:
                    call_with_timeout(fn, FS_OP_TIMEOUT, f"{what} instance {name}")
                except (OSError, TimeoutError):
                    pass
                if not self.running:
                    return

    def _stop_leftover_containers(self) -> None:
        for lxc_path in sorted(self._lxc_paths):
            if not os.path.isdir(lxc_path):
                continue
            try:
                listed = subprocess.run(
                    ["lxc-ls", "-1", "-P", lxc_path, "--running"],
                    capture_output=True,
                    text=True,
                    timeout=30,
                    check=False,
                )
            except (OSError, subprocess.TimeoutExpired):
                continue
            for name in listed.stdout.split():
                try:
                    subprocess.run(
                        ["lxc-stop", "-k", "-P", lxc_path, "-n", name],
                        capture_output=True,
                        timeout=30,
                        check=False,
                    )
                except (OSError, subprocess.TimeoutExpired):
                    pass

    def _remove_tree(self) -> None:
        # Detach whatever the daemon left mounted below our directory (rootfs mounts...):
        # rmtree must never walk into a mount.
        for _ in range(5):  # mounts can be stacked on one point
            points = mounts_under(self.base)
            for point in points:
                subprocess.run(["umount", "-l", point], capture_output=True, check=False)
            if not points:
                break
        left = mounts_under(self.base)
        if left:
            warnings.warn(f"not removing {self.base}: still mounted: {left}", stacklevel=2)
            return
        errors: list[str] = []
        if sys.version_info >= (3, 12):
            shutil.rmtree(self.base, onexc=lambda fn, p, exc: errors.append(f"{p}: {exc}"))
        else:
            shutil.rmtree(self.base, onerror=lambda fn, p, exc: errors.append(f"{p}: {exc[1]}"))
        if errors:
            warnings.warn(f"leftovers in {self.base}: {errors[:5]}", stacklevel=2)


def make_base_dir() -> Path:
    """/var/tmp/lxfs-test-XXXX with mode 0711, so that unprivileged containers (mapped root)
    can traverse it; ``data`` inside gets 0711 too, ``mnt`` is the mount point."""
    base = Path(tempfile.mkdtemp(prefix="lxfs-test-", dir=TMP_BASE)).resolve()
    base.chmod(0o711)
    (base / "data").mkdir(mode=0o711)
    (base / "data").chmod(0o711)  # mkdir's mode is filtered by the umask
    (base / "mnt").mkdir(mode=0o755)
    return base


# --------------------------------------------------------------------------------------------
# Fixtures.


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    # Keep each phase's report on the item, so fixtures can tell whether the test failed.
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"lxfs_report_{report.when}", report)


@pytest.fixture
def lxfs_daemon_factory(request: pytest.FixtureRequest) -> Iterator[Callable[..., LxfsDaemon]]:
    """``start(extra_args=None, log_level="debug", env=None, netns=None) -> LxfsDaemon``:
    start a daemon (``env``: variables added to its environment; ``netns``: the network
    namespace it runs in, as ``host_network`` makes them) on a fresh
    data dir and mount point, ready to use. All of them are torn down after the test; when the
    test failed, their log tails are printed (pytest shows them with the failure)."""
    problems = integration_problems()
    if problems:
        pytest.fail("cannot start lxfsd here:\n  - " + "\n  - ".join(problems), pytrace=False)

    daemons: list[LxfsDaemon] = []

    def start(extra_args: list[str] | None = None, log_level: str = "debug",
              env: dict[str, str] | None = None, netns: str | None = None) -> LxfsDaemon:
        daemon = LxfsDaemon(make_base_dir(), extra_args=extra_args, log_level=log_level,
                            netns=netns)
        daemon.env.update(env or {})
        daemons.append(daemon)  # registered first: torn down even if start fails
        return daemon.start()

    try:
        yield start
    finally:
        call_report = getattr(request.node, "lxfs_report_call", None)
        test_failed = call_report is None or call_report.failed
        report = []
        for daemon in reversed(daemons):
            if test_failed:
                print(f"=== {daemon!r}\n{daemon.log_tails()}")
            problems = daemon.teardown()
            if problems:
                report.append(f"{daemon!r}:\n" + "\n".join(problems))
        if report:
            pytest.fail("\n\n".join(report), pytrace=False)


@pytest.fixture
def lxfs_daemon(lxfs_daemon_factory: Callable[..., LxfsDaemon]) -> LxfsDaemon:
    """A running lxfsd on a fresh data dir and mount (see ``LxfsDaemon``)."""
    return lxfs_daemon_factory()


@pytest.fixture(scope="session")
def busybox_image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The busybox image tarball, built once per session by contrib/images/busybox.sh (which
    prints the tarball's path on its last line of stdout)."""
    recipe = REPO / "contrib" / "images" / "busybox.sh"
    if not recipe.is_file():
        pytest.fail(f"{recipe} is missing", pytrace=False)
    out_dir = tmp_path_factory.mktemp("busybox-image")
    try:
        result = subprocess.run(
            ["bash", str(recipe), str(out_dir)],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=600,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"{recipe} did not finish in {exc.timeout:.0f}s", pytrace=False)
    lines = [line.strip() for line in result.stdout.splitlines() if line.strip()]
    if result.returncode != 0 or not lines:
        pytest.fail(
            f"bash {recipe} {out_dir} exited with {result.returncode}\n"
            f"--- stdout:\n{result.stdout}\n--- stderr:\n{result.stderr}",
            pytrace=False,
        )
    tarball = Path(lines[-1])
    if not tarball.is_absolute():
        tarball = REPO / tarball
    if not tarball.is_file():
        pytest.fail(
            f"{recipe} printed {lines[-1]!r} as its tarball, which is not a file\n"
            f"--- stderr:\n{result.stderr}",
            pytrace=False,
        )
    return tarball


@pytest.fixture
def daemon_with_busybox(lxfs_daemon: LxfsDaemon, busybox_image: Path) -> LxfsDaemon:
    """``lxfs_daemon`` with the busybox image imported under the alias ``busybox``."""
    lxfs_daemon.cli("image", "import", busybox_image, "--alias", "busybox", timeout=120)
    return lxfs_daemon


@pytest.fixture(scope="session")
def debian_image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The Debian (bookworm minbase) image tarball, built once per session by
    contrib/images/debian.sh (debootstrap from the Debian mirror: about a minute)."""
    out_dir = tmp_path_factory.mktemp("debian-image")
    result = subprocess.run(
        ["bash", str(REPO / "contrib" / "images" / "debian.sh"), str(out_dir), "bookworm"],
        cwd=REPO, capture_output=True, text=True, timeout=1200, stdin=subprocess.DEVNULL,
    )
    lines = [line.strip() for line in result.stdout.splitlines() if line.strip()]
    if result.returncode != 0 or not lines:
        pytest.fail(f"debian.sh exited with {result.returncode}\n{result.stderr[-3000:]}",
                    pytrace=False)
    return Path(lines[-1])


@pytest.fixture
def host_network() -> Iterator[Callable[[], HostNetwork]]:
    """``make() -> HostNetwork``: namespaces for several hosts on one machine, removed after
    the test (declare it before ``lxfs_daemon_factory``, so that daemons stop first)."""
    networks: list[HostNetwork] = []

    def make() -> HostNetwork:
        network = HostNetwork(len(networks))
        networks.append(network)
        return network

    try:
        yield make
    finally:
        for network in networks:
            network.teardown()
