"""--max_connections and --max_rate: counted over every worker (issue 13, section 4)."""

import concurrent.futures
import copy
import smtplib
import time

import pytest

from blackhole.capacity import Connections, Limits, Rate
from tests.conftest import (HOST, blackhole, free_port, greeted, insecure_context, only_worker,
                            serving_workers, wait_for_port)
from tests.test_cli import one_clear_line
from tests.test_metrics import diff, quiet_scrape, scrape

TOO_MANY = (421, "4.3.2 Too many connections, try again later")


def settled(metrics_port, before, opened, active):
    """Scrape once ``opened`` connections have been accepted since ``before`` and
    ``active`` are open: those tried on a stopped worker are served when it goes on."""
    deadline = time.monotonic() + 10
    while True:
        after = scrape(metrics_port)
        if (diff(before, after, "blackhole_connections_opened_total") == opened
                and after[("blackhole_connections_active", ())] == active):
            return after
        assert time.monotonic() < deadline, (opened, active)
        time.sleep(0.05)


def test_max_connections_counts_over_both_workers(daemon, tmp_path):
    metrics_port = free_port()
    process, port = daemon("--workers=2", "--max_connections=2",
                           f"--metrics_port={metrics_port}")
    wait_for_port(metrics_port, process)
    workers = serving_workers(process, tmp_path / "blackhole.log", 2)
    before = quiet_scrape(metrics_port)
    held, tried = [], 0
    for worker in workers:  # one connection held by each worker
        with only_worker(workers, worker):
            held.append(greeted(port))
        tried += held[-1].tries
        settled(metrics_port, before, tried, len(held))
    assert [client.greeting[0] for client in held] == [220, 220]
    for worker in workers:  # a third is refused, whichever worker takes it
        with only_worker(workers, worker):
            refused = greeted(port)
            assert refused.greeting == TOO_MANY
            assert refused.closed()
            refused.close()
        tried += refused.tries
        settled(metrics_port, before, tried, 2)
    held.pop().close()
    after = settled(metrics_port, before, tried, 1)
    again = greeted(port)  # after one closes, a new one is served
    assert again.greeting[0] == 220
    assert again.command("QUIT")[0] == 221
    for client in [again, *held]:
        client.close()
    refusals = diff(before, after, "blackhole_faults_total", stage="connect", action="421")
    assert refusals >= 2
    assert refusals == diff(before, after, "blackhole_replies_total", code="421")


def test_the_limits_are_announced():
    limits = Limits(2, max_connections=10, max_rate=20, greylist=300)
    assert str(limits) == "10 connections at once, 20 messages a second, greylist 300s"
    assert str(Limits(1, max_rate=5)) == "5 messages a second"


def test_max_connections_on_an_implicit_tls_listener_too(daemon):
    """Plain and TLS connections count together; TLS hears its 421 after the handshake."""
    ssl_port = free_port()
    process, port = daemon("--workers=1", "--max_connections=2", f"--ssl_port={ssl_port}")
    wait_for_port(ssl_port, process)
    insecure = insecure_context()
    plain = smtplib.SMTP(HOST, port, timeout=10)
    secure = smtplib.SMTP_SSL(HOST, ssl_port, context=insecure, timeout=10)
    for connect in (lambda: smtplib.SMTP_SSL(HOST, ssl_port, context=insecure, timeout=10),
                    lambda: smtplib.SMTP(HOST, port, timeout=10)):
        with pytest.raises(smtplib.SMTPConnectError) as refused:
            connect()
        assert (refused.value.smtp_code, refused.value.smtp_error.decode()) == TOO_MANY
    secure.quit()
    deadline = time.monotonic() + 10
    while True:  # the server sees the close a moment later
        try:
            again = smtplib.SMTP_SSL(HOST, ssl_port, context=insecure, timeout=10)
            break
        except smtplib.SMTPConnectError:
            assert time.monotonic() < deadline
            time.sleep(0.05)
    assert again.noop()[0] == 250
    again.quit()
    plain.quit()


RATE = 50  # messages a second


def offer(client, start, offset, interval, seconds):
    """MAIL (then RSET) every ``interval`` seconds from ``start + offset``; (when, code) each."""
    results = []
    for n in range(int(seconds / interval)):
        time.sleep(max(0.0, start + offset + n * interval - time.monotonic()))
        when = time.monotonic() - start
        client.sock.sendall(b"MAIL FROM:<a@example.com>\r\nRSET\r\n")
        results.append((when, client.reply()[0]))
        assert client.reply()[0] == 250
    return results


def test_max_rate_holds_over_both_workers(daemon, tmp_path):
    """Clients offering twice the rate: the MAILs accepted over 6 s, after a 1 s
    warm-up, are within 15 % of the rate times 6."""
    metrics_port = free_port()
    process, port = daemon("--workers=2", f"--max_rate={RATE}", f"--metrics_port={metrics_port}")
    wait_for_port(metrics_port, process)
    workers = serving_workers(process, tmp_path / "blackhole.log", 2)
    clients = []
    for worker in workers:  # two clients on each worker
        with only_worker(workers, worker):
            clients += [greeted(port), greeted(port)]
    for client in clients:
        assert client.command("EHLO client.example")[0] == 250
    before = scrape(metrics_port)
    interval = len(clients) / (2 * RATE)  # each client's share of twice the rate
    start = time.monotonic() + 0.2
    with concurrent.futures.ThreadPoolExecutor(len(clients)) as pool:
        runs = [pool.submit(offer, client, start, index * interval / len(clients), interval, 7)
                for index, client in enumerate(clients)]
        results = [answer for run in runs for answer in run.result()]
    after = scrape(metrics_port)
    for client in clients:
        client.close()
    measured = [code for when, code in results if 1 <= when < 7]
    assert len(measured) >= 1.5 * RATE * 6  # the clients did offer about twice the rate
    assert abs(measured.count(250) - RATE * 6) <= 0.15 * RATE * 6, measured.count(250)
    assert set(measured) == {250, 450}
    refused = [code for _, code in results].count(450)
    assert diff(before, after, "blackhole_faults_total", stage="mail", action="450") == refused


class Clock:
    """The one thing mocked: the time."""

    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def worker_views(limit, workers=2):
    """The same shared slots as each forked worker sees them."""
    first = limit
    others = [copy.copy(first) for _ in range(workers - 1)]
    for task, view in enumerate([first, *others]):
        view.count_in(task)
    return [first, *others]


def test_the_rate_adds_up_every_worker_and_only_accepted_mails():
    clock = Clock()
    first, second = worker_views(Rate(3, 2, clock=clock))
    first.take()
    second.take()
    assert not first.full() and not second.full()
    second.take()
    assert first.full() and second.full()
    for _ in range(10):  # refusals take nothing
        assert first.full()
    clock.now += 0.95
    assert first.full()  # within the second
    clock.now += 0.1
    assert not first.full() and not second.full()  # a second later


def test_places_add_up_every_worker_and_come_back():
    first, second = worker_views(Connections(2, 2))
    a, b, c = object(), object(), object()
    assert first.admit(a) and second.admit(b)
    assert not first.admit(c) and not second.admit(c)
    first.release(c)  # never admitted: nothing to give back
    assert not second.admit(c)
    first.release(a)
    assert second.admit(c)


@pytest.mark.gen_test
async def test_no_tag_or_rule_passes_a_limit_and_a_refused_mail_starts_nothing(serve, connect):
    port = serve(limits=Limits(1, max_connections=1, max_rate=1), rules="connect:ok:delay=0")
    client = await connect(port)
    assert client.greeting[0] == 220
    second = await connect(port)  # a connect rule cannot let it in
    assert second.greeting == TOO_MANY and await second.closed()
    await client.command("EHLO client.example")
    assert (await client.command("MAIL FROM:<a@example.com>"))[0] == 250
    await client.command("RSET")
    assert await client.command("MAIL FROM:<mail-ok@example.com>") == (
        450, "4.7.1 Too much mail, try again later")
    assert await client.command("RCPT TO:<b@example.com>") == (503, "5.5.1 Need MAIL before RCPT")


@pytest.mark.parametrize("args, message", [
    (["--max_connections=-1"], "Option max_connections must be at least 0, not -1"),
    (["--max_rate=fast"], "Invalid value for max_rate: 'fast' is not an integer"),
    (["--max_rate=-3"], "Option max_rate must be at least 0, not -3"),
    (["--greylist=-5"], "Option greylist must be at least 0, not -5"),
    (["--greylist=1.5"], "Invalid value for greylist: '1.5' is not an integer"),
])
def test_bad_values_get_one_line_and_exit_1(args, message):
    result = blackhole(f"--host={HOST}", f"--port={free_port()}", f"--ssl_port={free_port()}",
                       *args, "run")
    assert result.returncode == 1
    assert one_clear_line(result) == f"blackhole: {message}"


def test_a_bad_value_in_the_config_file_too(tmp_path):
    conf = tmp_path / "blackhole.conf"
    conf.write_text("greylist=-1\n")
    result = blackhole(f"--conf={conf}", f"--host={HOST}", f"--port={free_port()}",
                       f"--ssl_port={free_port()}", "run")
    assert result.returncode == 1
    assert one_clear_line(result) == "blackhole: Option greylist must be at least 0, not -1"
