"""The ``lxfs`` command's fast path (lxfs/cli/fast.py): its parser agrees with the full one
(argparse) on every argument vector it accepts, it imports neither argparse nor pathlib nor
re, and the installed ``lxfs`` command starts on it."""

from __future__ import annotations

import contextlib
import io
import itertools
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from lxfs.cli import FAST_WORDS, fast
from lxfs.cli.base import CLIError
from lxfs.cli.parser import build_parser

REPO = Path(__file__).resolve().parent.parent
VENV_LXFS = Path(sys.executable).parent / "lxfs"

#: tokens each command's vectors are made of: names, values, every option the fast parser
#: knows, and some it must leave to argparse (abbreviations, unknown options, --help,
#: --project, remotes, ``--``, negative numbers)
COMMON_TOKENS = ["c1", "c2", "-h", "--help", "--project", "--", "r:c1", "-x", "-1", ""]
TOKENS: dict[str, list[str]] = {
    "start": ["--all", "--al", "-f"],
    "stop": ["-f", "--force", "--forc", "--timeout", "--timeout=5", "--timeout=x", "5", "-1",
             "--all", "-ff"],
    "restart": ["-f", "--force", "--timeout", "3", "--timeout=+2", "--timeout=", "--all"],
    "freeze": ["--all"],
    "pause": ["--all"],
    "unfreeze": ["--all"],
    "delete": ["-f", "--force", "c1/s1", "c1/"],
    "rm": ["-f", "c1/s1"],
    "snapshot": ["s1", "-1"],
    "restore": ["s1"],
    "config": ["get", "set", "unset", "show", "k", "k=v", "user.a", "user.a=1", "v", "-e"],
    "launch": ["busybox", "-e", "--ephemeral", "-c", "k=v", "--config=a=b", "-p", "default",
               "--profile", "-s", "pool", "--storage=p2", "--no-profiles", "--description",
               "-d", "root,size=1GiB", "-cX", "BadName!", "bad-"],
    "create": ["busybox", "-e", "-c", "k=v", "-p", "p1", "-s", "p", "--no-profiles"],
    "copy": ["c1/s1", "c3", "-e", "--refresh", "2bad"],
    "cp": ["c3", "--instance-only"],
    "file": ["push", "pull", "delete", "/etc/hostname", "c1/tmp/", "-r", "-p", "--uid", "0",
             "--gid=7", "--mode", "0644", "--create-dirs", "-"],
    "info": ["--show-log", "--show", "--resources"],
    "list": ["-f", "csv", "-c", "ns", "status=running", "--format=json"],
    "ls": ["-c", "n"],
    "publish": ["--alias", "a1", "--alias=a2", "--public", "-f", "--force", "--compression",
                "--compression=xz", "k=v", "=v", "c1/s1", "--pub", "k"],
    "image": ["import", "list", "f.tar.xz", "r.squashfs", "--alias", "--alias=a2", "--public",
              "--reuse", "--reu", "-"],
}


#: options of the full parser the fast path leaves out, at the value they have when not given:
#: it runs in the default project only (--project is not one of its forms, and lxfs.cli does
#: not take it when ``lxfs project switch`` made another project current)
PROJECT_DEFAULTS = {"project": None, "all_projects": False, "target_project": None}


def argparse_result(argv: list[str]) -> dict[str, Any] | None:
    """The full parser's namespace as a dict without ``func`` (nor the project options at
    their defaults); None when it refuses ``argv`` (or prints help)."""
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            namespace = build_parser(argv).parse_args(argv)
    except (CLIError, SystemExit):
        return None
    values = vars(namespace)
    values.pop("func", None)
    for key, default in PROJECT_DEFAULTS.items():
        if key in values and values[key] == default:
            del values[key]
    return values


def vectors(word: str, max_len: int = 3) -> list[list[str]]:
    """Every vector of up to ``max_len`` tokens of the command, plus longer typical forms."""
    pool = TOKENS[word] + COMMON_TOKENS
    found = [[word]]
    for n in range(1, max_len + 1):
        found += [[word, *combo] for combo in itertools.product(pool, repeat=n)]
    return found


@pytest.mark.parametrize("word", sorted(TOKENS))
def test_fast_parser_agrees_with_argparse(word: str) -> None:
    accepted = 0
    for argv in vectors(word):
        got = fast.parse(argv)
        if got is None:
            continue
        accepted += 1
        assert got == argparse_result(argv), argv
    assert accepted, f"the fast parser accepts no form of {word}"


LONGER_FORMS = [
    ["start", "c1", "c2", "c3", "c4"],
    ["stop", "-f", "c1", "c2", "c3"],
    ["stop", "--timeout", "30", "c1", "c2"],
    ["stop", "c1", "c2", "--force", "--timeout=0"],
    ["restart", "--force", "--timeout", "-1", "c1"],
    ["delete", "--force", "c1", "c2/s1", "c3"],
    ["config", "set", "c1", "limits.cpu", "1"],
    ["config", "set", "c1", "a=1", "b=2", "c="],
    ["config", "set", "limits.cpu=1"],
    ["config", "get", "c1", "volatile.base_image"],
    ["launch", "busybox", "c1", "-s", "dir", "-e", "-c", "a=1", "-c", "b=2", "-p", "x",
     "-p", "y", "--description", "some text"],
    ["launch", "-s", "btrfs", "--config=limits.memory=64MiB", "busybox", "web-1"],
    ["create", "busybox", "c1", "--no-profiles", "--profile=p1"],
    ["copy", "c1/snap0", "c2"],
    ["file", "push", "a", "b", "c1/tmp/", "-p", "--uid", "1000", "--gid", "1000",
     "--mode=0600"],
    ["file", "pull", "-r", "c1/etc", "c1/root/x", "/tmp/out/"],
    ["ls"],
    ["publish", "c1", "--alias", "a", "--public", "os=debian", "release=12"],
    ["publish", "--alias", "a", "c1/snap0", "--compression", "none", "-f", "--alias=b"],
    ["publish", "--compression=xz", "c1", "k=v", "--compression", "gzip", "description="],
    ["image", "import", "meta.tar.xz", "rootfs.squashfs", "--alias", "a", "--alias", "b",
     "--reuse"],
    ["image", "import", "--public", "busybox.tar.xz", "--alias=busybox"],
]


@pytest.mark.parametrize("argv", LONGER_FORMS, ids=" ".join)
def test_fast_parser_longer_forms(argv: list[str]) -> None:
    got = fast.parse(argv)
    assert got is not None, "a plain form the fast path is meant to handle"
    assert got == argparse_result(argv)


@pytest.mark.parametrize("argv", [
    ["start", "--all"],  # every instance, by priority: the full command's
    ["stop", "--project", "p1", "c1"],
    ["stop", "--all-projects", "--all"],
    ["start", "remote:c1"],
    ["launch", "images:debian/12", "c1"],
    ["launch", "busybox"],  # a generated name
    ["launch", "busybox", "c1", "-d", "root,size=1GiB"],
    ["list", "c"],
    ["list", "--format", "json"],
    ["config", "show", "c1"],
    ["config", "set", "c1", "user.url", "http://example.com"],
    ["stop", "--help"],
    ["stop", "--forc", "c1"],  # argparse's abbreviation
    ["publish", "c1", "notapair"],
    ["publish", "c1", "--", "k=v"],
    ["publish", "c1", "--alias"],
    ["publish", "c1", "local:"],
    ["image", "list"],
    ["image", "import", "a", "--alias", "x", "b"],  # argparse takes the first run only
    ["image", "import", "a", "b", "c"],
], ids=" ".join)
def test_other_forms_are_left_to_argparse(argv: list[str]) -> None:
    assert fast.parse(argv) is None


def full_publish_line(argv: list[str]) -> str:
    """What the full command writes to ``publish`` for ``argv`` (or the error it raises)."""
    from lxfs.cli.copying import merge_publish_args, publish_request  # noqa: PLC0415

    namespace = build_parser(argv).parse_args(argv)
    try:
        merge_publish_args(namespace)
        return publish_request(namespace)
    except CLIError as exc:
        return f"error: {exc.message}"


def fast_publish_line(args: dict[str, Any]) -> str:
    try:
        return fast.publish_line(args)
    except CLIError as exc:
        return f"error: {exc.message}"


def test_fast_publish_writes_what_the_full_command_writes() -> None:
    """Past the namespace: the options after the source (argparse.REMAINDER, parsed
    intermixed by ``copying.merge_publish_args``) give the same request line."""
    accepted = 0
    for argv in vectors("publish") + [f for f in LONGER_FORMS if f[0] == "publish"] + [
            ["publish", "c1", "k=a b"], ["publish", "c1", "--alias", "x y"]]:
        got = fast.parse(argv)
        if got is None:
            continue
        accepted += 1
        assert fast_publish_line(got) == full_publish_line(argv), argv
    assert accepted > 100


def test_fast_words_are_the_fast_parsers() -> None:
    """lxfs.cli imports lxfs.cli.fast only for its words."""
    assert FAST_WORDS == fast.WORDS
    assert set(fast.RUNNERS) == set(fast.WORDS)


@pytest.mark.parametrize("text", [
    "", " ", "2026-11-23T10:49:46Z", "2026-11-23T10:49:46.123456789Z", "2026-11-23T10:49:46+00:00",
    "1970-01-01T00:00:00Z", "1971-01-01T00:00:00Z", "0001-01-01T00:00:00Z",
    "2024-02-29T23:59:59Z", "2023-02-29T10:00:00Z", "2026-13-01T10:00:00Z", "2026-11-31T10:00:00Z",
    "2026-11-23T24:00:00Z", "2026-11-23T10:60:00Z", "2026-11-23T10:49:60Z",
    "2026-11-23T10:49:46", "2026-11-23 10:49:46Z", "2026-11-23T10:49:46+02:00", "garbage",
    "2026-11-23T10:49Z", "2026-11-23T10:49:46.Z", "２０２６-11-23T10:49:46Z",
    "\n2026-11-23T10:49:46Z\n",
])
def test_utc_minutes_is_fmt_time(text: str) -> None:
    """info's dates on the fast path: output.fmt_time's (the daemon's format without it)."""
    from lxfs.cli.output import fmt_time  # noqa: PLC0415

    assert fast.utc_minutes(text) == fmt_time(text)


def test_valid_instance_name_matches_names_module() -> None:
    from lxfs.cli.names import valid_instance_name  # noqa: PLC0415

    for name in ["a", "c1", "web-1", "A" * 63, "A" * 64, "1a", "-a", "a-", "a_b", "a.b", "é",
                 "a\n", "", "ab-c9", "Z-9"]:
        if fast.valid_instance_name(name):  # the fast parser's check may only be stricter
            assert valid_instance_name(name), name
        elif "\n" not in name:
            assert not valid_instance_name(name), name


# -- start-up ----------------------------------------------------------------------------------
SLOW_MODULES = {"argparse", "pathlib", "re", "typing", "dataclasses", "json", "enum", "yaml",
                "datetime", "shutil", "site"}
PLAIN_FORMS = [
    ["launch", "busybox", "c1", "-s", "dir"], ["start", "c1"], ["stop", "-f", "c1"],
    ["restart", "c1"], ["delete", "-f", "c1"], ["list"], ["snapshot", "c1", "s1"],
    ["restore", "c1", "s1"], ["copy", "c1", "c2"], ["config", "get", "c1", "k"],
    ["config", "set", "c1", "k", "v"], ["file", "push", "/etc/hostname", "c1/tmp/x"],
    ["info", "c1"],
    ["file", "pull", "c1/etc/hostname", "/tmp/x"],
    ["publish", "c1", "--alias", "a1", "os=x"],
    ["image", "import", "/etc/hostname", "--alias", "a1"],
]


def installed_package() -> Path:
    """The lxfs package the venv imports (for an editable install: the tree of links under
    build/), not the checkout pytest puts first on sys.path."""
    found = subprocess.run([sys.executable, "-I", "-c", "import lxfs; print(lxfs.__path__[0])"],
                           capture_output=True, text=True, check=True, cwd="/")
    return Path(found.stdout.strip())


def imported_modules(argv: list[str], command: list[str]) -> set[str]:
    """The modules a run of ``command + argv`` imports (``-X importtime``), against a mount
    point where no daemon answers (the command stops at its first request on the mount)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LXFS_")}
    env.update(LXFS_MOUNT="/nonexistent-lxfs-mount", PYTHONPROFILEIMPORTTIME="1",
               LXFS_CONF="/nonexistent-lxfs-conf")
    result = subprocess.run([*command, *argv], env=env, capture_output=True, text=True,
                            timeout=60, stdin=subprocess.DEVNULL)
    lines = result.stderr.splitlines()
    assert "no lxfs daemon mounted at /nonexistent-lxfs-mount" in lines[-1], result.stderr
    return {line.split("|")[-1].strip() for line in lines if line.startswith("import time:")}


@pytest.mark.parametrize("argv", PLAIN_FORMS, ids=" ".join)
def test_fast_path_imports_no_slow_module(argv: list[str]) -> None:
    modules = imported_modules(argv, [sys.executable, "-S", "-c",
                                      "import sys; sys.path.append(sys.argv.pop(1)); "
                                      "from lxfs.cli import main; main()",
                                      str(installed_package().parent)])
    assert "lxfs.cli.fast" in modules
    assert not modules & SLOW_MODULES, sorted(modules & SLOW_MODULES)


def test_installed_command_is_the_launcher() -> None:
    """contrib/install-deps.sh's launcher: Debian's Python without site, no ``re``."""
    assert VENV_LXFS.is_file(), f"{VENV_LXFS} missing: run contrib/install-deps.sh"
    first = VENV_LXFS.read_text().splitlines()[0]
    assert first.endswith(" -S"), f"{VENV_LXFS} is pip's wrapper: run contrib/install-deps.sh"
    for argv in (["start", "c1"], ["exec", "c1", "--", "true"]):
        modules = imported_modules(argv, [str(VENV_LXFS)])
        assert not modules & SLOW_MODULES, (argv, sorted(modules & SLOW_MODULES))
    base = subprocess.run([str(VENV_LXFS)[:-len("lxfs")] + "python", "-c",
                           "import sys; print(sys._base_executable)"],
                          capture_output=True, text=True, check=True).stdout.strip()
    assert os.path.realpath(base) == os.path.realpath("/usr/bin/python3")


def test_full_path_after_fast_path_has_site_packages() -> None:
    """A command past the fast path (here ``version``, which needs no daemon) runs with the
    installed packages on sys.path, although the launcher starts Python without site."""
    result = subprocess.run([str(VENV_LXFS), "version"], capture_output=True, text=True,
                            timeout=60, env=dict(os.environ, LXFS_MOUNT="/nonexistent-lxfs"))
    assert result.returncode == 0, result.stderr
    assert "Client version:" in result.stdout
    probe = subprocess.run(
        [sys.executable, "-S", "-c", "import sys; sys.path.append(sys.argv[1]); "
         "from lxfs.cli import complete_sys_path; complete_sys_path(); import yaml, trio",
         str(installed_package().parent)], capture_output=True, text=True)
    assert probe.returncode == 0, probe.stderr


def test_package_is_precompiled() -> None:
    """Every module has bytecode where the venv imports it from (install-deps.sh's
    compileall: for an editable install, next to the links under build/), so that
    PYTHONDONTWRITEBYTECODE=1 or a user who cannot write there compiles nothing."""
    package = installed_package()
    tag = sys.implementation.cache_tag
    missing = [str(source.relative_to(package.parent)) for source in sorted(package.rglob("*.py"))
               if not (source.parent / "__pycache__" / f"{source.stem}.{tag}.pyc").is_file()]
    assert not missing, f"not compiled (run contrib/install-deps.sh): {missing[:10]}"


# -- the same behaviour on a real daemon -------------------------------------------------------
#: steps of a session, ``{n}`` standing for an instance name of the run; each step runs on the
#: fast path in one run and on argparse only in the other
SESSION = [
    "list",
    "launch busybox {n}1 -c user.a=1",
    "launch busybox {n}1",
    "create busybox {n}2 -p default --description two -e",
    "launch busybox {n}3 -s default -c limits.memory=bogus",
    "start {n}1",
    "start {n}1 {n}2 nope",
    "config get {n}1 user.a",
    "config get {n}1 user.missing",
    "config set {n}1 user.b 2",
    "config set {n}1 user.c=3 user.a=",
    "config set {n}1 no.such.key 1",
    "config get {n}1 user.b",
    "config get nope user.b",
    "file push /etc/hostname {n}1/root/x",
    "file pull {n}1/root/x -",
    "file pull {n}1/root/missing -",
    "snapshot {n}1",
    "snapshot {n}1 s1",
    "snapshot {n}1 s1",
    "restore {n}1 nope",
    "stop -f {n}1",
    "stop {n}1",
    "restore {n}1 s1",
    "copy {n}1/s1 {n}4",
    "copy {n}1 {n}2",
    "copy nope {n}5",
    "restart --timeout 0 {n}1",
    "restart -f {n}1 {n}4",
    "delete {n}1",
    "delete {n}1/snap0 {n}1/nope",
    "delete -f {n}1 {n}2 {n}4",
    "list",
    "stop nope",
    "info nope",
    "image import {busybox} --alias busybox",
    "image import /nonexistent.tar.xz",
    "launch busybox {n}6",
    "publish {n}6 --alias busybox",
    "publish {n}6/nosnap",
    "publish nope --alias x os=y",
    "delete -f {n}6",
]
#: steps run on both paths at once (their output changes with time: memory, CPU, dates)
PAIRED = ["info {n}", "info {n} --show-log", "info {n}x"]


def run_lxfs(argv: list[str], env: dict[str, str], fast_path: bool
             ) -> subprocess.CompletedProcess[str]:
    """The installed ``lxfs``; on the fast path, checked to have stayed on it (argparse not
    imported), the import times taken out of stderr again."""
    env = dict(env, PYTHONPROFILEIMPORTTIME="1") if fast_path else dict(
        env, LXFS_NO_FAST_PATH="1")
    done = subprocess.run([str(VENV_LXFS), *argv], env=env, capture_output=True, text=True,
                          timeout=120)
    lines = done.stderr.splitlines(keepends=True)
    imports = {line.split("|")[-1].strip() for line in lines if line.startswith("import time:")}
    assert not fast_path or "argparse" not in imports, f"{argv} left the fast path"
    done.stderr = "".join(line for line in lines if not line.startswith("import time:"))
    return done


def test_fast_path_behaves_as_argparse_on_a_daemon(daemon_with_busybox: Any,
                                                   busybox_image: Path) -> None:
    d = daemon_with_busybox
    outcomes: dict[str, list[tuple[str, int, str, str]]] = {}
    for prefix, fast_path in (("fq", True), ("aq", False)):
        env = {k: v for k, v in d.env.items() if k != "LXFS_NO_FAST_PATH"}
        runs = []
        for step in SESSION:
            argv = step.format(n=prefix, busybox=busybox_image).split()
            if fast_path and argv[0] != "list":
                assert fast.parse(argv) is not None, step
            done = run_lxfs(argv, env, fast_path)
            runs.append((step, done.returncode,
                         re.sub(f"{prefix}(?=[0-9])", "{n}", done.stdout),
                         re.sub(f"{prefix}(?=[0-9])", "{n}", done.stderr)))
        outcomes[prefix] = runs
        if fast_path:  # an instance that runs, with a snapshot: info on both paths
            name = f"{prefix}9"
            d.cli("launch", "busybox", name)
            d.cli("snapshot", name, "s0")
            for step in PAIRED:
                argv = step.format(n=name).split()
                assert fast.parse(argv) is not None, step
                both = [run_lxfs(argv, env, on_fast_path) for on_fast_path in (True, False)]
                assert [(r.returncode, r.stdout, r.stderr) for r in both][0] == \
                    [(r.returncode, r.stdout, r.stderr) for r in both][1], step
        for name in d.instance_names():  # the next run starts from the same (empty) state
            with contextlib.suppress(OSError):
                d.path("instances", name, "state").write_text("kill")
            os.rmdir(d.path("instances", name))
    for fast_run, full_run in zip(outcomes["fq"], outcomes["aq"], strict=True):
        assert fast_run == full_run
