"""A fleet behind HAProxy: PROXY v2 to two blackholes and v1 to a third, for real.

Clients connect from 127.0.0.2 to HAProxy on 127.0.0.1, so the balancer's
address and the client's differ: each blackhole must log the client's.
"""

import re
import signal
import smtplib
import socket
import subprocess
import time
import urllib.request

import pytest

from tests.conftest import HOST, free_port, insecure_context, wait_for_port

HAPROXY = "/usr/sbin/haproxy"  # Debian's haproxy; .ci/run installs it
CLIENT = "127.0.0.2"  # all of 127.0.0.0/8 is loopback on Linux
MESSAGE = b"Subject: through the balancer\r\n\r\nhi\r\n"


@pytest.fixture
def haproxy(tmp_path):
    """Start HAProxy in the foreground with ``config`` (its text); stopped by PID."""
    processes = []

    def start(config, ports):
        path = tmp_path / "haproxy.cfg"
        path.write_text(config)
        check = subprocess.run([HAPROXY, "-c", "-f", str(path)], capture_output=True, text=True)
        assert check.returncode == 0, check.stdout + check.stderr
        process = subprocess.Popen([HAPROXY, "-db", "-f", str(path)],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        processes.append(process)
        for port in ports:
            wait_for_port(port, process)
        return process

    yield start
    for process in processes:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
        process.communicate(timeout=10)


def config(frontends):
    """``frontends``: {port: [(backend port, send-proxy keyword), ...]}."""
    lines = ["global", "    maxconn 200", "defaults", "    mode tcp",
             "    timeout connect 5s", "    timeout client 30s", "    timeout server 30s"]
    for number, (port, servers) in enumerate(frontends.items()):
        lines += [f"frontend in{number}", f"    bind {HOST}:{port}",
                  f"    default_backend out{number}", f"backend out{number}",
                  "    balance roundrobin"]
        lines += [f"    server s{server} {HOST}:{server} {keyword} check check-send-proxy "
                  "inter 300ms" for server, keyword in servers]
    return "\n".join(lines) + "\n"


def send(port, **kwargs):
    with smtplib.SMTP(HOST, port, source_address=(CLIENT, 0), timeout=10, **kwargs) as smtp:
        smtp.sendmail("a@example.com", ["b@example.com"], MESSAGE)


def connections(log):
    """The client addresses the debug log says connected."""
    return re.findall(r"Connection from '([^']*)'", log.read_text())


def logged(log, address, seconds=10):
    """Whether the debug log says ``address`` connected, within ``seconds``:
    a worker's log lines reach the file from a thread of their own."""
    deadline = time.monotonic() + seconds
    while address not in connections(log):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def refused(port, data):
    """Send ``data`` straight to a proxy=on listener: closed without a greeting?

    Reset, as a rule: the octets it was sent are left unread."""
    with socket.create_connection((HOST, port), timeout=10) as sock:
        sock.sendall(data)
        try:
            return sock.recv(100) == b""
        except ConnectionResetError:
            return True


def test_two_sinks_behind_send_proxy_v2_and_one_behind_send_proxy(daemon, haproxy, tmp_path):
    sinks = {name: free_port() for name in ("a", "b", "c")}
    logs = {name: tmp_path / f"{name}.log" for name in sinks}
    metrics = free_port()
    for name, port in sinks.items():
        daemon(f"--listen={HOST}:{port} proxy=on", "--debug", f"--log={logs[name]}",
               *([f"--metrics_port={metrics}"] if name == "a" else []), port=port)
    v2, v1 = free_port(), free_port()
    haproxy(config({v2: [(sinks["a"], "send-proxy-v2"), (sinks["b"], "send-proxy-v2")],
                    v1: [(sinks["c"], "send-proxy")]}), [v2, v1])
    for _ in range(4):
        send(v2)
    send(v1)
    for name, log in logs.items():
        assert logged(log, CLIENT), (name, connections(log))
        # HAProxy's health checks come with a v2 LOCAL (or v1 UNKNOWN) header:
        # served, as the balancer's own connections.
        assert logged(log, HOST), (name, connections(log))
    # No header, or a bad one, straight to a sink: closed without a word, counted.
    assert refused(sinks["a"], b"EHLO plain.client\r\n")
    assert refused(sinks["a"], b"PROXY TCP4 192.0.2.1 nonsense\r\n")
    assert refused(sinks["a"], b"\r\n\r\n\x00\r\nQUIT\n\x21\x11\xff\xff")
    page = urllib.request.urlopen(f"http://{HOST}:{metrics}/metrics", timeout=10).read().decode()
    assert 'blackhole_proxy_refused_total{reason="malformed"} 3' in page
    send(v2)  # and the fleet goes on
    send(v1)


def test_implicit_tls_behind_send_proxy_v2(daemon, haproxy, tmp_path):
    plain, smtps, front = free_port(), free_port(), free_port()
    log = tmp_path / "tls.log"
    daemon(f"--listen={HOST}:{plain}", f"--ssl_listen={HOST}:{smtps} proxy=on", "--debug",
           f"--log={log}", port=plain)
    haproxy(config({front: [(smtps, "send-proxy-v2")]}), [front])
    with smtplib.SMTP_SSL(HOST, front, source_address=(CLIENT, 0), timeout=10,
                          context=insecure_context()) as smtp:
        smtp.sendmail("a@example.com", ["b@example.com"], MESSAGE)
    assert logged(log, CLIENT), connections(log)
