"""--greylist: 451 to a triplet's first RCPT, shared by every worker (issue 13, section 4)."""

import asyncio
import re
import time

import pytest
from tornado.tcpclient import TCPClient

from blackhole.capacity import DAY, WAYS, Greylist, Limits
from tests.conftest import (HOST, Client, free_port, greeted, only_worker, serving_workers,
                            wait_for_port)
from tests.test_logging import stopped_log
from tests.test_metrics import diff, quiet_scrape, scrape

GREYLISTED = re.compile(r"4\.7\.1 Greylisted, try again in (\d+) seconds")


def seconds_left(reply):
    code, text = reply
    match = GREYLISTED.fullmatch(text)
    assert code == 451 and match, reply
    return int(match.group(1))


def envelope(client, sender="<alice@example.com>", recipient="<bob@example.org>"):
    assert client.command("EHLO client.example")[0] == 250
    assert client.command(f"MAIL FROM:{sender}")[0] == 250
    return client.command(f"RCPT TO:{recipient}")


def test_a_retry_passes_after_the_wait_on_the_other_worker(daemon, tmp_path):
    metrics_port = free_port()
    process, port = daemon("--workers=2", "--greylist=2", "--debug",
                           f"--metrics_port={metrics_port}")
    wait_for_port(metrics_port, process)
    workers = serving_workers(process, tmp_path / "blackhole.log", 2)
    before = quiet_scrape(metrics_port)
    with only_worker(workers, workers[0]):  # whatever is greeted now is the first's
        first, last = greeted(port), greeted(port)
    with only_worker(workers, workers[1]):
        retry = greeted(port)
    assert seconds_left(envelope(first)) == 2
    seen = time.monotonic()  # the server has recorded the triplet by now
    time.sleep(1.0)
    assert seconds_left(envelope(retry)) == 1  # on the other worker: the clock runs on
    time.sleep(max(0.0, seen + 2.1 - time.monotonic()))
    assert retry.command("RCPT TO:<bob@example.org>") == (250, "2.1.5 OK")
    assert retry.command("RCPT TO:<BOB@example.org>") == (250, "2.1.5 OK")  # any case
    assert retry.command("RCPT TO:<carol@example.org>")[0] == 451  # a triplet of its own
    assert envelope(last) == (250, "2.1.5 OK")  # and it stays accepted, everywhere
    for client in (first, retry, last):
        assert client.command("QUIT")[0] == 221
        client.close()
    after = scrape(metrics_port)
    assert diff(before, after, "blackhole_faults_total", stage="rcpt", action="451") == 3
    assert diff(before, after, "blackhole_recipients_total") == 3
    log = stopped_log(process, tmp_path)
    assert any(line.endswith(" - Limits: greylist 2s") for line in log)
    limits = [index for index, line in enumerate(log) if line.endswith("LIMIT: greylist")]
    assert len(limits) == 3
    for index in limits:  # the SEND line follows its LIMIT line
        assert re.search(r"\] SEND: 451 4\.7\.1 Greylisted, try again in \d seconds$",
                         log[index + 1])


@pytest.mark.gen_test(timeout=20)
async def test_the_null_sender_and_the_client_address_count(serve):
    port = serve(limits=Limits(1, greylist=1))
    here = await Client.connect(port)
    await here.command("EHLO client.example")
    await here.command("MAIL FROM:<>")
    assert await here.command("RCPT TO:<bob@example.org>") == (
        451, "4.7.1 Greylisted, try again in 1 seconds")
    await here.command("RSET")
    await here.command("MAIL FROM:<alice@example.com>")  # another triplet
    assert (await here.command("RCPT TO:<bob@example.org>"))[0] == 451
    await asyncio.sleep(1.1)
    elsewhere = Client(await TCPClient().connect(HOST, port, source_ip="127.0.0.2"))
    await elsewhere.reply()  # another client address: another triplet
    await elsewhere.command("EHLO client.example")
    await elsewhere.command("MAIL FROM:<>")
    assert (await elsewhere.command("RCPT TO:<bob@example.org>"))[0] == 451
    await here.command("RSET")
    await here.command("MAIL FROM:<>")
    assert await here.command("RCPT TO:<bob@example.org>") == (250, "2.1.5 OK")
    here.close()
    elsewhere.close()


@pytest.mark.gen_test(timeout=20)
async def test_tags_and_rules_cannot_pass_it_and_a_greylisted_rcpt_adds_nothing(serve,
                                                                                connect):
    port = serve(limits=Limits(1, greylist=1), rules="rcpt:550")
    client = await connect(port)
    await client.command("EHLO client.example")
    await client.command("MAIL FROM:<alice@example.com>")
    assert (await client.command("RCPT TO:<bob+rcpt-ok@example.org>"))[0] == 451
    assert (await client.command("RCPT TO:<carol@example.org>"))[0] == 451  # not the rule's 550
    assert await client.command("DATA") == (503, "5.5.1 Need RCPT before DATA")
    await asyncio.sleep(1.1)
    # Past the greylist, the tag beats the rule as it always does, and the rule
    # answers the rest.
    assert await client.command("RCPT TO:<bob+rcpt-ok@example.org>") == (250, "2.1.5 OK")
    assert (await client.command("RCPT TO:<carol@example.org>"))[0] == 550


class Clock:
    """The one thing mocked: the time, so that a day passes at once."""

    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_an_accepted_triplet_stays_accepted_for_a_day():
    clock = Clock()
    table = Greylist(300, clock=clock)
    triplet = ("192.0.2.1", "alice@example.com", "bob@example.org")
    assert table.wait(*triplet) == 300
    clock.now += 299.5
    assert table.wait(*triplet) == 1  # rounded up
    clock.now += 0.5
    assert table.wait(*triplet) == 0  # passed: the day starts now
    clock.now += DAY - 1
    assert table.wait(*triplet) == 0
    clock.now += 1
    assert table.wait(*triplet) == 300  # a day later it is new again


def test_the_oldest_triplet_is_forgotten_first():
    clock = Clock()
    table = Greylist(60, triplets=WAYS, clock=clock)  # one set: every triplet shares it
    triplets = [("192.0.2.1", "alice@example.com", f"r{n}@example.org") for n in range(WAYS)]
    for triplet in triplets:
        assert table.wait(*triplet) == 60
        clock.now += 1
    assert table.wait(*triplets[0]) == 60 - WAYS  # all remembered
    assert table.wait("192.0.2.1", "alice@example.com", "new@example.org") == 60
    assert table.wait(*triplets[1]) == 60 - WAYS + 1  # still remembered
    assert table.wait(*triplets[0]) == 60  # forgotten: the oldest made room

