"""Metrics through the real command: exact counts over workers, /healthz, the summary line."""

import os
import re
import shutil
import signal
import smtplib
import socket
import tempfile
import time
import urllib.error
import urllib.request
from array import array
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from blackhole import control, metrics
from blackhole.process import workers_of
from tests.conftest import HOST, free_port, insecure_context, wait_for_port


def scrape(port):
    with urllib.request.urlopen(f"http://{HOST}:{port}/metrics", timeout=10) as response:
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = response.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        assert family.name.startswith("blackhole_")
        for sample in family.samples:
            key = (sample.name, tuple(sorted(sample.labels.items())))
            samples[key] = sample.value
    return samples


def quiet_scrape(port):
    """A scrape once the readiness probe's session has been served and has ended.

    With a socket per worker, the probe may wait in the backlog of a worker
    that is still starting: it is counted only once that worker serves it.
    """
    deadline = time.monotonic() + 10
    while True:
        samples = scrape(port)
        if (samples[("blackhole_connections_opened_total", ())] >= 1
                and samples[("blackhole_connections_active", ())] == 0):
            return samples
        assert time.monotonic() < deadline
        time.sleep(0.05)


def diff(before, after, name, **labels):
    key = (name, tuple(sorted(labels.items())))
    return after.get(key, 0) - before.get(key, 0)


def workload(port):
    """30 messages over 3 sessions: 20 accepted, 6 switched offline, 4 too big."""
    sizes = 0
    for session in range(3):
        with smtplib.SMTP(HOST, port) as smtp:
            for n in range(10):
                index = session * 10 + n
                if index < 20:
                    body = f"Subject: {index}\r\n\r\naccepted\r\n"
                elif index < 26:
                    body = "X-Blackhole-Mode: offline\r\n\r\nrefused\r\n"
                else:
                    body = "Subject: big\r\n\r\n" + "x" * 2500 + "\r\n"
                sizes += len(body)
                smtp.ehlo()
                smtp.mail("a@example.com")
                smtp.rcpt("b@example.com")
                smtp.rcpt("c@example.com")
                smtp.data(body)
    return sizes


@pytest.mark.parametrize("workers", [1, 2])
def test_counters_add_up_exactly_over_workers(daemon, tmp_path, workers):
    metrics_port = free_port()
    process, port = daemon(f"--workers={workers}", f"--metrics_port={metrics_port}",
                           "--message_size_limit=2000")
    wait_for_port(metrics_port, process)
    before = quiet_scrape(metrics_port)
    sizes = workload(port)
    after = scrape(metrics_port)
    assert diff(before, after, "blackhole_messages_total", code="250") == 20
    assert diff(before, after, "blackhole_messages_total", code="521") == 6
    assert diff(before, after, "blackhole_messages_total", code="552") == 4
    assert diff(before, after, "blackhole_message_bytes_total") == sizes
    assert diff(before, after, "blackhole_recipients_total") == 60
    assert diff(before, after, "blackhole_commands_total", verb="MAIL") == 30
    assert diff(before, after, "blackhole_commands_total", verb="DATA") == 30
    assert diff(before, after, "blackhole_commands_total", verb="QUIT") == 3
    assert diff(before, after, "blackhole_replies_total", code="354") == 30
    assert diff(before, after, "blackhole_replies_total", code="220") == 3  # greetings
    assert diff(before, after, "blackhole_connections_opened_total") == 3
    assert diff(before, after, "blackhole_session_duration_seconds_count") == 3
    assert after[("blackhole_connections_active", ())] == 0
    assert after[("blackhole_up", ())] == 1
    assert after[("blackhole_uptime_seconds", ())] > 0
    process.send_signal(signal.SIGTERM)
    process.communicate(timeout=20)
    log = (tmp_path / "blackhole.log").read_text()
    assert re.search(r"Summary: \d+ sessions, 20 messages accepted, "
                     rf"refused by code: 521: 6, 552: 4, {sizes} bytes$", log, re.MULTILINE)


def test_counts_of_a_killed_worker_are_kept(daemon):
    metrics_port = free_port()
    process, port = daemon("--workers=2", f"--metrics_port={metrics_port}")
    wait_for_port(metrics_port, process)
    before = scrape(metrics_port)
    workload(port)
    victim = workers_of(process.pid)[0]
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while len(workers_of(process.pid)) < 2 or victim in workers_of(process.pid):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    workload(port)
    after = scrape(metrics_port)
    assert diff(before, after, "blackhole_messages_total", code="250") == 40
    assert diff(before, after, "blackhole_messages_total", code="554") == 8  # 2,500-octet lines
    assert diff(before, after, "blackhole_messages_total", code="521") == 12
    assert diff(before, after, "blackhole_recipients_total") == 120


def test_connections_of_a_killed_worker_are_no_longer_active(daemon):
    metrics_port = free_port()
    process, port = daemon("--workers=1", f"--metrics_port={metrics_port}")
    wait_for_port(metrics_port, process)
    before = quiet_scrape(metrics_port)
    held = [socket.create_connection((HOST, port), timeout=10) for _ in range(3)]
    try:
        for sock in held:
            sock.recv(1024)  # greeted: counted as open
        assert scrape(metrics_port)[("blackhole_connections_active", ())] == 3
        (victim,) = workers_of(process.pid)
        os.kill(victim, signal.SIGKILL)
        after = scrape(metrics_port)  # answered by its replacement
    finally:
        for sock in held:
            sock.close()
    assert victim not in workers_of(process.pid)
    assert after[("blackhole_connections_active", ())] == 0
    assert diff(before, after, "blackhole_connections_opened_total") == 3


def test_counts_are_kept_off_the_disk(daemon):
    """Nothing the workers' account could plant for the master to read, and
    nothing a killed master leaves behind: the counts are never on disk."""
    temp = Path(tempfile.mkdtemp(prefix="blackhole-tmpdir-"))  # as /tmp, for any account
    temp.chmod(0o1777)
    try:
        run_and_kill_the_master(daemon, temp)
    finally:
        shutil.rmtree(temp)


def run_and_kill_the_master(daemon, temp):
    switch = ("--user=nobody", "--group=nogroup") if os.geteuid() == 0 else ()
    metrics_port = free_port()
    process, port = daemon("--workers=2", f"--metrics_port={metrics_port}", *switch,
                           env={**os.environ, "TMPDIR": str(temp)})
    wait_for_port(metrics_port, process)
    before = scrape(metrics_port)
    workload(port)
    after = scrape(metrics_port)
    assert diff(before, after, "blackhole_messages_total", code="250") == 20
    assert list(temp.iterdir()) == []
    workers = workers_of(process.pid)
    process.kill()
    process.wait(timeout=10)
    deadline = time.monotonic() + 10
    while any(os.path.exists(f"/proc/{pid}") for pid in workers):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert list(temp.iterdir()) == []


def test_the_summary_adds_up_whatever_the_workers_wrote():
    """A worker may write anything into its block: the master still says its last word."""
    blocks = metrics.shared(2)
    blocks[:] = array("Q", [2**64 - 1]) * len(blocks)
    assert metrics.summary(blocks).startswith(f"Summary: {2**65 - 2} sessions, ")
    assert f"blackhole_recipients_total {2**65 - 2}\n" in metrics.exposition(blocks)


def test_tls_handshakes_and_delays_are_counted(daemon):
    metrics_port, ssl_port = free_port(), free_port()
    process, port = daemon(f"--metrics_port={metrics_port}", f"--ssl_port={ssl_port}")
    wait_for_port(metrics_port, process)
    before = scrape(metrics_port)
    insecure = insecure_context()
    with smtplib.SMTP_SSL(HOST, ssl_port, context=insecure) as smtp:
        version = smtp.sock.version()
        smtp.sendmail("a@example.com", ["b@example.com"],
                      "X-Blackhole-Delay: 0.2\r\n\r\nslow\r\n")
    with socket.create_connection((HOST, ssl_port), timeout=10) as garbage:
        garbage.sendall(b"EHLO not-tls\r\n" * 10)
        try:
            while garbage.recv(1024):
                pass
        except ConnectionResetError:
            pass  # closed on us, as it should be
    # Tornado closes a failed handshake's socket before the session counts it.
    deadline = time.monotonic() + 10
    while diff(before, after := scrape(metrics_port),
               "blackhole_tls_handshake_failures_total") < 1:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert diff(before, after, "blackhole_tls_handshakes_total", version=version) == 1
    assert diff(before, after, "blackhole_tls_handshake_failures_total") == 1
    assert diff(before, after, "blackhole_delays_total") == 1
    assert 0.19 <= diff(before, after, "blackhole_delay_seconds_total") <= 0.21


def test_healthz_answers_while_mail_is_accepted(daemon):
    metrics_port = free_port()
    process, _ = daemon(f"--metrics_port={metrics_port}")
    wait_for_port(metrics_port, process)
    with urllib.request.urlopen(f"http://{HOST}:{metrics_port}/healthz", timeout=10) as response:
        assert (response.status, response.read()) == (200, b"OK\n")
        assert response.headers["Content-Type"] == "text/plain; charset=utf-8"


@pytest.mark.parametrize("method, path, status", [
    ("GET", "/nowhere", 404), ("POST", "/metrics", 405), ("HEAD", "/healthz", 405),
])
def test_other_pages_and_methods_are_refused(daemon, method, path, status):
    metrics_port = free_port()
    process, _ = daemon(f"--metrics_port={metrics_port}")
    wait_for_port(metrics_port, process)
    request = urllib.request.Request(f"http://{HOST}:{metrics_port}{path}", method=method,
                                     data=b"{}" if method == "POST" else None)
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)
    with refused.value as answer:
        assert (answer.code, answer.headers["Allow"]) == (status, "GET" if status == 405 else None)


def test_metrics_are_off_by_default(daemon, tmp_path):
    process, _ = daemon()
    process.send_signal(signal.SIGTERM)
    process.communicate(timeout=20)
    assert "Metrics on" not in (tmp_path / "blackhole.log").read_text()


def peak_memory(pid):
    """The most memory ``pid`` has had resident, in octets (Linux VmHWM)."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmHWM for {pid}")


def push(port, head, piece, total):
    """Send a request header, then ``piece`` after ``piece`` of body until ``total``
    octets are sent or the server closes; return the octets sent and its status line."""
    sent = 0
    with socket.create_connection((HOST, port), timeout=5) as sock:
        sock.sendall(head.encode() + b"\r\nHost: x\r\n\r\n")
        try:
            while sent < total:
                sock.sendall(piece)
                sent += len(piece)
        except (BrokenPipeError, ConnectionResetError):
            pass  # closed on us: the answer is waiting
        except TimeoutError:
            pass  # neither read nor closed: there is no answer
        answer = b""
        try:
            while chunk := sock.recv(4096):
                answer += chunk
        except (ConnectionResetError, TimeoutError):
            pass  # reset by the unread body, or never answered: what came is the answer
    return sent, answer.partition(b"\r\n")[0].decode()


MIB = 1024 * 1024
CHUNK = b"%x\r\n" % MIB + b"x" * MIB + b"\r\n"


@pytest.mark.parametrize("head, piece, status", [
    ("POST /metrics HTTP/1.1\r\nContent-Length: 99000000", b"x" * MIB, 413),
    ("PUT /nowhere HTTP/1.1\r\nContent-Length: 99000000", b"x" * MIB, 413),
    ("POST /metrics HTTP/1.1\r\nTransfer-Encoding: chunked", CHUNK, 405),
    ("POST /nowhere HTTP/1.1\r\nTransfer-Encoding: chunked", CHUNK, 404),
], ids=["too-long", "too-long-anywhere", "chunked", "chunked-anywhere"])
def test_a_request_body_is_never_read(daemon, head, piece, status):
    """99 MB sent to the metrics port: answered from the header, the body left unread."""
    metrics_port = free_port()
    process, _ = daemon("--workers=1", f"--metrics_port={metrics_port}")
    wait_for_port(metrics_port, process)
    scrape(metrics_port)  # the worker has served a page: its memory is as it will stay
    (worker,) = workers_of(process.pid)
    before = peak_memory(worker)
    started = time.monotonic()
    sent, answer = push(metrics_port, head, piece, 99_000_000)
    assert answer.startswith(f"HTTP/1.1 {status} ")
    assert sent < 32 * MIB  # what the socket buffers hold, no more
    assert time.monotonic() - started < 5
    assert peak_memory(worker) - before < 4 * MIB


@pytest.mark.parametrize("sent", [b"", b"GET /metrics HTTP/1.1\r\nHost: x\r\n"],
                         ids=["silent", "half-sent"])
def test_a_silent_or_half_sent_request_is_closed(daemon, sent):
    metrics_port = free_port()
    process, _ = daemon(f"--metrics_port={metrics_port}")
    wait_for_port(metrics_port, process)
    with socket.create_connection((HOST, metrics_port), timeout=control.TIMEOUT + 2) as sock:
        sock.sendall(sent)
        started = time.monotonic()
        assert sock.recv(1024) == b""
    assert control.TIMEOUT - 1 < time.monotonic() - started < control.TIMEOUT + 1
