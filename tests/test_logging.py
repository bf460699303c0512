"""The log file of a real process: the 1.x format, debug lines, and silence without --debug."""

import re
import signal
import smtplib

from tests.conftest import HOST

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
    opened = len(messages) - 1 - messages[::-1].index("Connection from '127.0.0.1'")
    first = re.match(r"\[([0-9A-F]{10})\] SEND: 220 ", messages[opened + 1]).group(1)
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
