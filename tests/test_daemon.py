"""start/stop/status/restart, workers and privileges, through the real command."""

import os
import shutil
import signal
import smtplib
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

from blackhole.config import mailname
from blackhole.daemon import is_blackhole
from blackhole.process import workers_of
from tests.conftest import HOST, blackhole, free_port, stop_by_pid, wait_for_port


class Daemon:
    """The options of one daemon, its pid file and log, and the actions on it."""

    def __init__(self, tmp_path, *extra):
        self.pidfile = tmp_path / "blackhole.pid"
        self.logfile = tmp_path / "blackhole.log"
        self.port, self.ssl_port = free_port(), free_port()
        self.options = [f"--host={HOST}", f"--port={self.port}", f"--ssl_port={self.ssl_port}",
                        f"--pid={self.pidfile}", f"--log={self.logfile}", *extra]

    def __call__(self, action, *more, **kwargs):
        return blackhole(*self.options, *more, action, **kwargs)

    @property
    def pid(self):
        return int(self.pidfile.read_text())

    def send(self):
        with smtplib.SMTP(HOST, self.port, timeout=10) as smtp:
            return smtp.sendmail("a@example.com", ["b@example.com"], "Subject: d\r\n\r\nhi")

    def kill_all(self):
        """Teardown: end the master and its workers by PID, whatever state they are in."""
        if not self.pidfile.exists():
            return
        pid = self.pid
        for member in [pid, *workers_of(pid)]:
            try:
                os.kill(member, signal.SIGKILL)
            except ProcessLookupError:
                pass  # already stopped by the test


@pytest.fixture
def daemon(tmp_path):
    started = []

    def make(*extra):
        started.append(Daemon(tmp_path, *extra))
        return started[-1]

    yield make
    for each in started:
        each.kill_all()


def title(pid):
    with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
        return cmdline.read().rstrip(b"\0").decode()


def wait_until(check, seconds=10):
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def serving(bh, count):
    """Wait until ``count`` workers have said in the log that they serve; return their pids.

    A worker just forked still has the master's title, account and no event
    loop: only its "serving" line says it has switched all three.
    """
    def ready():
        pids = workers_of(bh.pid)
        text = bh.logfile.read_text() if bh.logfile.exists() else ""
        return len(pids) == count and all(f"Worker {pid} serving on " in text for pid in pids)

    wait_until(ready)
    return workers_of(bh.pid)


def test_start_status_send_stop(daemon):
    bh = daemon("--workers=1")
    started = time.monotonic()
    result = bh("start")
    assert (result.returncode, result.stderr) == (0, "")
    assert time.monotonic() - started < 10
    assert bh.pidfile.read_text() == f"{bh.pid}\n"
    assert result.stdout.splitlines() == [  # what run logs, and where to look next
        f"Listening on {HOST}:{bh.port}, mode accept",
        f"Listening for SMTPS on {HOST}:{bh.ssl_port}, mode accept",
        f"No certificate configured: using a self-signed one for {mailname()}",
        f"Logging to {bh.logfile}",
        f"Running as pid {bh.pid} ({bh.pidfile})",
    ]
    assert title(bh.pid) == "blackhole: master"
    assert bh.send() == {}  # listening as soon as start returned
    status = bh("status")
    assert (status.returncode, status.stdout) == (0, "running\n")
    master, workers = bh.pid, serving(bh, 1)  # start returns before the fork
    stopped = bh("stop")
    assert (stopped.returncode, stopped.stderr) == (0, "")
    assert not bh.pidfile.exists()
    for pid in [master, *workers]:
        assert not is_blackhole(pid)
    with socket.socket() as probe:  # no listener is left: a server could bind again
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers do
        probe.bind((HOST, bh.port))
        probe.listen()
    assert (bh("status").returncode, bh("status").stdout) == (3, "not running\n")


def test_start_while_running_is_refused(daemon):
    bh = daemon()
    assert bh("start").returncode == 0
    again = bh("start")
    assert again.returncode == 1
    assert again.stderr == f"blackhole: pidfile {bh.pidfile} already exist. Daemon already running?\n"
    assert bh("stop").returncode == 0


def test_stop_and_status_when_not_running(daemon):
    bh = daemon()
    stopped = bh("stop")
    assert (stopped.returncode, stopped.stdout, stopped.stderr) == (
        0, "", f"blackhole: pidfile {bh.pidfile} does not exist. Daemon not running?\n")
    status = bh("status")
    assert (status.returncode, status.stdout) == (3, "not running\n")


def test_a_stale_pid_file_is_reported_and_removed(daemon):
    bh = daemon()
    dead = subprocess.Popen(["true"])
    dead.wait()
    bh.pidfile.write_text(f"{dead.pid}\n")
    status = bh("status")
    assert (status.returncode, status.stdout) == (1, f"Stale pid {dead.pid}. Removing\nnot running\n")
    assert not bh.pidfile.exists()
    bh.pidfile.write_text(f"{dead.pid}\n")
    started = bh("start")
    assert started.returncode == 0
    assert started.stdout.startswith(f"Stale pid {dead.pid}. Removing\nListening on ")
    assert bh.pid != dead.pid and bh.send() == {}
    assert bh("stop").returncode == 0


def test_restart_waits_for_the_old_daemon(daemon):
    bh = daemon("--workers=2")
    assert bh("start").returncode == 0
    old = bh.pid
    with socket.create_connection((HOST, bh.port)) as idle:  # a session in progress
        idle.recv(1024)
        restarted = bh("restart")
    assert (restarted.returncode, restarted.stderr) == (0, "")
    assert bh.pid != old
    assert bh.send() == {}
    assert bh("stop").returncode == 0


def test_start_failure_is_said_on_stderr(daemon):
    bh = daemon()
    with socket.socket() as taken:
        taken.bind((HOST, bh.port))
        taken.listen()
        result = bh("start")
    assert result.returncode == 1
    assert result.stderr == (
        f"blackhole: Address already in use, could not bind to {HOST}:{bh.port}\n")
    assert not bh.pidfile.exists()


def test_start_failure_after_forking_is_said_too(daemon, tmp_path):
    bh = daemon(f"--pid={tmp_path}/no/such/dir/blackhole.pid")
    result = bh("start")
    assert result.returncode == 1
    assert result.stderr == (f"blackhole: Cannot write pidfile {tmp_path}/no/such/dir/"
                             "blackhole.pid: No such file or directory\n")


def test_the_daemon_is_detached_from_its_caller(daemon):
    bh = daemon()
    reader, writer = os.pipe()  # an open file of the caller's
    result = subprocess.run([sys.executable, "-m", "blackhole", *bh.options, "start"],
                            pass_fds=(reader, writer), capture_output=True, timeout=30)
    os.close(reader)
    os.close(writer)
    assert result.returncode == 0
    pid = bh.pid
    assert os.readlink(f"/proc/{pid}/cwd") == "/"
    for fd in (0, 1, 2):
        assert os.readlink(f"/proc/{pid}/fd/{fd}") == "/dev/null"
    assert os.getsid(pid) != os.getsid(0) and os.getsid(pid) != pid  # setsid, then fork
    targets = [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")]
    assert not [t for t in targets if t.startswith("pipe:")]
    assert bh("stop").returncode == 0


def test_workers_are_forked_titled_and_replaced(daemon):
    bh = daemon("--workers=2")
    assert bh("start").returncode == 0
    workers = serving(bh, 2)
    assert [title(pid) for pid in workers] == ["blackhole: worker"] * 2
    os.kill(workers[0], signal.SIGKILL)
    wait_until(lambda: workers[0] not in workers_of(bh.pid))
    replaced = serving(bh, 2)
    assert workers[1] in replaced
    assert [title(pid) for pid in replaced] == ["blackhole: worker"] * 2
    assert all(bh.send() == {} for _ in range(4))
    assert bh("stop").returncode == 0


def test_a_killed_master_takes_its_workers_along(daemon):
    # As root the workers switch account, which must not cancel this.
    switch = ("--user=nobody", "--group=nogroup") if os.geteuid() == 0 else ()
    bh = daemon("--workers=2", *switch)
    assert bh("start").returncode == 0
    wait_until(lambda: len(workers_of(bh.pid)) == 2)
    workers = workers_of(bh.pid)
    os.kill(bh.pid, signal.SIGKILL)
    wait_until(lambda: not any(os.path.exists(f"/proc/{pid}") for pid in workers))


def test_stop_right_after_start_never_hangs(daemon):
    """A stop that reaches workers before their event loop does is not lost."""
    bh = daemon("--workers=4")
    for _ in range(10):
        master = subprocess.Popen([sys.executable, "-m", "blackhole", *bh.options, "run"],
                                  stderr=subprocess.DEVNULL)
        try:
            wait_for_port(bh.port, master)
            master.send_signal(signal.SIGTERM)  # while the workers are still starting
            # A lost stop hangs for ever; a loaded machine may take a while (8 s was too few).
            assert master.wait(timeout=20) == 0
        finally:
            stop_by_pid(master)


def test_stop_lets_a_message_in_flight_finish(daemon):
    bh = daemon("--workers=2")
    assert bh("start").returncode == 0
    with socket.create_connection((HOST, bh.port), timeout=10) as sock:
        lines = sock.makefile("rb")
        lines.readline()
        sock.sendall(b"EHLO c\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\n"
                     b"DATA\r\n")
        while not lines.readline().startswith(b"354"):
            pass
        sock.sendall(b"Subject: x\r\n\r\nhalf")
        stopping = subprocess.Popen([sys.executable, "-m", "blackhole", *bh.options, "stop"])
        wait_until(lambda: "Stopping" in bh.logfile.read_text())  # the master has passed it on
        sock.sendall(b" and the rest\r\n.\r\n")
        assert lines.readline() == b"250 2.0.0 OK\r\n"
        assert lines.readline().startswith(b"421 4.3.2")
    assert stopping.wait(timeout=30) == 0
    assert not bh.pidfile.exists()


def test_sighup_reopens_the_log_file(daemon, tmp_path):
    # As root the workers run as nobody: the master must hand them the new file,
    # in a directory nobody can reach, as /var/log is (pytest's tmp_path is not).
    switch = ("--user=nobody", "--group=nogroup") if os.geteuid() == 0 else ()
    logs = Path(tempfile.mkdtemp(prefix="blackhole-logs-"))
    logs.chmod(0o755)
    bh = daemon("--workers=1", "--debug", f"--log={logs}/blackhole.log", *switch)
    bh.logfile = logs / "blackhole.log"
    try:
        run_sighup_rotation(bh)
    finally:
        shutil.rmtree(logs)


def run_sighup_rotation(bh):
    assert bh("start").returncode == 0
    serving(bh, 1)  # and listening for SIGHUP
    bh.logfile.rename(bh.logfile.with_suffix(".1"))  # what logrotate does
    os.kill(bh.pid, signal.SIGHUP)

    def reopened():  # once the worker's loop has run its handler, sessions log anew
        bh.send()
        return bh.logfile.exists() and "RECV: QUIT" in bh.logfile.read_text()

    wait_until(reopened)
    assert bh("stop").returncode == 0


def test_start_with_closed_stdio_and_relative_paths(daemon, tmp_path):
    bh = daemon()
    options = [o for o in bh.options if not o.startswith(("--pid=", "--log="))]
    command = " ".join([sys.executable, "-m", "blackhole", *options, "--pid=rel.pid",
                        "--log=rel.log", "start"])
    result = subprocess.run(["sh", "-c", f"cd {tmp_path} && PYTHONPATH={os.getcwd()} "
                             f"exec {command} <&- >&-"], capture_output=True, timeout=30)
    assert result.returncode == 0, result.stderr
    bh.pidfile = tmp_path / "rel.pid"  # relative to where start ran, not to /
    assert bh.send() == {}
    assert (tmp_path / "rel.log").exists()
    assert bh("stop", f"--pid={bh.pidfile}").returncode == 0
    assert not bh.pidfile.exists()


def test_pid_and_log_files_are_never_symbolic_links(daemon, tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    bh = daemon()
    bh.logfile.symlink_to(victim)
    result = bh("start")
    assert result.returncode == 1 and "Cannot open log file" in result.stderr
    bh.logfile.unlink()
    planted = tmp_path / "planted"  # a dangling link would make root create this file
    bh.pidfile.symlink_to(planted)
    result = bh("start")
    assert result.returncode == 1 and "Cannot write pidfile" in result.stderr
    assert victim.read_text() == "precious\n" and not planted.exists()


@pytest.mark.parametrize("option, message", [
    ("--user=nosuchuser", "User 'nosuchuser' does not exist"),
    ("--group=nosuchgroup", "Group 'nosuchgroup' does not exist"),
])
def test_unknown_user_or_group_is_one_line(daemon, option, message):
    bh = daemon(option)
    for action in ("start", "run"):
        result = bh(action)
        assert (result.returncode, result.stderr) == (1, f"blackhole: {message}\n")


def test_workers_run_as_the_given_user_and_can_still_log(daemon):
    if os.geteuid() != 0:  # only root may switch; anyone else is told so
        result = daemon("--user=root", "--group=root")("start")
        assert (result.returncode, result.stderr) == (
            1, "blackhole: Cannot switch to user 'root': not running as root\n")
        return
    bh = daemon("--user=nobody", "--group=nogroup", "--workers=1", "--debug")
    result = bh("start")
    assert result.returncode == 0
    (worker,) = serving(bh, 1)  # it has switched account by then
    with open(f"/proc/{worker}/status") as status:
        uids = {line.split()[0]: line.split()[1:] for line in status}
    nobody = subprocess.run(["id", "-u", "nobody"], capture_output=True, text=True)
    assert uids["Uid:"][0] == nobody.stdout.strip()
    assert bh.send() == {}
    wait_until(lambda: "RECV: QUIT" in bh.logfile.read_text())  # written by the worker
    assert bh("stop").returncode == 0
    assert not bh.pidfile.exists()  # the master kept the right to remove it


def socket_count(pid):
    return sum(os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:")
               for fd in os.listdir(f"/proc/{pid}/fd"))


def test_connections_spread_over_the_workers(daemon):
    """Each worker has a socket of its own (SO_REUSEPORT): none is left idle."""
    bh = daemon("--workers=2")
    assert bh("start").returncode == 0
    workers = serving(bh, 2)  # a worker's event loop opens sockets of its own
    before = {pid: socket_count(pid) for pid in workers}
    held = [socket.create_connection((HOST, bh.port)) for _ in range(40)]
    try:
        for sock in held:
            sock.recv(1024)  # greeted: the connection belongs to a worker now
        gained = {pid: socket_count(pid) - before[pid] for pid in workers}
        assert sum(gained.values()) == 40
        assert all(count > 0 for count in gained.values()), gained
    finally:
        for sock in held:
            sock.close()
    # A second blackhole is still told the port is taken, not let in to share it.
    again = daemon("--workers=2", f"--port={bh.port}", f"--pid={bh.pidfile}.2")("start")
    assert (again.returncode, again.stderr) == (
        1, f"blackhole: Address already in use, could not bind to {HOST}:{bh.port}\n")
    assert bh("stop").returncode == 0


def test_metrics_work_when_daemonized(daemon):
    metrics_port = free_port()
    bh = daemon(f"--metrics_port={metrics_port}")
    assert bh("start").returncode == 0
    assert bh.send() == {}
    with urllib.request.urlopen(f"http://{HOST}:{metrics_port}/metrics", timeout=10) as page:
        assert 'blackhole_messages_total{code="250"} 1' in page.read().decode()
    assert bh("stop").returncode == 0
