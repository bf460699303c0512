"""Metrics through the real command: exact counts over workers, /healthz, the summary line."""

import os
import re
import signal
import smtplib
import socket
import time
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

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


def test_metrics_are_off_by_default(daemon, tmp_path):
    process, _ = daemon()
    process.send_signal(signal.SIGTERM)
    process.communicate(timeout=20)
    assert "Metrics on" not in (tmp_path / "blackhole.log").read_text()
