"""The control API on the metrics port, through the real command: GET, PUT and
DELETE /rules over every worker, GET /stats, who may write, and what is refused."""

import http.client
import json
import os
import signal
import smtplib
import socket
import time

import pytest

from blackhole import control, rulebook
from blackhole.process import workers_of
from tests.conftest import HOST, blackhole, free_port, wait_for_port
from tests.test_metrics import MIB, peak_memory, push


def request(port, method, path, body=None, headers=None, source=None):
    """(status, body text) of one request from ``source`` (127.0.0.1 if None)."""
    connection = http.client.HTTPConnection(HOST, port, timeout=10,
                                            source_address=(source, 0) if source else None)
    try:
        if isinstance(body, (dict, list)):
            body = json.dumps(body)
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, response.read().decode()
    finally:
        connection.close()


def rules(port):
    status, text = request(port, "GET", "/rules")
    assert status == 200
    return json.loads(text)


@pytest.fixture
def controlled(daemon):
    """``controlled(*options)``: a daemon with a metrics port -> (process, smtp port, metrics port)."""
    def start(*options, port=None):
        metrics_port = free_port()
        process, port = daemon("--ssl=False", f"--metrics_port={metrics_port}", *options,
                               port=port)
        wait_for_port(metrics_port, process)
        return process, port, metrics_port
    return start


def serving_worker(process, port, client):
    """The pid of the worker that holds the server side of ``client``'s connection."""
    local = client.getsockname()[1]
    for _ in range(100):  # the worker may not have accepted it yet
        for pid in workers_of(process.pid):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                try:
                    target = os.readlink(f"/proc/{pid}/fd/{fd}")
                except OSError:
                    continue  # closed meanwhile
                if target in _inodes(port, local):
                    return pid
        time.sleep(0.05)
    raise AssertionError(f"no worker holds the connection from port {local}")


def _inodes(port, remote):
    found = set()
    with open("/proc/net/tcp") as rows:
        for row in list(rows)[1:]:
            fields = row.split()
            if (int(fields[1].rpartition(":")[2], 16) == port
                    and int(fields[2].rpartition(":")[2], 16) == remote):
                found.add(f"socket:[{fields[9]}]")
    return found


def connections_to_both(process, port, workers=2):
    """Greeted smtplib clients, at least one on each worker (the kernel spreads them)."""
    clients, served = [], set()
    while len(served) < workers:
        assert len(clients) < 64, "the kernel sent every connection to one worker"
        client = smtplib.SMTP(HOST, port, timeout=10)
        client.ehlo()
        clients.append(client)
        served.add(serving_worker(process, port, client.sock))
    return clients


def mail_code(client):
    code, _ = client.mail("a@example.com")
    client.rset()
    return code


def test_put_reaches_both_workers_on_new_and_open_connections(controlled):
    process, port, metrics_port = controlled("--workers=2")
    assert rules(metrics_port) == {"mode": "accept", "delay": "0", "rules": [], "listeners": {},
                                   "generation": 0}
    held = connections_to_both(process, port)
    try:
        assert {mail_code(client) for client in held} == {250}
        # A message in flight on every connection as the change lands.
        for client in held:
            client.mail("a@example.com")
            client.rcpt("b@example.com")
            client.putcmd("data")
            assert client.getreply()[0] == 354
            client.send(b"Subject: in flight\r\n\r\nfirst half\r\n")
        status, text = request(metrics_port, "PUT", "/rules",
                               {"mode": "offline", "rules": "mail:451, rcpt:550:50%"})
        assert status == 200, text
        changed = json.loads(text)
        assert changed == {"mode": "offline", "delay": "0", "rules": ["mail:451", "rcpt:550:50%"],
                           "listeners": {}, "generation": 1}
        assert rules(metrics_port) == changed
        for client in held:  # answered by the new mode at its end
            client.send(b"second half\r\n.\r\n")
            assert client.getreply()[0] == 521
        assert {mail_code(client) for client in held} == {451}
        fresh = connections_to_both(process, port)
        assert {mail_code(client) for client in fresh} == {451}
        for client in fresh:
            client.close()
        status, text = request(metrics_port, "DELETE", "/rules")
        assert status == 200, text
        assert json.loads(text) == {"mode": "accept", "delay": "0", "rules": [], "listeners": {},
                                    "generation": 2}
        assert {mail_code(client) for client in held} == {250}
        workers = json.loads(request(metrics_port, "GET", "/stats")[1])["workers"]
        assert sorted(worker["pid"] for worker in workers) == sorted(workers_of(process.pid))
        assert {worker["generation"] for worker in workers} == {2}
    finally:
        for client in held:
            client.close()


def test_put_keeps_what_it_leaves_out_and_sets_listeners_own(controlled):
    port, own = free_port(), free_port()
    _, _, metrics_port = controlled("--workers=1", "--delay=0", "--rules=rcpt:452:50%",
        f"--listen=127.0.0.1:{port}, 127.0.0.1:{own} mode=bounce rule=mail:421", port=port)
    address = f"127.0.0.1:{own}"
    assert rules(metrics_port)["listeners"] == {address: {"mode": "bounce", "rules": ["mail:421"]}}
    status, text = request(metrics_port, "PUT", "/rules", {"delay": "0-0.01"})
    assert status == 200, text
    assert json.loads(text)["rules"] == ["rcpt:452:50%"]  # kept
    status, text = request(metrics_port, "PUT", "/rules",
                           {"listeners": {address: {"rules": ["mail:450"], "delay": 0}}})
    assert status == 200, text
    assert json.loads(text) == {"mode": "accept", "delay": "0-0.01", "rules": ["rcpt:452:50%"],
                                "listeners": {address: {"rules": ["mail:450"], "delay": "0"}},
                                "generation": 2}
    with smtplib.SMTP(HOST, own, timeout=10) as client:
        client.ehlo()
        assert mail_code(client) == 450
    request(metrics_port, "PUT", "/rules", {"listeners": {address: {}}})
    with smtplib.SMTP(HOST, own, timeout=10) as client:  # now the global settings
        client.ehlo()
        assert mail_code(client) == 250


BAD = [
    ("not json", "the body is not JSON"),
    ("[1, 2]", "the body must be a JSON object"),
    ("[" * 60000, "the body is not JSON: maximum recursion depth exceeded"),
    (b"\xff{}", "the body is not JSON: 'utf-8' codec can't decode"),
    ({"mode": "accept", "colour": "red"}, 'unknown key "colour"'),
    ({"rules": ["mail:451"], "mode": "sometimes"}, 'mode: "sometimes" is not one of accept'),
    ({"delay": "3-1"}, 'delay: "3-1" is not a string of N or MIN-MAX seconds'),
    ({"delay": True}, "delay: true is not"),
    ({"mode": "bounce", "rules": "rcpt:650"},
     "rules: Invalid rule 'rcpt:650': the code must be 4xx or 5xx"),
    ({"rules": ["mail:451", "nowhere:550"]}, "rules: Invalid rule 'nowhere:550': unknown stage"),
    ({"rules": [451]}, "rules: a list of rule tokens or the --rules text"),
    ({"listeners": {"127.0.0.1:1": {"mode": "bounce"}}}, 'listeners: "127.0.0.1:1" is not a '
                                                         "running listener"),
]


def test_a_bad_put_changes_nothing(controlled):
    process, port, metrics_port = controlled("--workers=2", "--rules=mail:451:50%")
    before = rules(metrics_port)
    for body, reason in BAD:
        status, text = request(metrics_port, "PUT", "/rules",
                               body if isinstance(body, (str, bytes)) else json.dumps(body))
        assert status == 400, body
        assert text.startswith(reason) and text.count("\n") == 1, (body, text)
    assert rules(metrics_port) == before
    with smtplib.SMTP(HOST, port, timeout=10) as client:
        client.ehlo()
        for _ in range(20):  # still 50 % at MAIL, and still the accept mode
            client.rset()
            if client.mail("a@example.com")[0] == 250:
                client.rcpt("b@example.com")
                assert client.data("Subject: x\r\n\r\nx\r\n")[0] == 250
    assert process.poll() is None


def test_writes_only_from_admin_from_or_with_the_token(controlled):
    _, _, metrics_port = controlled("--workers=1", "--admin_from=127.0.0.2/32",
                                    "--admin_token=s3cret")
    change = {"mode": "bounce"}
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic s3cret"}):
        for method in ("PUT", "DELETE"):
            status, text = request(metrics_port, method, "/rules", change, headers)
            assert (status, text.count("\n")) == (403, 1), (method, headers)
    assert rules(metrics_port)["generation"] == 0  # reading is for anyone
    assert request(metrics_port, "GET", "/stats")[0] == 200
    status, _ = request(metrics_port, "PUT", "/rules", change, {"Authorization": "Bearer s3cret"})
    assert status == 200 and rules(metrics_port)["mode"] == "bounce"
    status, _ = request(metrics_port, "DELETE", "/rules", source="127.0.0.2")
    assert status == 200 and rules(metrics_port) == {
        "mode": "accept", "delay": "0", "rules": [], "listeners": {}, "generation": 2}


def test_a_bad_admin_from_is_one_line():
    result = blackhole(f"--host={HOST}", f"--port={free_port()}", "--ssl=False",
                       "--admin_from=127.0.0.1/8,nowhere", "run")
    assert (result.returncode, result.stderr) == (
        1, "blackhole: Invalid value for admin_from: 'nowhere' does not appear to be an IPv4 or "
           "IPv6 network\n")


def test_without_a_token_only_admin_from_may_write(controlled):
    _, _, metrics_port = controlled("--workers=1", "--admin_from=127.0.0.2/32")
    status, _ = request(metrics_port, "PUT", "/rules", {"mode": "bounce"},
                        {"Authorization": "Bearer "})
    assert status == 403


@pytest.mark.parametrize("head, piece, status", [
    ("PUT /rules HTTP/1.1\r\nContent-Length: 99000000", b"x" * MIB, 413),
    (f"PUT /rules HTTP/1.1\r\nContent-Length: {control.MAX_BODY + 1}", b"x" * 4096, 413),
    ("PUT /rules HTTP/1.1\r\nTransfer-Encoding: chunked", b"%x\r\n" % MIB + b"x" * MIB + b"\r\n",
     411),
], ids=["99MB", "64KiB+1", "chunked"])
def test_a_large_put_is_refused_unread(controlled, head, piece, status):
    process, _, metrics_port = controlled("--workers=1")
    rules(metrics_port)  # the worker has served a page: its memory is as it will stay
    (worker,) = workers_of(process.pid)
    before = peak_memory(worker)
    sent, answer = push(metrics_port, head, piece, 99_000_000)
    assert answer.startswith(f"HTTP/1.1 {status} ")
    assert sent < 32 * MIB
    assert peak_memory(worker) - before < 4 * MIB
    assert rules(metrics_port)["generation"] == 0


def test_a_put_of_64_kib_is_read_and_checked(controlled):
    _, _, metrics_port = controlled("--workers=1")
    body = json.dumps({"rules": ["mail:451:50%"] * 4000})
    assert len(body) <= control.MAX_BODY
    status, text = request(metrics_port, "PUT", "/rules", body)
    assert status == 200 and len(json.loads(text)["rules"]) == 4000
    status, text = request(metrics_port, "PUT", "/rules", json.dumps({"rules": "x" * 65000}))
    assert status == 400 and text.startswith("rules: Invalid rule 'xxxx")


def test_a_slow_body_is_dropped_and_stalls_nothing(controlled):
    _, port, metrics_port = controlled("--workers=1")
    with socket.create_connection((HOST, metrics_port), timeout=10) as slow:
        slow.sendall(b"PUT /rules HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
        started = time.monotonic()
        assert rules(metrics_port)["generation"] == 0  # the port answers meanwhile
        with smtplib.SMTP(HOST, port, timeout=10) as client:  # and so does SMTP
            assert client.noop()[0] == 250
        assert slow.recv(1024) == b""  # closed, unanswered
        elapsed = time.monotonic() - started
    assert control.BODY_TIMEOUT - 0.5 < elapsed < control.BODY_TIMEOUT + 2
    assert rules(metrics_port)["generation"] == 0


@pytest.mark.parametrize("method, path, status, allow", [
    ("POST", "/rules", 405, "GET, PUT, DELETE"), ("PUT", "/stats", 405, "GET"),
    ("DELETE", "/metrics", 405, "GET"), ("GET", "/rules/", 404, None),
])
def test_other_methods_and_pages(controlled, method, path, status, allow):
    _, _, metrics_port = controlled("--workers=1")
    connection = http.client.HTTPConnection(HOST, metrics_port, timeout=10)
    connection.request(method, path, body=b"{}" if method != "GET" else None)
    response = connection.getresponse()
    assert (response.status, response.headers["Allow"]) == (status, allow)
    connection.close()


def quiet_stats(metrics_port):
    """GET /stats once the readiness probe's session has been counted and has ended
    (it may wait in the backlog of a worker that is still starting)."""
    deadline = time.monotonic() + 10
    while True:
        stats = json.loads(request(metrics_port, "GET", "/stats")[1])
        if stats["connections_opened"] >= 1 and stats["connections_open"] == 0:
            return stats
        assert time.monotonic() < deadline, stats
        time.sleep(0.05)


def test_stats_counts_what_was_sent(controlled):
    _, port, metrics_port = controlled("--workers=2", "--rules=rcpt:550:50%", "--seed=7")
    before = quiet_stats(metrics_port)
    refused = accepted = 0
    for _ in range(4):
        with smtplib.SMTP(HOST, port, timeout=10) as client:
            client.ehlo()
            for _ in range(5):
                client.mail("a@example.com")
                if client.rcpt("b@example.com")[0] == 550:
                    refused += 1
                    client.rset()
                    continue
                accepted += 1
                client.data("Subject: counted\r\n\r\nhello\r\n")
    after = json.loads(request(metrics_port, "GET", "/stats")[1])
    assert refused and accepted
    assert after["connections_opened"] - before["connections_opened"] == 4
    assert after["connections_open"] == 0
    assert after["messages"]["250"] - before["messages"].get("250", 0) == accepted
    assert after["recipients"] - before["recipients"] == accepted
    assert after["faults"]["rcpt:550"] - before["faults"].get("rcpt:550", 0) == refused
    assert after["octets"] - before["octets"] == accepted * len("Subject: counted\r\n\r\nhello\r\n")
    assert after["tls_sessions"] == 0 and after["uptime_seconds"] > 0
    assert len(after["workers"]) == 2


def test_a_change_waits_for_every_worker_and_names_those_that_lag(controlled):
    process, _, metrics_port = controlled("--workers=2")
    rules(metrics_port)
    laggard = workers_of(process.pid)[0]
    status, text = None, ""
    os.kill(laggard, signal.SIGSTOP)
    try:
        deadline = time.monotonic() + 20
        while status != 503:  # a change taken by the stopped worker never answers
            assert time.monotonic() < deadline
            try:
                status, text = request(metrics_port, "PUT", "/rules", {"mode": "bounce"})
            except OSError:
                status = None
    finally:
        os.kill(laggard, signal.SIGCONT)
    assert text == f"not applied after {rulebook.SETTLE:g} s by worker {laggard}\n"
    deadline = time.monotonic() + 10  # once it runs again, it catches up
    while {w["generation"] for w in json.loads(request(metrics_port, "GET", "/stats")[1])[
            "workers"]} != {rules(metrics_port)["generation"]}:
        assert time.monotonic() < deadline
        time.sleep(0.05)
