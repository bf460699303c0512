"""The log file of a real process: the 1.x format, debug lines, and silence without --debug."""

import os
import re
import signal
import smtplib
import subprocess
import sys
import time

from blackhole.process import workers_of
from tests.conftest import HOST, free_port, stop_by_pid, wait_for_port

LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} - (.*)$")


def session(port):
    with smtplib.SMTP(HOST, port) as smtp:
        smtp.sendmail("a@example.com", ["b@example.com"], "Subject: logged\r\n\r\nbody line")
        smtp.rset()


def stopped_log(process, tmp_path):
    process.send_signal(signal.SIGTERM)
    process.communicate(timeout=10)
    return (tmp_path / "blackhole.log").read_text().splitlines()


def test_debug_logs_every_line_with_a_connection_id(daemon, tmp_path):
    process, port = daemon("--debug")
    session(port)
    messages = [LINE.match(line).group(1) for line in stopped_log(process, tmp_path)]
    # The last connection is ours (the first was the fixture's readiness probe).
    connections = [re.fullmatch(r"\[([0-9A-F]{10})\] Connection from '127\.0\.0\.1'", m)
                   for m in messages]
    first = [match for match in connections if match][-1].group(1)
    assert any(m.startswith(f"[{first}] SEND: 220 ") for m in messages)
    for expected in ("RECV: mail FROM:<a@example.com> size=", "SEND: 250 2.1.0 OK",
                     "RECV: Subject: logged", "RECV: body line", "RECV: .",
                     "SEND: 354 Start mail input; end with <CRLF>.<CRLF>"):
        assert any(m.startswith(f"[{first}] {expected}") for m in messages), expected
    renamed = [m for m in messages if "RSET received, changing ID to" in m]
    assert len(renamed) == 1
    new = re.fullmatch(rf"\[{first}\] RSET received, changing ID to \[([0-9A-F]{{10}})\]",
                       renamed[0]).group(1)
    assert f"[{new}] RECV: QUIT" in messages
    assert f"[{new}] Closing" in messages


def test_without_debug_nothing_is_logged_per_message(daemon, tmp_path):
    log = tmp_path / "blackhole.log"
    log.write_text("an earlier line\n")
    process, port = daemon()
    for _ in range(3):
        session(port)
    lines = stopped_log(process, tmp_path)
    assert lines[0] == "an earlier line"  # appended, never truncated
    messages = [LINE.match(line).group(1) for line in lines[1:]]
    notices = [re.compile(pattern) for pattern in (
        r"Running as root: there is no 'blackhole' account", r"Worker \d+ serving on uvloop \S+$",
        rf"Listening on {HOST}:{port}, mode accept$",
        rf"Listening for SMTPS on {HOST}:\d+, mode accept$",
        r"No certificate configured: using a self-signed one for ",
        r"Starting \d+ processes$", r"Stopping$", r"child \d+ \(pid \d+\) exited normally$",
        r"Summary: \d+ sessions, 3 messages accepted, refused by code: none, \d+ bytes$",
        r"Stopped$")]
    assert [m for m in messages if not any(n.match(m) for n in notices)] == []
    assert "Stopping" in messages and messages[-1] == "Stopped"


def test_run_logs_to_stderr_and_opens_no_file_unless_given_one():
    """A log file another account left (1.x's /tmp/blackhole.log) can never stop ``run``."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "blackhole", f"--host={HOST}", f"--port={port}", "--ssl=False",
         "--workers=2", "run"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for_port(port, process)
        deadline = time.monotonic() + 10
        while len(workers_of(process.pid)) < 2:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        for pid in [process.pid, *workers_of(process.pid)]:
            files = [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")]
            # Only /dev/null and the rulebook's memfd (memory, not a file), never a log.
            assert [f for f in files if f.startswith("/") and not f.startswith("/dev/")
                    and not f.startswith("/memfd:blackhole-rules")] == [], pid
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=20)
    finally:
        stop_by_pid(process)
    assert LINE.match(stderr.splitlines()[0])
    assert f"Listening on {HOST}:{port}, mode accept" in stderr
