"""Clients that hold connections without making progress, and running out of descriptors.

The daemon runs as a real process under a small descriptor limit; the
attackers are real connections over loopback, bounded in number and time.
"""

import asyncio
import os
import resource
import smtplib
import socket
import time

import pytest

from blackhole.process import workers_of
from tests.conftest import HOST, Client, free_port

ENVELOPE = b"EHLO a.example\r\nMAIL FROM:<a@a.example>\r\nRCPT TO:<b@b.example>\r\nDATA\r\n"


async def trickle_until_answered(client, interval):
    """One octet of message data every ``interval`` seconds until the server speaks."""
    reply = asyncio.ensure_future(client.reply())
    started = time.monotonic()
    while not reply.done():
        await client.send(b"x")
        await asyncio.wait([reply], timeout=interval)
    return reply.result(), time.monotonic() - started


@pytest.mark.gen_test(timeout=20)
async def test_under_pressure_trickled_data_does_not_hold_off_the_timeout(serve):
    port = serve(timeout=2, max_connections=4)  # pressure from three sessions on
    tricklers = [await Client.connect(port) for _ in range(3)]
    for client in tricklers:
        await client.command("EHLO a.example")
        await client.start_data()
    answers = await asyncio.gather(*(trickle_until_answered(client, 0.25)
                                     for client in tricklers))
    for reply, waited in answers:
        assert reply == (421, "4.4.2 Error: timeout exceeded, closing connection")
        assert 1.9 < waited < 4  # the timeout, as if nothing had been sent
    for client in tricklers:
        assert await client.closed()


@pytest.mark.gen_test(timeout=20)
async def test_under_pressure_noop_does_not_hold_off_the_timeout(serve):
    port = serve(timeout=2, max_connections=4)
    clients = [await Client.connect(port) for _ in range(3)]

    async def noop_until_closed(client):
        started = time.monotonic()
        while True:
            reply = await client.command("NOOP")
            if reply[0] != 250:
                return reply, time.monotonic() - started
            await asyncio.sleep(0.25)

    for reply, waited in await asyncio.gather(*map(noop_until_closed, clients)):
        assert reply == (421, "4.4.2 Error: timeout exceeded, closing connection")
        assert 1.5 < waited < 4


@pytest.mark.gen_test(timeout=20)
async def test_at_the_cap_the_stalest_client_makes_room(serve):
    port = serve(timeout=60, max_connections=2)
    stalest = await Client.connect(port)
    await asyncio.sleep(0.5)
    stale = await Client.connect(port)
    await asyncio.sleep(1.6)  # both idle over a second, and the sweep has listed them
    newcomer = await Client.connect(port)
    assert newcomer.greeting[0] == 220
    assert await stalest.reply() == (
        421, "4.4.2 Too busy to wait for an idle client, closing connection")
    assert await stalest.closed()
    # A NOOP is no progress: the next newcomer takes the other stale one's place.
    assert await stale.command("NOOP") == (250, "2.0.0 OK")
    second = await Client.connect(port)
    assert second.greeting[0] == 220
    assert (await stale.reply())[0] == 421
    refused = await Client.connect(port)  # no one has kept us waiting a second
    assert refused.greeting == (421, "4.3.2 Too many connections, try again later")
    for client in (stale, newcomer, second, refused):
        client.close()


@pytest.mark.gen_test(timeout=20)
async def test_without_pressure_trickled_data_is_activity(serve):
    trickler = await Client.connect(serve(timeout=1, max_connections=100))
    await trickler.command("EHLO a.example")
    await trickler.start_data()
    for _ in range(10):  # 2.5 s, well past the timeout
        await trickler.send(b"x")
        await asyncio.sleep(0.25)
    await trickler.send(b"\r\n.\r\n")
    assert await trickler.reply() == (250, "2.0.0 OK")  # the same session, still open
    trickler.close()


async def trickler(port, stop, holding, evicted):
    """A hostile client: DATA, then an octet every 2 s; back 1 s after any close."""
    while not stop.is_set():
        writer = None
        try:
            reader, writer = await asyncio.open_connection(HOST, port)
            if (await reader.readline()).startswith(b"220"):
                writer.write(ENVELOPE)
                while not (line := await reader.readline()).startswith(b"354"):
                    if not line:  # closed before DATA: readline would return b"" forever
                        raise ConnectionError("closed before DATA")
                holding.add(writer)
                answer = asyncio.ensure_future(reader.readline())
                while not (stop.is_set() or answer.done()):
                    writer.write(b"x")
                    await asyncio.wait([answer], timeout=2)
                if answer.done():
                    evicted.append(answer.result())  # a 421, or the close
                else:
                    answer.cancel()
        except OSError:
            pass  # refused or reset: try again, as an attacker would
        finally:
            if writer is not None:
                holding.discard(writer)
                writer.close()
        await asyncio.sleep(1)


def honest_delivery(port, deadline):
    """smtplib sends one message, retrying after a 421 as a real sender does."""
    while True:
        try:
            with smtplib.SMTP(HOST, port, timeout=10) as smtp:
                return smtp.sendmail("a@honest.example", ["b@honest.example"], b"Hi\r\n")
        except (smtplib.SMTPConnectError, smtplib.SMTPServerDisconnected):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def test_tricklers_cannot_lock_out_an_honest_client(daemon):
    # 160 descriptors: about 125 connections for the worker, and 200 attackers.
    _, port = daemon("--workers=1", "--ssl=False", "--timeout=60", files=160)

    async def attack_and_deliver():
        stop, holding, evicted = asyncio.Event(), set(), []
        attackers = [asyncio.ensure_future(trickler(port, stop, holding, evicted))
                     for _ in range(200)]
        await asyncio.sleep(3)  # the server is full of tricklers
        full = len(holding)
        started = time.monotonic()
        refused = await asyncio.get_running_loop().run_in_executor(
            None, honest_delivery, port, started + 10)
        served_in = time.monotonic() - started
        still_holding = len(holding)
        stop.set()
        await asyncio.wait(attackers, timeout=5)
        return full, refused, served_in, still_holding, evicted

    loop = asyncio.new_event_loop()  # not asyncio.run, which unsets the tests' loop
    try:
        full, refused, served_in, still_holding, evicted = loop.run_until_complete(
            attack_and_deliver())
    finally:
        loop.close()
    assert full > 100 and still_holding > 100  # the server was full throughout
    assert refused == {} and served_in < 10
    assert b"421 4.4.2 Too busy to wait for an idle client, closing connection\r\n" in evicted


def worker_of(process, port):
    """The pid of the worker serving ``port`` once it has greeted a client."""
    with socket.create_connection((HOST, port), timeout=10) as probe:
        assert probe.recv(100).startswith(b"220")
    (worker,) = workers_of(process.pid)
    return worker


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_out_of_descriptors_costs_no_cpu_and_a_line_a_second(daemon, tmp_path):
    process, port = daemon("--workers=1", "--ssl=False")
    worker = worker_of(process, port)
    held = len(os.listdir(f"/proc/{worker}/fd"))
    limits = resource.prlimit(worker, resource.RLIMIT_NOFILE)
    resource.prlimit(worker, resource.RLIMIT_NOFILE, (held, limits[1]))  # none to spare
    waiting = [socket.create_connection((HOST, port), timeout=10) for _ in range(20)]
    used = cpu_seconds(worker)
    time.sleep(3)
    assert cpu_seconds(worker) - used < 0.3
    log = (tmp_path / "blackhole.log").read_text()
    assert 1 <= log.count("Out of descriptors (Too many open files)") <= 4
    assert "Traceback" not in log
    resource.prlimit(worker, resource.RLIMIT_NOFILE, limits)
    for client in waiting:  # they waited in the backlog, and are served now
        assert client.recv(100).startswith(b"220")
        client.close()


def listening_inodes(*ports):
    """The inodes of the sockets listening on ``ports`` (Linux /proc/net)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as rows:
            for row in list(rows)[1:]:
                fields = row.split()
                if fields[3] == "0A" and int(fields[1].rpartition(":")[2], 16) in ports:
                    inodes.add(f"socket:[{fields[9]}]")
    return inodes


def listening_sockets_held(pid, inodes):
    held = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            held += os.readlink(f"/proc/{pid}/fd/{fd}") in inodes
        except OSError:
            pass  # closed meanwhile
    return held


def test_each_worker_holds_only_its_own_listening_sockets(daemon):
    ssl_port = free_port()
    process, port = daemon("--workers=3", f"--ssl_port={ssl_port}")
    inodes = listening_inodes(port, ssl_port)
    assert len(inodes) == 6  # three workers, each with one socket per port
    deadline = time.monotonic() + 15
    while True:
        workers = workers_of(process.pid)
        held = [listening_sockets_held(pid, inodes) for pid in workers]
        if (len(workers), held) == (3, [2, 2, 2]) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert held == [2, 2, 2]


def test_idle_metrics_connections_cannot_use_up_the_smtp_descriptors(daemon, tmp_path):
    scrape = free_port()
    process, port = daemon("--workers=1", "--ssl=False", f"--metrics_port={scrape}",
                           "--metrics_host=127.0.0.1", files=128)
    worker = worker_of(process, port)
    idle = [socket.create_connection((HOST, scrape), timeout=10) for _ in range(100)]
    smtp = [socket.create_connection((HOST, port), timeout=10) for _ in range(100)]
    used = cpu_seconds(worker)
    greetings = [client.recv(100)[:3] for client in smtp]
    # Every client had an answer at once: served while the budget lasted, then 421.
    assert greetings.count(b"220") > 40
    assert greetings.count(b"220") + greetings.count(b"421") == len(smtp)
    time.sleep(1)
    assert cpu_seconds(worker) - used < 0.3
    log = (tmp_path / "blackhole.log").read_text()
    assert "Out of descriptors" not in log and "Traceback" not in log
    for client in idle + smtp:
        client.close()
