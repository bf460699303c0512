"""The stats and watch actions against a real server under load (Postfix's smtp-source)."""

import re
import shutil
import signal
import subprocess
import sys
import time

from blackhole.process import workers_of
from tests.conftest import HOST, blackhole, free_port, wait_for_port

SOURCE = shutil.which("smtp-source") or shutil.which("smtp-source", path="/usr/sbin")


def smtp_source(port, messages, sessions=20, size=100):
    """Postfix's load generator: ``messages`` over ``sessions`` kept-open sessions."""
    assert SOURCE, "smtp-source is needed (Debian: apt-get install postfix)"
    return subprocess.Popen([SOURCE, "-d", "-s", str(sessions), "-m", str(messages),
                             "-l", str(size), f"{HOST}:{port}"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def stats(metrics_port):
    result = blackhole(f"--metrics_port={metrics_port}", "stats")
    assert (result.returncode, result.stderr) == (0, ""), result
    return dict(line.split(" ", 1) for line in result.stdout.splitlines())


def quiet_stats(metrics_port, opened):
    """Stats once ``opened`` sessions have been counted and none is open."""
    deadline = time.monotonic() + 15
    while True:
        now = stats(metrics_port)
        if int(now["connections_opened"]) >= opened and now["connections_open"] == "0":
            return now
        assert time.monotonic() < deadline, now
        time.sleep(0.1)


def test_stats_equals_what_100000_messages_sent(daemon):
    metrics_port = free_port()
    process, port = daemon("--workers=2", "--ssl=False", f"--metrics_port={metrics_port}")
    wait_for_port(metrics_port, process)
    before = quiet_stats(metrics_port, 1)  # the readiness probe
    one = smtp_source(port, 1, sessions=1)  # the size of one message, as smtp-source sends it
    assert (*one.communicate(timeout=30), one.returncode) == ("", "", 0)
    single = quiet_stats(metrics_port, int(before["connections_opened"]) + 1)
    octets = int(single["octets"]) - int(before["octets"])
    load = smtp_source(port, 100_000)
    assert (*load.communicate(timeout=300), load.returncode) == ("", "", 0)
    after = quiet_stats(metrics_port, int(single["connections_opened"]) + 20)
    assert int(after["messages.250"]) - int(single.get("messages.250", 0)) == 100_000
    assert int(after["recipients"]) - int(single["recipients"]) == 100_000
    # smtp-source numbers its messages: the later ones are a few digits longer.
    assert 0 <= int(after["octets"]) - int(single["octets"]) - 100_000 * octets < 100_000 * 8
    assert int(after["connections_opened"]) - int(single["connections_opened"]) == 20
    assert sorted(int(after[f"workers.{i}.pid"]) for i in range(2)) == sorted(
        workers_of(process.pid))
    assert after["workers.0.generation"] == after["workers.1.generation"] == "0"
    assert not [name for name in after if name.startswith("faults.")]


def test_watch_prints_a_line_a_second_under_load(daemon):
    metrics_port = free_port()
    process, port = daemon("--workers=2", "--ssl=False", f"--metrics_port={metrics_port}",
                           "--rules=rcpt:ok:10%")  # counted as a fault; smtp-source quits on a 4xx
    wait_for_port(metrics_port, process)
    load = smtp_source(port, 10_000_000, sessions=10)
    watch = subprocess.Popen([sys.executable, "-m", "blackhole", f"--metrics_port={metrics_port}",
                              "watch"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        lines, times = [], []
        for _ in range(4):
            lines.append(watch.stdout.readline())
            times.append(time.monotonic())
    finally:
        load.kill()
        load.communicate()
        watch.send_signal(signal.SIGINT)
        out, err = watch.communicate(timeout=10)
    shape = re.compile(r"(\d+) msg/s  (\d+) open  2xx (\d+)/s  4xx 0/s  5xx 0/s  "
                       r"faults (\d+)/s  \|  total (\d+) msgs, (\d+) sessions, (\d+) faults\n")
    values = [tuple(map(int, shape.fullmatch(line).groups())) for line in lines]
    assert 2.5 < times[-1] - times[0] < 4.5  # one a second, each paced from the last
    assert all(rate > 0 and two > rate and faults > 0 for rate, _, two, faults, *_ in values)
    assert [total for *_, total, _, _ in values] == sorted(total for *_, total, _, _ in values)
    assert values[-1][1] == 10  # sessions open
    assert (watch.returncode, out, err) == (0, "", "")


def test_stats_and_watch_when_nothing_answers():
    port = free_port()
    for action in ("stats", "watch"):
        result = blackhole(f"--metrics_port={port}", action)
        assert (result.returncode, result.stdout) == (1, "")
        assert result.stderr == (f"blackhole: nothing answers on http://127.0.0.1:{port}/stats "
                                 f"([Errno 111] Connection refused): is blackhole running with "
                                 f"--metrics_port={port}?\n")
        result = blackhole(action)
        assert (result.returncode, result.stderr) == (
            1, "blackhole: no metrics port to ask: set --metrics_port (as the daemon has it, or "
               "in its --conf)\n")


def test_stats_finds_the_port_through_the_config_file(daemon, tmp_path):
    metrics_port = free_port()
    conf = tmp_path / "blackhole.conf"
    conf.write_text(f"metrics_port={metrics_port}\n")
    process, _ = daemon("--workers=1", "--ssl=False", f"--conf={conf}")
    wait_for_port(metrics_port, process)
    result = blackhole(f"--conf={conf}", "stats")
    assert result.returncode == 0 and "\nmessages" not in result.stdout  # none yet: no lines
    assert re.search(r"^workers\.0\.pid \d+$", result.stdout, re.MULTILINE)
