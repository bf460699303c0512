"""Stopping a running server: sessions are told 421, a message in flight still gets its reply."""

import signal
import socket

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
