import os, pty, select, subprocess, sys, time


def _run_pty(d, args, send=b"", env=None, timeout=20):
    pid, fd = pty.fork()
    if pid == 0:
        os.execvpe(sys.executable, [sys.executable, "-m", "lxfs.cli", *args], env or d.env)
    out = b""
    deadline = time.time() + timeout
    sent = False
    while time.time() < deadline:
        r, _, _ = select.select([fd], [], [], 0.5)
        if r:
            try:
                chunk = os.read(fd, 4096)
            except OSError:
                break
            if not chunk:
                break
            out += chunk
        if send and not sent and (b"detach" in out or b"Press enter" in out):
            time.sleep(1)
            os.write(fd, send)
            sent = True
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), out.decode(errors="replace")


def test_console_and_editor(daemon_with_busybox, tmp_path):
    d = daemon_with_busybox
    d.cli("launch", "busybox", "c1")
    code, out = _run_pty(d, ["console", "c1"], send=b"\x01q")
    print(repr(out))
    assert code == 0, out
    ed = tmp_path / "ed.py"
    ed.write_text("import sys,re\np=sys.argv[-1]\nt=open(p).read()\n"
                  "t=t.replace('config:', 'config:\\n  user.viaeditor: yes', 1) if 'user.viaeditor' not in t else t\n"
                  "open(p,'w').write(t)\n")
    env = dict(d.env, EDITOR=f"{sys.executable} {ed}")
    code, out = _run_pty(d, ["config", "edit", "c1"], env=env)
    print(repr(out))
    assert code == 0, out
    assert d.read("instances", "c1", "config", "user.viaeditor") == "true"
