"""Reload: SIGHUP (and the reload action, the init script, the unit) re-reads the
mode, delay and rules from --conf; a config with an error keeps the running ones."""

import json
import smtplib
import time

from blackhole.process import workers_of
from tests.conftest import HOST, blackhole, free_port, wait_for_port
from tests.test_control import request, rules
from tests.test_initd import deployment, init  # noqa: F401 - the init script's fixture


def mail_code(port):
    with smtplib.SMTP(HOST, port, timeout=10) as client:
        client.ehlo()
        return client.mail("a@example.com")[0]


def until(predicate, seconds=10):
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline
        time.sleep(0.05)


def applied(metrics_port, generation, workers=2):
    """Wait until every worker has applied ``generation``."""
    def done():
        stats = json.loads(request(metrics_port, "GET", "/stats")[1])
        return [w["generation"] for w in stats["workers"]] == [generation] * workers
    until(done)


def test_sighup_applies_a_good_config_and_keeps_the_running_one_on_error(daemon, tmp_path):
    conf = tmp_path / "blackhole.conf"
    conf.write_text('mode="accept"\n')
    metrics_port, own = free_port(), free_port()
    port = free_port()
    process, _ = daemon("--workers=2", "--ssl=False", f"--metrics_port={metrics_port}",
                        f"--conf={conf}", "--rules=rcpt:452",
                        f"--listen=127.0.0.1:{port}, 127.0.0.1:{own} mode=bounce", port=port)
    wait_for_port(metrics_port, process)
    log = tmp_path / "blackhole.log"
    until(lambda: log.read_text().count("serving on") == 2)
    conf.write_text(f'mode="offline"\nrules="mail:451"\n'
                    f'listen="127.0.0.1:{port}, 127.0.0.1:{own} rule=mail:550"\n')
    process.send_signal(1)  # SIGHUP
    until(lambda: rules(metrics_port)["generation"] == 1)
    reloaded = {"mode": "offline", "delay": "0", "rules": ["mail:451"],
                "listeners": {f"127.0.0.1:{own}": {"rules": ["mail:550"]}}, "generation": 1}
    assert rules(metrics_port) == reloaded
    applied(metrics_port, 1)
    for _ in range(6):  # whichever worker answers
        assert mail_code(port) == 451 and mail_code(own) == 550
    for bad in ('rules="rcpt:650"\n', 'mode="sometimes"\n', 'delay=-1\n', 'rules=42\n',
                f'listen="127.0.0.1:{port} rule=mail"\n'):
        conf.write_text(bad)
        lines = log.read_text().count("Reload of")
        process.send_signal(1)
        until(lambda: log.read_text().count("Reload of") == lines + 1)
        assert rules(metrics_port) == reloaded, bad
    failures = [line for line in log.read_text().splitlines() if "Reload of" in line]
    assert len(failures) == 5 and failures[0].endswith(f"Reload of {conf} failed, the running settings stay: "
                                "Invalid rule 'rcpt:650': the code must be 4xx or 5xx"), log.read_text()
    assert "Traceback" not in log.read_text()
    assert mail_code(port) == 451 and process.poll() is None
    conf.write_text("")  # back to the command line's values
    process.send_signal(1)
    until(lambda: rules(metrics_port)["generation"] == 2)
    assert rules(metrics_port) == {"mode": "accept", "delay": "0", "rules": ["rcpt:452"],
                                   "listeners": {f"127.0.0.1:{own}": {"mode": "bounce"}},
                                   "generation": 2}
    applied(metrics_port, 2)  # the master publishes, then tells the workers
    assert mail_code(port) == 250


def test_reload_action_signals_the_daemon_of_the_pid_file(daemon, tmp_path):
    conf = tmp_path / "blackhole.conf"
    conf.write_text("")
    pidfile = tmp_path / "blackhole.pid"
    process, port = daemon("--workers=1", "--ssl=False", f"--conf={conf}")
    until(lambda: "serving on" in (tmp_path / "blackhole.log").read_text())
    pidfile.write_text(f"{process.pid}\n")  # as start writes it
    conf.write_text('rules="mail:421"\n')
    result = blackhole(f"--pid={pidfile}", f"--conf={conf}", "reload")
    assert (result.returncode, result.stdout, result.stderr) == (
        0, f"Reloading pid {process.pid}\n", "")
    until(lambda: mail_code(port) == 421)
    assert workers_of(process.pid)


def test_reload_of_nothing_running_is_one_line(tmp_path):
    result = blackhole(f"--pid={tmp_path / 'none.pid'}", "reload")
    assert (result.returncode, result.stdout, result.stderr) == (
        1, "", f"blackhole: not running (no live blackhole in pidfile {tmp_path / 'none.pid'})\n")


def test_init_script_reload_and_force_reload(deployment, tmp_path):  # noqa: F811
    port, pidfile, env = deployment
    conf = tmp_path / "blackhole.conf"
    assert init("reload", env).returncode == 7  # LSB: not running
    assert init("start", env).returncode == 0
    first = int(pidfile.read_text())
    text = conf.read_text()
    for action, code in (("reload", 451), ("force-reload", 550)):
        conf.write_text(text + f'rules="mail:{code}"\n')
        result = init(action, env)
        assert result.returncode == 0, result
        until(lambda: mail_code(port) == code)
        assert int(pidfile.read_text()) == first  # the same daemon: nothing restarted
    assert init("stop", env).returncode == 0
