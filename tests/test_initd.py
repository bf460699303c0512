"""The shipped config file, Debian init script and systemd unit, run for real."""

import os
import re
import shlex
import shutil
import signal
import smtplib
import subprocess
import sys
from pathlib import Path

import pytest

from blackhole import daemon, options
from blackhole.daemon import is_blackhole
from blackhole.process import workers_of
from tests.conftest import HOST, free_port, stop_by_pid, wait_for_port

TOP = Path(__file__).resolve().parent.parent
INIT = TOP / "init.d" / "debian-ubuntu" / "blackhole"
UNIT = TOP / "init.d" / "systemd" / "blackhole.service"
CONF_DIST = TOP / "blackhole.conf-dist"


def test_conf_dist_is_python_and_shell_and_documents_every_option(tmp_path):
    namespace = {}
    exec(CONF_DIST.read_text(), namespace)  # noqa: S102 - the file stays valid Python
    shell = subprocess.run(
        ["/bin/sh", "-c", f'. "{CONF_DIST}" && echo "$host|$port|$mode|$ssl|$pid|$log"'],
        capture_output=True, text=True, check=True)
    assert shell.stdout.strip() == "|".join(
        str(namespace[name]) for name in ("host", "port", "mode", "ssl", "pid", "log"))
    conf = tmp_path / "blackhole.conf"  # as root, only root may be able to write it
    shutil.copy(CONF_DIST, conf)
    conf.chmod(0o644)
    _, values, _ = options.parse([f"--conf={conf}"])  # every name is an option
    assert values.port == 25 and values.ssl is False
    text = CONF_DIST.read_text()
    for _, name, *_ in options.OPTIONS:
        if name not in ("conf", "ssl_ca_certs_dir"):
            assert f"\n{name}=" in text or f"\n#{name}=" in text, name


@pytest.fixture
def deployment(tmp_path):
    """A conf and a daemon executable for the init script, in a private directory."""
    port = free_port()
    conf = tmp_path / "blackhole.conf"
    conf.write_text(
        f'host="{HOST}"\nport={port}\nssl_port={free_port()}\nssl=True\nworkers=2\n'
        f'pid="{tmp_path}/blackhole.pid"  # where stop looks\nlog="{tmp_path}/blackhole.log"\n')
    conf.chmod(0o644)
    program = tmp_path / "blackhole"
    program.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} -m blackhole "$@"\n')
    program.chmod(0o755)
    env = dict(os.environ, BLACKHOLE_CONF=str(conf), BLACKHOLE_DAEMON=str(program),
               BLACKHOLE_DEFAULTS=str(tmp_path / "default"), PYTHONPATH=str(TOP),
               _SYSTEMCTL_SKIP_REDIRECT="1")
    pidfile = tmp_path / "blackhole.pid"
    yield port, pidfile, env
    if pidfile.exists():  # the test failed half way: end what it started, by PID
        pid = int(pidfile.read_text())
        for member in [pid, *workers_of(pid)]:
            try:
                os.kill(member, signal.SIGKILL)
            except ProcessLookupError:
                pass  # already gone


def init(action, env):
    return subprocess.run([str(INIT), action], env=env, capture_output=True, text=True,
                          timeout=60)


def send(port):
    with smtplib.SMTP(HOST, port, timeout=10) as smtp:
        return smtp.sendmail("a@example.com", ["b@example.com"], "Subject: init\r\n\r\nhi")


def test_init_script_start_status_restart_stop(deployment):
    port, pidfile, env = deployment
    assert init("start", env).returncode == 0
    first = int(pidfile.read_text())
    assert is_blackhole(first) and send(port) == {}
    status = init("status", env)
    assert (status.returncode, status.stdout) == (0, "running\n")
    assert init("start", env).returncode == 0  # LSB: starting a started service is fine
    assert int(pidfile.read_text()) == first
    restarted = init("restart", env)
    assert restarted.returncode == 0, restarted
    second = int(pidfile.read_text())
    assert second != first and not is_blackhole(first)
    assert send(port) == {}
    assert init("stop", env).returncode == 0
    assert not pidfile.exists() and not is_blackhole(second)
    status = init("status", env)
    assert (status.returncode, status.stdout) == (3, "not running\n")
    assert init("stop", env).returncode == 0  # stopping a stopped daemon is fine


def test_init_script_never_kills_a_process_that_reused_the_pid(deployment):
    _, pidfile, env = deployment
    bystander = subprocess.Popen(["sleep", "30"])
    try:
        pidfile.write_text(f"{bystander.pid}\n")
        status = init("status", env)
        assert (status.returncode, status.stdout) == (
            1, f"Stale pid {bystander.pid}. Removing\nnot running\n")
        pidfile.write_text(f"{bystander.pid}\n")
        assert init("stop", env).returncode == 0
        assert bystander.poll() is None  # still alive
    finally:
        bystander.kill()
        bystander.wait()


def test_init_script_usage_and_missing_conf(deployment, tmp_path):
    _, _, env = deployment
    usage = init("bogus", env)
    assert (usage.returncode, usage.stdout) == (
        1, "Usage: /etc/init.d/blackhole {start|stop|restart|reload|force-reload|status}\n")
    missing = init("start", dict(env, BLACKHOLE_CONF=str(tmp_path / "none.conf")))
    assert (missing.returncode, missing.stdout) == (
        1, f"Failed to open conf: {tmp_path / 'none.conf'}\n")


def test_init_script_says_where_it_looked_for_a_missing_daemon(deployment, tmp_path):
    """LSB: start (and restart) of a program not installed is 5, its status 4 (unknown)."""
    port, pidfile, env = deployment
    assert init("start", env).returncode == 0
    running = int(pidfile.read_text())
    absent = dict(env, BLACKHOLE_DAEMON=str(tmp_path / "not-installed"))
    line = (f"blackhole: {tmp_path / 'not-installed'} is not installed (set DAEMON in "
            f"{tmp_path / 'default'}, or BLACKHOLE_DAEMON)\n")
    for action, code in (("start", 5), ("restart", 5), ("status", 4)):
        result = init(action, absent)
        assert (result.returncode, result.stdout, result.stderr) == (code, "", line), action
    assert is_blackhole(running) and send(port) == {}  # restart did not stop it first
    stopped = init("stop", absent)  # stop needs only the pid file
    assert stopped.returncode == 0, stopped
    assert not is_blackhole(running) and not pidfile.exists()


def test_init_script_takes_daemon_from_etc_default(deployment, tmp_path):
    port, pidfile, env = deployment
    (tmp_path / "default").write_text(f"DAEMON={env.pop('BLACKHOLE_DAEMON')}\n")
    assert init("start", env).returncode == 0
    assert send(port) == {}
    status = init("status", env)
    assert (status.returncode, status.stdout) == (0, "running\n")
    assert init("stop", env).returncode == 0 and not pidfile.exists()


def test_init_script_never_runs_the_config_file(deployment, tmp_path):
    """It reads pid= only: a file others may write is refused by blackhole, not run by sh."""
    _, _, env = deployment
    conf = tmp_path / "blackhole.conf"
    marker = tmp_path / "ran"
    conf.write_text(conf.read_text() + f'mode="$(touch {marker})"\n')
    conf.chmod(0o666)
    status = init("status", env)
    assert not marker.exists()
    if os.geteuid() == 0:
        assert (status.returncode, status.stderr) == (
            1, f"blackhole: Refusing config file '{conf}' as root: it is writable by group or "
               f"others (chmod go-w {conf})\n")


def test_stop_waits_the_same_everywhere():
    """SIGKILL after STOP_TIMEOUT, then KILL_TIMEOUT more: stop, init script, unit, README."""
    retry = re.search(r"--retry TERM/(\d+)/KILL/(\d+)", INIT.read_text())
    assert tuple(map(int, retry.groups())) == (daemon.STOP_TIMEOUT, daemon.KILL_TIMEOUT)
    assert f"TimeoutStopSec={daemon.STOP_TIMEOUT}\n" in UNIT.read_text()
    readme = " ".join((TOP / "README.rst").read_text().split())
    said = re.findall(r"SIGKILL after (\d+) s", readme)
    assert said and set(said) == {str(daemon.STOP_TIMEOUT)}


def test_systemd_unit_runs_blackhole_in_the_foreground(deployment, tmp_path):
    port, _, env = deployment
    lines = dict(line.split("=", 1) for line in UNIT.read_text().splitlines()
                 if "=" in line and not line.startswith("#"))
    command = shlex.split(lines["ExecStart"])
    assert command[0] == "/usr/local/bin/blackhole" and command[-1] == "run"
    command[0] = env["BLACKHOLE_DAEMON"]
    command = [arg.replace("/etc/blackhole.conf", env["BLACKHOLE_CONF"]) for arg in command]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    try:
        wait_for_port(port, process)
        os.kill(process.pid, signal.SIGHUP)  # ExecReload
        assert send(port) == {}
        process.send_signal(signal.SIGTERM)  # what systemctl stop sends first
        assert process.wait(timeout=20) == 0
    finally:
        stop_by_pid(process)
