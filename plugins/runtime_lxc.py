"""The LXC runtime: system containers through liblxc (python-lxc) and ``lxc-start``.

Containers live in the lxc path ``DATA_DIR/containers/NAME/`` (``config``, ``lxc.log``,
``console.log``); their root filesystem is the storage volume's ``rootfs/``.

Starting goes through the ``lxc-start`` binary, never through ``Container.start()`` in the
daemon: LXC's monitor is a fork of the process that starts the container, and a fork of the
daemon would cost its whole RSS per container. The monitor of ``lxc-start`` is small and lives
on its own, so containers keep running when the daemon stops or crashes; a restarted daemon
finds them again through liblxc. Everything else (state, stop, freeze) goes through python-lxc,
which talks to the monitor's command socket.

Cgroups are named ``lxfs.<id>/NAME`` (payload) and ``lxfs.<id>.monitor/NAME``, where ``<id>``
is derived from the data directory, so that several daemons never collide. Limits are LXC
config lines at start and cgroup writes when they change; ``limits.network.priority`` goes to
the ``net_prio`` controller (cgroup v1 only) after the start, as LXD does, and is refused on
hosts without that controller.
"""

from __future__ import annotations

import hashlib
import logging
import os
import select
import signal
import subprocess
import threading
import time
from pathlib import Path

import _lxc
import lxc
import pluggy

from lxfs import hookimpl
from lxfs.api import Host, cgroup_layout, write_atomic
from lxfs.config_schema import (
    KeySpec,
    check_allowance,
    check_bool,
    check_cpu,
    check_int,
    check_memory,
    check_range,
    cpu_set,
    is_true,
    memory_bytes,
)
from lxfs.errors import InvalidArgument, LxfsError, OperationFailed
from lxfs.model import Instance
from lxfs.runtime import Runtime

log = logging.getLogger("lxfs.lxc")

CGROUP_ROOT = Path("/sys/fs/cgroup")
UNLIMITED = "-1"
#: what the CLI's exec agent leaves in a container's LXC directory (lxfs/cli/exec_agent.py's
#: SOCKET_NAME and LOCK_NAME; tests/test_plugin_api.py keeps them equal)
EXEC_AGENT_FILES = ("exec-agent.socket", "exec-agent.lock")
#: the largest pids.max the kernel takes (PID_MAX_LIMIT on 64-bit hosts)
PIDS_MAX = 4 * 1024 * 1024
#: where the controllers the kernel has, and the cgroup hierarchies mounted, are read
PROC_CGROUPS = Path("/proc/cgroups")
MOUNTINFO = Path("/proc/self/mountinfo")


def cgroup_prefix(data_dir: Path) -> str:
    return "lxfs." + hashlib.sha256(str(data_dir.resolve()).encode()).hexdigest()[:8]


class Container(lxc.Container):
    """python-lxc's Container without its ``network`` helper, which refers back to the
    container: that cycle kept every replaced object, and the ``lxc.log`` it holds open, alive
    until Python's cyclic garbage collector ran (open fds grew with each start)."""

    def __init__(self, name: str, config_path: str) -> None:
        _lxc.Container.__init__(self, name, config_path)


class LxcRuntime(Runtime):
    type = "container"
    name = "lxc"

    def __init__(self, host: Host) -> None:
        super().__init__(host)
        #: LXC's path: one directory per container (its config, log, console log)
        self.lxc_path = host.data_dir / "containers"
        try:
            self.lxc_path.mkdir(mode=0o711, parents=True, exist_ok=True)
            os.chmod(self.lxc_path, 0o711)  # unprivileged containers' roots traverse it
        except OSError as exc:  # a read-only data directory: containers cannot start
            log.error("cannot prepare %s: %s", self.lxc_path, exc.strerror)
        self.prefix = cgroup_prefix(host.data_dir)
        self._containers: dict[str, Container] = {}
        self._lock = threading.Lock()

    def facts(self) -> dict[str, str]:
        return {"driver": self.name, "lxc_path": str(self.lxc_path)}

    def config_lines(self, instance: Instance) -> list[str]:
        """Every plugin's ``lxfs_lxc_config`` lines, then the instance's ``raw.lxc``."""
        lines: list[str] = []
        for contributed in self.host.hook.lxfs_lxc_config(host=self.host, instance=instance):
            lines.extend(contributed)
        raw = instance.expanded_config.get("raw.lxc", "")
        lines.extend(line for line in raw.splitlines() if line.strip())
        return lines

    def _container(self, name: str, reload: bool = False) -> Container:
        with self._lock:
            c = self._containers.get(name)
            if c is None or reload:
                c = Container(name, str(self.lxc_path))
                self._containers[name] = c
            return c

    def _dir(self, inst: Instance) -> Path:
        return self.lxc_path / inst.name

    # --- queries --------------------------------------------------------------------------

    def state(self, instance: Instance) -> str:
        if not (self._dir(instance) / "config").exists():
            return "STOPPED"
        return self._container(instance.name).state

    def pid(self, instance: Instance) -> int:
        if not (self._dir(instance) / "config").exists():
            return 0
        return max(0, self._container(instance.name).init_pid)

    def log(self, instance: Instance) -> str:
        try:
            return (self._dir(instance) / "lxc.log").read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def console_log(self, instance: Instance) -> str:
        try:
            return (self._dir(instance) / "console.log").read_text(errors="replace")
        except FileNotFoundError:
            return ""

    # --- transitions ----------------------------------------------------------------------

    def start(self, instance: Instance, rootfs: Path) -> None:
        config_lines = self.config_lines(instance)
        d = self._dir(instance)
        d.mkdir(mode=0o711, exist_ok=True)
        base = [
            f"lxc.uts.name = {instance.local_name}",
            f"lxc.rootfs.path = dir:{rootfs}",
            f"lxc.log.file = {d / 'lxc.log'}",
            "lxc.log.level = info",
            f"lxc.console.logfile = {d / 'console.log'}",
            "lxc.console.size = auto",
            f"lxc.cgroup.dir.monitor = {self.prefix}.monitor/{instance.name}",
            f"lxc.cgroup.dir.container = {self.prefix}/{instance.name}",
        ]
        write_atomic(d / "config", "\n".join(base + config_lines) + "\n", 0o600, sync=False)
        log_file = d / "lxc.log"
        log_file.unlink(missing_ok=True)
        os.close(os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600))
        (d / "console.log").unlink(missing_ok=True)
        # a start that failed earlier may have left its (empty) cgroups: liblxc refuses to
        # reuse the fixed monitor cgroup name
        self._remove_cgroups(instance.name, wait=0)
        proc = subprocess.run(
            ["lxc-start", "-P", str(self.lxc_path), "-n", instance.name],
            capture_output=True, text=True, stdin=subprocess.DEVNULL,
        )
        c = self._container(instance.name, reload=True)
        if proc.returncode != 0 or not c.running:
            reason = self._failure(instance, proc.stderr)
            if not c.running:
                self._remove_cgroups(instance.name)
            raise OperationFailed(f"failed to start {instance.name}: {reason}")
        priority = network_priority(instance.expanded_config)
        if priority:  # as LXD: once the container runs, in its cgroup
            try:
                apply_network_priority(c, priority)
            except OperationFailed as exc:
                self.kill(instance)
                self._remove_cgroups(instance.name)
                raise OperationFailed(f"failed to start {instance.name}: "
                                      f"limits.network.priority: {exc}") from None

    def _failure(self, instance: Instance, stderr: str) -> str:
        errors = [line for line in self.log(instance).splitlines() if " ERROR " in line]
        if errors:
            return errors[-1].split(" - ", 2)[-1] + " (see the instance's log file)"
        return stderr.strip().splitlines()[-1] if stderr.strip() else "unknown error"

    # python-lxc's shutdown() and wait() keep the GIL while they wait, which would freeze the
    # whole daemon: signal init ourselves and wait on a pidfd instead.

    def shutdown(self, instance: Instance, timeout: float) -> bool:
        c = self._container(instance.name)
        pid = c.init_pid
        if pid <= 0:
            return True
        if c.state == "FROZEN":
            c.unfreeze()
        halt = c.get_config_item("lxc.signal.halt") or "SIGPWR"
        try:
            fd = os.pidfd_open(pid)
        except ProcessLookupError:
            return self._wait_stopped(c, 5)
        try:
            signal.pidfd_send_signal(fd, _signal_number(halt))
            if not select.select([fd], [], [], timeout)[0]:
                return False
        except ProcessLookupError:
            pass
        finally:
            os.close(fd)
        return self._wait_stopped(c, 5)

    def kill(self, instance: Instance) -> None:
        c = self._container(instance.name)
        if c.state == "FROZEN":
            c.unfreeze()
        if not c.stop() and c.state != "STOPPED":
            raise OperationFailed(f"failed to stop {instance.name}")
        self._wait_stopped(c, 10)

    @staticmethod
    def _wait_stopped(c: Container, timeout: float) -> bool:
        """Wait (without holding the GIL) until the monitor reports STOPPED."""
        deadline = time.monotonic() + timeout
        while c.state != "STOPPED":
            if time.monotonic() > deadline:
                return False
            time.sleep(0.005)
        return True

    def freeze(self, instance: Instance) -> None:
        if not self._container(instance.name).freeze():
            raise OperationFailed(f"failed to freeze {instance.name}")

    def unfreeze(self, instance: Instance) -> None:
        if not self._container(instance.name).unfreeze():
            raise OperationFailed(f"failed to unfreeze {instance.name}")

    def usage(self, instance: Instance) -> dict[str, int]:
        """Read from the container's cgroup files directly (microseconds; liblxc's
        ``get_cgroup_item`` asks the monitor over its command socket, a round trip per
        key); through liblxc when a file is not where this runtime puts it."""
        v2 = cgroup_layout() == "v2"
        c: Container | None = None

        def item(controller: str, key: str) -> int:
            nonlocal c
            base = CGROUP_ROOT if v2 else CGROUP_ROOT / controller
            try:
                text = (base / self.prefix / instance.name / key).read_text()
            except FileNotFoundError:
                text = None
            except OSError:
                return 0
            if text is None:
                c = c or self._container(instance.name)
                text = _liblxc_cgroup_item(c, key)
            if key == "cpu.stat":
                return next((int(line.split()[1]) * 1000 for line in text.splitlines()
                             if line.startswith("usage_usec")), 0)
            try:
                return int(text.split()[0]) if text.strip() else 0
            except ValueError:
                return 0

        if v2:
            return {"processes": item("pids", "pids.current"),
                    "memory": item("memory", "memory.current"),
                    "memory_peak": item("memory", "memory.peak"),
                    "cpu": item("cpu", "cpu.stat")}
        return {"processes": item("pids", "pids.current"),
                "memory": item("memory", "memory.usage_in_bytes"),
                "memory_peak": item("memory", "memory.max_usage_in_bytes"),
                "cpu": item("cpuacct", "cpuacct.usage")}

    def apply_limits(self, instance: Instance) -> None:
        layout = cgroup_layout()
        wanted = dict(_unlimited(layout))
        for line in limit_lines(instance.expanded_config, layout):
            key, _, value = line.partition(" = ")
            wanted[key] = value
        c = self._container(instance.name)
        items = [(key.split(".", 2)[2], value) for key, value in wanted.items()]
        # memory+swap must stay >= memory: growing needs memsw first, shrinking memory first
        for order in (items, sorted(items, key=lambda kv: "memsw" not in kv[0])):
            failed = [f"{k} = {v}" for k, v in order if not c.set_cgroup_item(k, v)]
            if not failed:
                break
        else:
            raise OperationFailed(f"the kernel refused {', '.join(failed)}")
        if net_prio_missing() is None:  # elsewhere a non-zero value is refused at set and start
            apply_network_priority(c, network_priority(instance.expanded_config))

    def check(self, instances: list[Instance]) -> list[str]:
        known = {i.name for i in instances}
        running = set(lxc.list_containers(active=True, defined=False,
                                          config_path=str(self.lxc_path)))
        found = [f"container {n} runs and is no instance" for n in sorted(running - known)]
        if self.lxc_path.is_dir():
            found += [f"LXC directory {d} belongs to no instance"
                      for d in sorted(self.lxc_path.iterdir())
                      if d.is_dir() and d.name not in known]
        for hierarchy in _hierarchies():
            for parent in (self.prefix, f"{self.prefix}.monitor"):
                base = hierarchy / parent
                if base.is_dir():
                    found += [f"cgroup {d} of a container that is not running"
                              for d in sorted(base.iterdir())
                              if d.is_dir() and d.name not in running]
        return found

    def after_stop(self, instance: Instance) -> None:
        self._remove_cgroups(instance.name)
        # the CLI's exec agent (lxfs/cli/exec_agent.py) died with the container's pid namespace
        for leftover in EXEC_AGENT_FILES:
            (self._dir(instance) / leftover).unlink(missing_ok=True)

    def cleanup(self, instance: Instance) -> None:
        with self._lock:
            self._containers.pop(instance.name, None)
        d = self._dir(instance)
        if d.exists():
            subprocess.run(["rm", "-rf", "--one-file-system", str(d)], check=False)
        self._remove_cgroups(instance.name)
        for parent in (self.prefix, f"{self.prefix}.monitor"):
            for hierarchy in _hierarchies():
                _rmdir_tree(hierarchy / parent, only_if_empty=True)

    def rename(self, instance: Instance, new_name: str) -> None:
        with self._lock:
            self._containers.pop(instance.name, None)
        old = self._dir(instance)
        if old.exists():
            # its config names the old directory (log files): every start writes it anew
            (old / "config").unlink(missing_ok=True)
            os.rename(old, self.lxc_path / new_name)

    def _remove_cgroups(self, name: str, wait: float = 2.0) -> None:
        """Remove an instance's cgroups. The monitor is still exiting right after the
        container stopped: give its cgroup a moment to empty."""
        deadline = time.monotonic() + wait
        dirs = [h / parent / name for h in _hierarchies()
                for parent in (self.prefix, f"{self.prefix}.monitor")]
        while True:
            for d in dirs:
                _rmdir_tree(d)
            dirs = [d for d in dirs if d.exists()]
            if not dirs or time.monotonic() > deadline:
                break
            time.sleep(0.01)


def _signal_number(name: str) -> int:
    """``SIGPWR``, ``PWR``, ``30`` or ``SIGRTMIN+3`` → the signal number."""
    name = name.strip().upper()
    if name.isdigit():
        return int(name)
    if not name.startswith("SIG"):
        name = "SIG" + name
    if name.startswith("SIGRTMIN+"):
        return signal.SIGRTMIN + int(name[len("SIGRTMIN+"):])
    return int(getattr(signal, name))


def _liblxc_cgroup_item(c: Container, key: str) -> str:
    """A cgroup value through liblxc. It raises ValueError when it cannot reach the monitor
    for the cgroup path (seen under load right after a start): retry briefly, then ''."""
    for attempt in range(5):
        try:
            return str(c.get_cgroup_item(key) or "")
        except (TypeError, ValueError):
            time.sleep(0.01 * (attempt + 1))
    return ""


def _hierarchies() -> list[Path]:
    if cgroup_layout() == "v2":
        return [CGROUP_ROOT]
    return [p for p in CGROUP_ROOT.iterdir() if p.is_dir() and not p.is_symlink()]


def _rmdir_tree(path: Path, only_if_empty: bool = False) -> None:
    """Remove an (empty of tasks) cgroup directory and its children, deepest first."""
    if not path.is_dir():
        return
    if only_if_empty and any(p.is_dir() for p in path.iterdir()):
        return
    for sub in sorted((p for p in path.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
        try:
            sub.rmdir()
        except OSError:
            pass
    try:
        path.rmdir()
    except OSError:
        pass


# --- config contributed by this plugin --------------------------------------------------------


def _blkio_weight_available() -> bool:
    if cgroup_layout() == "v2":
        controllers = Path("/sys/fs/cgroup/cgroup.controllers")
        return "io" in controllers.read_text().split() if controllers.exists() else False
    return Path("/sys/fs/cgroup/blkio/blkio.weight").exists()


def _unlimited(layout: str) -> dict[str, str]:
    """What each limit key is when unset."""
    cpus = f"0-{(os.cpu_count() or 1) - 1}"
    if layout == "v2":
        return {"lxc.cgroup2.memory.max": "max", "lxc.cgroup2.memory.swap.max": "max",
                "lxc.cgroup2.pids.max": "max", "lxc.cgroup2.cpuset.cpus": cpus,
                "lxc.cgroup2.cpu.weight": "100", "lxc.cgroup2.cpu.max": "max 100000"}
    unlimited = {"lxc.cgroup.memory.limit_in_bytes": "-1", "lxc.cgroup.pids.max": "max",
                 "lxc.cgroup.cpuset.cpus": cpus, "lxc.cgroup.cpu.shares": "1024",
                 "lxc.cgroup.cpu.cfs_quota_us": "-1", "lxc.cgroup.cpu.cfs_period_us": "100000"}
    if _blkio_weight_available():
        unlimited["lxc.cgroup.blkio.weight"] = "500"
    if Path("/sys/fs/cgroup/memory/memory.memsw.limit_in_bytes").exists():
        unlimited["lxc.cgroup.memory.memsw.limit_in_bytes"] = "-1"
    return unlimited


def limit_lines(config: dict[str, str], layout: str) -> list[str]:
    """cgroup limits for the layout the host has (v1 keys here, v2 on most hosts)."""
    lines: list[str] = []
    v2 = layout == "v2"
    memory = config.get("limits.memory")
    if memory:
        n = memory_bytes(memory)
        if v2:
            lines.append(f"lxc.cgroup2.memory.max = {n}")
        else:
            lines.append(f"lxc.cgroup.memory.limit_in_bytes = {n}")
        if not is_true(config.get("limits.memory.swap", "true")):
            if v2:
                lines.append("lxc.cgroup2.memory.swap.max = 0")
            elif Path("/sys/fs/cgroup/memory/memory.memsw.limit_in_bytes").exists():
                lines.append(f"lxc.cgroup.memory.memsw.limit_in_bytes = {n}")
    processes = config.get("limits.processes")
    if processes:
        key = "lxc.cgroup2.pids.max" if v2 else "lxc.cgroup.pids.max"
        lines.append(f"{key} = {processes}")
    cpu = config.get("limits.cpu")
    if cpu:
        key = "lxc.cgroup2.cpuset.cpus" if v2 else "lxc.cgroup.cpuset.cpus"
        lines.append(f"{key} = {cpu_set(cpu)}")
    allowance = config.get("limits.cpu.allowance")
    if allowance and allowance.endswith("%"):
        pct = int(allowance[:-1])
        lines.append(f"lxc.cgroup2.cpu.weight = {max(1, pct)}" if v2
                     else f"lxc.cgroup.cpu.shares = {max(2, 1024 * pct // 100)}")
    elif allowance:
        quota, period = (int(t.removesuffix("ms")) * 1000 for t in allowance.split("/"))
        if v2:
            lines.append(f"lxc.cgroup2.cpu.max = {quota} {period}")
        else:
            lines += [f"lxc.cgroup.cpu.cfs_period_us = {period}",
                      f"lxc.cgroup.cpu.cfs_quota_us = {quota}"]
    priority = config.get("limits.disk.priority")
    if priority and not _blkio_weight_available():
        log.warning("limits.disk.priority: this kernel's block layer has no I/O weights "
                    "(blkio.weight); the key is kept but not enforced")
    elif priority:
        weight = max(1, int(priority)) * 100
        lines.append(f"lxc.cgroup2.io.weight = default {weight}" if v2
                     else f"lxc.cgroup.blkio.weight = {weight}")
    return lines


# --- limits.network.priority: net_prio.ifpriomap ---------------------------------------------


def net_prio_missing() -> str | None:
    """Why this host has no usable ``net_prio`` controller; None when a cgroup v1 hierarchy
    has it mounted (cgroup v2 has no such controller, so it is v1 or nothing)."""
    try:
        mountinfo = MOUNTINFO.read_text()
    except OSError:
        mountinfo = ""
    for line in mountinfo.splitlines():
        _, sep, fs = line.partition(" - ")
        fields = fs.split()
        if sep and len(fields) >= 3 and fields[0] == "cgroup" and \
                "net_prio" in fields[2].split(","):
            return None
    if cgroup_layout() == "v2":
        return "cgroup v2"
    try:
        kernel = PROC_CGROUPS.read_text().splitlines()
    except OSError:
        kernel = []
    if not any(line.split()[:1] == ["net_prio"] and line.split()[-1] == "1" for line in kernel):
        return "not in this kernel"
    return "in the kernel, but no cgroup v1 hierarchy mounts it"


def net_prio_refusal(why: str) -> str:
    return (f"this host has no net_prio cgroup controller ({why}): the priority could not "
            "be enforced")


def check_network_priority(value: str) -> None:
    """0-10; a non-zero value is refused where the host has no net_prio controller."""
    check_range(0, 10)(value)
    why = net_prio_missing() if int(value) else None
    if why:
        raise InvalidArgument(net_prio_refusal(why))


def network_priority(config: dict[str, str]) -> int:
    """The instance's ``limits.network.priority`` (0 when unset or not a number: records are
    validated when the key is set)."""
    try:
        return int(config.get("limits.network.priority") or 0)
    except ValueError:
        return 0


def parse_ifpriomap(text: str) -> dict[str, int]:
    """``net_prio.ifpriomap`` as read (``IFNAME PRIORITY`` lines) → {interface: priority}."""
    entries: dict[str, int] = {}
    for line in text.splitlines():
        name, _, prio = line.strip().rpartition(" ")
        if name and prio.isdigit():
            entries[name] = int(prio)
    return entries


def ifpriomap_entries(current: dict[str, int], priority: int) -> list[str]:
    """The ``IFNAME PRIORITY`` writes that give every interface ``priority``. As LXD, every
    network interface of the host gets the instance's priority: the kernel resolves the names
    in the host's (initial) network namespace only, and lists exactly those in the file."""
    return [f"{name} {priority}" for name, prio in current.items() if prio != priority]


def apply_network_priority(c: Container, priority: int) -> None:
    """Write ``net_prio.ifpriomap`` until every interface it lists has ``priority`` (one entry
    per write, as the kernel takes them). Interfaces that vanish meanwhile drop out of the
    listing; what the kernel still refuses after three rounds is an error."""
    for _ in range(3):
        try:
            text = c.get_cgroup_item("net_prio.ifpriomap") or ""
        except ValueError:
            text = ""
        current = parse_ifpriomap(text)
        if not current:
            if not priority:
                return  # nothing to enforce (a container started before net_prio was there)
            raise OperationFailed("net_prio.ifpriomap of the container could not be read")
        pending = ifpriomap_entries(current, priority)
        if not pending:
            return
        for entry in pending:
            c.set_cgroup_item("net_prio.ifpriomap", entry)
    raise OperationFailed(f"the kernel refused net_prio.ifpriomap entries {', '.join(pending)}")


#: An unmasked proc and sysfs for the LXC inside a nesting container. The kernel lets a user
#: namespace mount proc or sysfs only where one is already fully visible to it, and the
#: container's own /proc has LXC's overmounts (/proc/sys/kernel/random/boot_id at least):
#: without these the inner container's proc mount fails with EPERM.
NESTING_MOUNTS = ("lxc.mount.entry = proc dev/.lxc/proc proc create=dir,optional 0 0",
                  "lxc.mount.entry = sys dev/.lxc/sys sysfs create=dir,optional 0 0")


def mount_lines(config: dict[str, str]) -> list[str]:
    """proc, sysfs and cgroups. Masked by default (read-only /proc/sys and /sys). With
    ``security.nesting``: writable in an unprivileged container (its user namespace confines
    the writes, as in every LXD unprivileged container; a privileged one stays masked, as in
    LXD), plus the unmasked copies an inner LXC needs."""
    nesting = is_true(config.get("security.nesting"))
    if nesting and not is_true(config.get("security.privileged")):
        lines = ["lxc.mount.auto = proc:rw sys:rw cgroup:rw:force"]
    else:
        lines = ["lxc.mount.auto = proc:mixed sys:mixed cgroup:mixed:force"]
    return lines + list(NESTING_MOUNTS) if nesting else lines


def check_raw_lxc(value: str) -> None:
    for number, line in enumerate(value.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, _ = line.partition("=")
        if not sep or not key.strip().startswith("lxc."):
            raise InvalidArgument(
                f"raw.lxc line {number}: expected 'lxc.KEY = VALUE', got {line!r}")
        if key.strip() in ("lxc.rootfs.path", "lxc.logfile", "lxc.log.file"):
            raise InvalidArgument(f"raw.lxc line {number}: {key.strip()} is managed by lxfs")



#: the keys this plugin owns: the limits it turns into cgroup settings, and raw.lxc
KEYS: list[KeySpec] = [
    KeySpec("limits.memory", check_memory, "", "live",
            description="memory limit: bytes with a unit (512MiB) or a percentage of the host"),
    KeySpec("limits.processes", check_int(1, PIDS_MAX), "", "live",
            description=f"maximum number of processes (pids cgroup), 1-{PIDS_MAX}"),
    KeySpec("limits.cpu", check_cpu, "", "live",
            description="number of CPUs or a CPU set (0-1)"),
    KeySpec("limits.cpu.allowance", check_allowance, "", "live",
            description="CPU share under contention (50%) or hard quota (25ms/100ms)"),
    KeySpec("limits.memory.swap", check_bool, "true", "live",
            description="whether the instance may use swap beyond limits.memory"),
    KeySpec("limits.disk.priority", check_range(0, 10), "5", "live",
            description="block I/O weight under contention, 0 (lowest) to 10"),
    KeySpec("limits.network.priority", check_network_priority, "0", "live",
            description="priority 0-10 of the instance's network traffic on each host "
                        "interface (net_prio cgroup v1 controller; refused where there is none)"),
    KeySpec("raw.lxc", check_raw_lxc, "", "start",
            description="LXC configuration lines appended to the generated config",
            lowlevel=True, multiline=True),
]


@hookimpl
def lxfs_config_keys() -> list[KeySpec]:
    return KEYS


@hookimpl
def lxfs_runtimes() -> list[type[Runtime]]:
    return [LxcRuntime]


@hookimpl
def lxfs_add_hookspecs(pm: pluggy.PluginManager) -> None:
    from lxfs_plugins import lxc_hookspecs

    pm.add_hookspecs(lxc_hookspecs)


@hookimpl(tryfirst=True)
def lxfs_instance_pre_start(host: Host, instance: Instance) -> None:
    """Refuse to start an instance whose network priority this host cannot enforce (a record
    from before the key was checked), before other plugins prepare anything for it."""
    if network_priority(instance.expanded_config):
        why = net_prio_missing()
        if why:
            raise LxfsError(f"limits.network.priority: {net_prio_refusal(why)}")


@hookimpl
def lxfs_lxc_config(host: Host, instance: Instance) -> list[str]:
    config = instance.expanded_config
    halt = config.get("image.lxfs.halt_signal") or "SIGPWR"
    lines = [
        "lxc.init.cmd = /sbin/init",
        "lxc.autodev = 1",
        *mount_lines(config),
        f"lxc.signal.halt = {halt}",
        "lxc.tty.max = 0",
        "lxc.pty.max = 1024",
    ]
    if not any(d.get("type") == "nic" for d in instance.expanded_devices.values()):
        lines.append("lxc.net.0.type = empty")  # loopback only until a nic is attached
    for key, value in sorted(config.items()):
        if key.startswith("environment."):
            lines.append(f"lxc.environment = {key[len('environment.'):]}={value}")
    lines += limit_lines(config, cgroup_layout())
    return lines


@hookimpl
def lxfs_environment() -> dict[str, str]:
    return {"driver_version": lxc.version}
