"""The daemon actions of 1.x: start, stop, status and restart, around a pid file."""

import os
import select
import signal
import sys
import time

from blackhole import options, process
from blackhole.errors import BlackholeError

START_TIMEOUT = 30  # seconds ``start`` waits to hear that the daemon is up
# Seconds ``stop`` waits after SIGTERM before SIGKILL, then after SIGKILL: the
# init script's --retry TERM/30/KILL/5 and the unit's TimeoutStopSec say the same.
STOP_TIMEOUT = 30
KILL_TIMEOUT = 5


def read_pid(path):
    """The pid in the file, or None when there is no file."""
    try:
        with open(path) as pidfile:
            text = pidfile.read().strip()
    except FileNotFoundError:
        return None
    except OSError as error:
        raise BlackholeError(f"Cannot read pidfile {path}: {error.strerror}") from None
    return int(text) if text.isdigit() else 0


def write_pid(path):
    """``<pid>\n``, in a file that is not a symbolic link someone left there."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(path, flags, 0o644)
    except OSError as error:
        raise BlackholeError(f"Cannot write pidfile {path}: {error.strerror}") from None
    with open(fd, "w") as pidfile:
        pidfile.write(f"{os.getpid()}\n")


def is_blackhole(pid):
    """A live blackhole process (not a zombie, not a reused pid)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            command = cmdline.read()
        with open(f"/proc/{pid}/stat", "rb") as stat:
            state = stat.read().rpartition(b")")[2].split()[0]
    except (OSError, IndexError):
        return False
    return b"blackhole" in command and state != b"Z"


def _remove(path):
    try:
        os.remove(path)
    except FileNotFoundError:
        pass  # already gone: that is what we wanted


def running_pid(path):
    """The pid of the running daemon, or None; a stale pid file is reported and removed."""
    pid = read_pid(path)
    if pid is None:
        return None
    if pid and is_blackhole(pid):
        return pid
    print(f"Stale pid {pid}. Removing" if pid else f"Invalid pidfile {path}. Removing")
    _remove(path)
    return None


def status(values, settings, policy):
    """LSB codes: 0 running, 1 dead with a pid file (now removed), 3 not running."""
    stale = read_pid(values.pid) is not None
    if running_pid(values.pid):
        print("running")
        return 0
    print("not running")
    return 1 if stale else 3


def stop(values, settings, policy):
    """SIGTERM, then wait for the master and its workers to be gone (SIGKILL at last)."""
    if read_pid(values.pid) is None:
        print(f"blackhole: pidfile {values.pid} does not exist. Daemon not running?",
              file=sys.stderr)
        return 0
    pid = running_pid(values.pid)
    if pid is None:
        return 0
    group = [pid, *process.workers_of(pid)]
    try:
        os.kill(pid, signal.SIGTERM)
    except PermissionError:
        raise BlackholeError(f"Permission denied, could not stop pid {pid}") from None
    if not _gone(group, STOP_TIMEOUT):
        for member in group:
            try:
                os.kill(member, signal.SIGKILL)
            except ProcessLookupError:
                pass  # ended between the check and the kill
        if not _gone(group, KILL_TIMEOUT):
            raise BlackholeError(f"pid {pid} would not stop")
    _remove(values.pid)
    return 0


def _gone(pids, seconds):
    """Poll until ``pids`` are gone (run by the stop command, never by the server)."""
    deadline = time.monotonic() + seconds
    while any(is_blackhole(pid) for pid in pids):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def restart(values, settings, policy):
    stop(values, settings, policy)
    return start(values, settings, policy)


def start(values, settings, policy):
    """Daemonize and return 0 once the daemon listens, saying where, or 1 with its reason."""
    if running_pid(values.pid):
        raise BlackholeError(
            f"pidfile {values.pid} already exist. Daemon already running?")
    if values.log is None:
        values.log = options.START_LOG
    plan = process.prepare(values, settings, policy)
    reader, writer = os.pipe()
    child = os.fork()
    if child:
        os.close(writer)
        os.waitpid(child, 0)
        report = _read(reader)
        if report != "ok":
            raise BlackholeError(report or "the daemon exited before it was ready")
        for line in process.announcement(plan, values, settings):
            print(line)
        print(f"Logging to {values.log}")
        print(f"Running as pid {read_pid(values.pid)} ({values.pid})")
        return 0
    os.close(reader)
    os.setsid()
    if os.fork():
        os._exit(0)
    keep = {writer} | {sock.fileno() for _, per_worker in plan.listeners
                       for sockets in per_worker for sock in sockets}
    keep |= {sock.fileno() for sock in plan.metrics}
    _detach(keep)
    process.catch_signals()  # before the pid file, so a stop now still removes it
    told = []  # once "ok" is said the pipe is closed, and its number may be reused

    def tell(message):
        if not told:
            told.append(message)
            _tell(writer, message)

    code = 1
    try:
        write_pid(values.pid)
        code = process.serve(plan, values, settings, policy, ready=lambda: tell("ok"))
    except BlackholeError as error:
        tell(str(error))
    except OSError as error:
        tell(f"{error.strerror or error}: {error.filename or 'starting the daemon'}")
    finally:
        if read_pid(values.pid) == os.getpid():
            _remove(values.pid)
        process.remove_files(plan.files)  # done already, unless serve failed
        os._exit(code)


def _detach(keep):
    """Leave the caller behind: no terminal, no working directory, none of its files."""
    os.chdir("/")
    os.umask(0o022)
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    bounds = [2, *sorted(keep), os.sysconf("SC_OPEN_MAX")]
    for low, high in zip(bounds, bounds[1:]):
        os.closerange(low + 1, high)


def _tell(writer, message):
    try:
        os.write(writer, message.encode())
        os.close(writer)
    except OSError:
        pass  # the caller of start is gone; nobody is left to tell


def _read(reader):
    chunks = []
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        ready, _, _ = select.select([reader], [], [], deadline - time.monotonic())
        if not ready:
            break
        chunk = os.read(reader, 4096)
        if not chunk:
            break
        chunks.append(chunk)
    os.close(reader)
    return b"".join(chunks).decode(errors="replace")


