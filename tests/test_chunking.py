"""CHUNKING (RFC 3030) over loopback: BDAT reads exactly its chunk, answered once per chunk."""

import pytest

ENVELOPE = b"EHLO client.example\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\n"


async def envelope(client):
    await client.send(ENVELOPE)
    await client.replies(3)


@pytest.mark.gen_test
async def test_bdat_last_takes_dots_and_crlf_as_plain_octets(connect):
    client = await connect()
    await envelope(client)
    content = b"Subject: chunk\r\n\r\nline\r\n.\r\nMAIL FROM:<x@y>\r\n"
    await client.send(b"BDAT %d LAST\r\n" % len(content) + content + b"NOOP\r\n")
    assert await client.replies(2) == [(250, "2.0.0 OK"), (250, "2.0.0 OK")]


@pytest.mark.gen_test
async def test_pipelined_chunks_are_answered_in_order(connect):
    client = await connect()
    await envelope(client)
    await client.send(b"BDAT 5\r\n12345BDAT 0\r\nBDAT 3 LAST\r\nabcMAIL FROM:<a@example.com>\r\n")
    assert await client.replies(4) == [
        (250, "2.0.0 5 octets received"), (250, "2.0.0 0 octets received"),
        (250, "2.0.0 OK"), (250, "2.1.0 OK")]


@pytest.mark.gen_test
async def test_a_refused_chunk_is_still_read_whole(connect):
    client = await connect()
    await client.command("EHLO client.example")
    await client.send(b"BDAT 8\r\nNOOPNOOPNOOP\r\n")  # no transaction: refused, 8 octets eaten
    assert await client.replies(2) == [(503, "5.5.1 Need MAIL before BDAT"), (250, "2.0.0 OK")]
    await client.command("MAIL FROM:<a@example.com>")
    await client.send(b"BDAT 4 LAST\r\nRSETNOOP\r\n")
    assert await client.replies(2) == [(503, "5.5.1 Need RCPT before BDAT"), (250, "2.0.0 OK")]
    # The refused chunk did not make this a BDAT transaction: DATA is still fine.
    await client.command("RCPT TO:<b@example.com>")
    assert (await client.command("DATA"))[0] == 354


@pytest.mark.gen_test
async def test_size_limit_counts_every_chunk(serve, connect):
    client = await connect(serve(message_size_limit=10))
    await envelope(client)
    await client.send(b"BDAT 6\r\n123456BDAT 6\r\n123456BDAT 1 LAST\r\nx")
    assert await client.replies(3) == [
        (250, "2.0.0 6 octets received"),
        (552, "5.3.4 Message size exceeds fixed maximum message size"),
        (503, "5.5.1 Need MAIL before BDAT")]
    await client.send(b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\n"
                      b"BDAT 10 LAST\r\n0123456789")
    assert [code for code, _ in await client.replies(3)] == [250, 250, 250]


@pytest.mark.gen_test
async def test_data_and_bdat_do_not_mix(connect):
    client = await connect()
    await envelope(client)
    await client.send(b"BDAT 3\r\nabc")
    await client.reply()
    assert await client.command("DATA") == (503, "5.5.1 DATA not allowed after BDAT")
    await client.command("RSET")
    await client.command("MAIL FROM:<a@example.com> BODY=BINARYMIME")
    await client.command("RCPT TO:<b@example.com>")
    assert await client.command("DATA") == (503, "5.5.1 BODY=BINARYMIME needs BDAT")
    await client.send(b"BDAT 2 LAST\r\n\x00\xff")
    assert await client.reply() == (250, "2.0.0 OK")


@pytest.mark.gen_test
async def test_bad_bdat_syntax(connect):
    client = await connect()
    await envelope(client)
    for line in ("BDAT", "BDAT x", "BDAT 5 NEXT", "BDAT -1"):
        assert await client.command(line) == (501, "5.5.4 Syntax: BDAT size [LAST]")


@pytest.mark.gen_test
async def test_mode_and_switches_decide_the_last_chunk(serve, connect):
    client = await connect(serve(mode="offline"))
    await envelope(client)
    await client.send(b"BDAT 4\r\nbodyBDAT 0 LAST\r\n")
    assert [code for code, _ in await client.replies(2)] == [250, 521]
    other = await connect()
    await envelope(other)
    head = b"X-Blackhole-Mode: unavailable\r\n"
    await other.send(b"BDAT %d\r\n" % len(head) + head + b"BDAT 6 LAST\r\n\r\nbody")
    assert [code for code, _ in await other.replies(2)] == [250, 421]
    assert await other.closed()
