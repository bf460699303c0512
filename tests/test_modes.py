"""Modes and delay over loopback: the end-of-data answer, and waiting without blocking."""

import asyncio
import time

import pytest

from blackhole.policy import MODES
from blackhole.replies import END_OF_DATA


async def send_message(client):
    return await client.message(b"Subject: mode\r\n\r\nbody\r\n.\r\n")


async def answers(connect, port, count):
    """Send ``count`` messages, reconnecting whenever a 421 closes the session."""
    seen = []
    client = None
    while len(seen) < count:
        if client is None:
            client = await connect(port)
            await client.command("EHLO client.example")
        code, text = await send_message(client)
        seen.append((code, text))
        if code == 421:
            assert await client.closed()
            client = None
    return seen


def catalogue_text(code):
    return END_OF_DATA[code].lines[0]


@pytest.mark.gen_test
async def test_accept_mode_answers_250(serve, connect):
    assert await answers(connect, serve(mode="accept"), 5) == [(250, "2.0.0 OK")] * 5


@pytest.mark.gen_test(timeout=60)
async def test_bounce_mode_draws_only_bounce_codes_with_their_texts(serve, connect):
    seen = await answers(connect, serve(mode="bounce"), 200)
    assert {code for code, _ in seen} <= set(MODES["bounce"])
    assert len({code for code, _ in seen}) > 5
    for code, text in seen:
        assert text == catalogue_text(code)


@pytest.mark.gen_test(timeout=60)
async def test_random_mode_mixes_accept_and_bounce(serve, connect):
    seen = await answers(connect, serve(mode="random"), 300)
    codes = {code for code, _ in seen}
    assert codes <= set(MODES["random"])
    assert 250 in codes and codes - {250}


@pytest.mark.gen_test
async def test_unavailable_mode_answers_421_and_closes(serve, connect):
    client = await connect(serve(mode="unavailable"))
    await client.command("EHLO client.example")
    assert await send_message(client) == (
        421, "4.3.2 Service not available, closing transmission channel")
    assert await client.closed()


@pytest.mark.gen_test
async def test_offline_mode_answers_521_and_keeps_the_session(serve, connect):
    client = await connect(serve(mode="offline"))
    await client.command("EHLO client.example")
    assert await send_message(client) == (521, "5.3.2 Machine does not accept mail")
    assert (await client.command("NOOP"))[0] == 250


def test_431_has_a_text():
    assert END_OF_DATA[431].wire == b"431 4.3.1 Not enough space on the disk\r\n"


@pytest.mark.gen_test(timeout=30)
async def test_delay_waits_before_each_reply_without_blocking_others(serve, connect):
    """30 clients, delay=1: all answered in about a second, not thirty."""
    port = serve(delay=1)
    started = time.monotonic()
    clients = await asyncio.gather(*(connect(port) for _ in range(30)))
    greeted = time.monotonic() - started
    assert greeted < 0.9  # the greeting is never delayed

    async def noop(client):
        sent = time.monotonic()
        reply = await client.command("NOOP")
        return reply, time.monotonic() - sent

    started = time.monotonic()
    results = await asyncio.gather(*(noop(client) for client in clients))
    elapsed = time.monotonic() - started
    assert all(reply == (250, "2.0.0 OK") for reply, _ in results)
    assert all(waited >= 0.95 for _, waited in results)
    assert elapsed < 5, f"30 delayed replies took {elapsed:.1f}s: delays are serialised"


@pytest.mark.gen_test(timeout=30)
async def test_a_client_that_leaves_during_a_delay_is_no_error(serve, connect, caplog):
    client = await connect(serve(delay=0.5))
    await client.send(b"EHLO client.example\r\nNOOP\r\nNOOP\r\n")
    client.close()
    await asyncio.sleep(1.7)  # every delay has run out and every reply was tried
    assert not [record for record in caplog.records if record.exc_info]


@pytest.mark.gen_test(timeout=30)
async def test_delay_applies_to_each_pipelined_reply(serve, connect):
    client = await connect(serve(delay=1))
    started = time.monotonic()
    await client.send(b"NOOP\r\nNOOP\r\n")
    await client.reply()
    first = time.monotonic() - started
    await client.reply()
    second = time.monotonic() - started
    assert 0.95 <= first < 1.9 and second >= 1.95
