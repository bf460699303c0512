"""Workers: the event loop they run on; when stopped, sessions are told 421, a message in flight
still gets its reply."""

import os
import signal
import smtplib
import socket
import time

import pytest

from tests.conftest import HOST


def connect(port):
    sock = socket.create_connection((HOST, port), timeout=10)
    lines = sock.makefile("rb")
    assert lines.readline().startswith(b"220 ")
    return sock, lines


def test_sigterm_tells_idle_sessions_and_finishes_a_message_in_flight(daemon):
    process, port = daemon()
    idle, idle_lines = connect(port)
    busy, busy_lines = connect(port)
    busy.sendall(b"EHLO c\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n")
    while not busy_lines.readline().startswith(b"354"):
        pass
    busy.sendall(b"Subject: in flight\r\n\r\nfirst half")

    process.send_signal(signal.SIGTERM)
    assert idle_lines.readline() == b"421 4.3.2 Shutting down, try again later\r\n"
    assert idle_lines.readline() == b""  # closed

    busy.sendall(b", second half\r\n.\r\n")
    assert busy_lines.readline() == b"250 2.0.0 OK\r\n"
    assert busy_lines.readline() == b"421 4.3.2 Shutting down, try again later\r\n"
    assert process.wait(timeout=10) == 0
    idle.close()
    busy.close()


@pytest.mark.parametrize("installed", [True, False])
def test_workers_use_uvloop_when_installed_else_asyncio(daemon, tmp_path, installed):
    env = dict(os.environ)
    if not installed:  # a module that fails to import, found before the real uvloop
        (tmp_path / "uvloop.py").write_text("raise ImportError('not installed here')\n")
        env["PYTHONPATH"] = str(tmp_path)
    process, port = daemon(env=env)
    with smtplib.SMTP(HOST, port, timeout=10) as smtp:
        assert smtp.sendmail("a@example.com", ["b@example.com"], "Subject: loop\r\n\r\nhi") == {}
    expected = " serving on uvloop " if installed else " serving on asyncio\n"
    log = tmp_path / "blackhole.log"
    deadline = time.monotonic() + 10  # a thread writes the worker's log
    while expected not in log.read_text():
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.05)
