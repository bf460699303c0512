"""Hostile input over loopback: long lines, endless lines, bad bytes, too many errors, idling."""

import asyncio
import select
import smtplib
import socket
import struct
import time

import pytest

from tests.conftest import HOST, Client, in_thread


async def until(check, seconds=10):
    """Let the server's loop run until ``check()`` is true."""
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


@pytest.mark.gen_test
async def test_command_line_over_512_octets_is_refused(connect):
    client = await connect()
    assert await client.command("NOOP " + "x" * 510) == (500, "5.5.2 Line too long")
    assert (await client.command("NOOP " + "x" * 505))[0] == 250  # 512 with CRLF


@pytest.mark.gen_test
async def test_mail_and_rcpt_get_the_extension_allowances(connect):
    client = await connect()
    await client.command("EHLO client.example")
    path = f"<{'a' * 64}@{'d' * 181}.example>"
    assert len(path) == 256  # the longest path RFC 5321 4.5.3.1.3 allows
    assert (await client.command(
        f"MAIL FROM:{path} SIZE=100 SMTPUTF8 BODY=8BITMIME ENVID={'E' * 100} RET=FULL"
    ))[0] == 250
    rcpt = f"RCPT TO:{path} NOTIFY=SUCCESS,FAILURE,DELAY ORCPT=rfc822;{'o' * 400}"
    assert 512 < len(rcpt) + 2 <= 512 + 510
    assert (await client.command(rcpt))[0] == 250
    assert (await client.command("MAIL FROM:<a@example.com> ENVID=" + "E" * 700)) == (
        500, "5.5.2 Line too long")


@pytest.mark.gen_test(timeout=60)
async def test_an_endless_line_is_answered_and_bothers_no_one_else(connect):
    flooder, other = await connect(), await connect()

    async def flood():
        for _ in range(16):  # 16 MiB, no newline
            await flooder.send(b"X" * (1024 * 1024))
        return await flooder.reply()

    async def transaction():
        await other.command("EHLO other.example")
        return await other.message(b"hello\r\n.\r\n")

    flooded, accepted = await asyncio.gather(flood(), transaction())
    assert flooded == (500, "5.5.2 Line too long")
    assert accepted == (250, "2.0.0 OK")
    # The flooder's line is dropped up to its newline, then it is heard again.
    await flooder.send(b"Y" * (1024 * 1024) + b"\r\n")
    assert await flooder.command("NOOP") == (250, "2.0.0 OK")


@pytest.mark.gen_test
@pytest.mark.parametrize("line", [b"NOOP \x00\r\n", b"\x00\r\n", b"EHLO \xff\xfe\r\n",
                                  b"MAIL FROM:<\xc3(@example.com>\r\n"])
async def test_nul_and_undecodable_bytes_get_an_error(connect, line):
    client = await connect()
    await client.send(line)
    assert await client.reply() == (500, "5.5.2 Command contains NUL or is not valid UTF-8")
    assert (await client.command("EHLO client.example"))[0] == 250


@pytest.mark.gen_test
async def test_too_many_recipients_get_452(serve, connect):
    client = await connect(serve(max_recipients=3))
    await client.command("EHLO client.example")
    await client.command("MAIL FROM:<a@example.com>")
    for n in range(3):
        assert (await client.command(f"RCPT TO:<r{n}@example.com>"))[0] == 250
    assert await client.command("RCPT TO:<r4@example.com>") == (452, "4.5.3 Too many recipients")
    assert (await client.command("DATA"))[0] == 354
    await client.send(b"x\r\n.\r\n")
    assert (await client.reply())[0] == 250
    await client.command("MAIL FROM:<a@example.com>")
    assert (await client.command("RCPT TO:<again@example.com>"))[0] == 250


@pytest.mark.gen_test
async def test_ten_bad_commands_end_the_session(connect):
    client = await connect()
    for _ in range(9):
        assert (await client.command("BOGUS"))[0] == 500
    assert await client.command("BOGUS") == (421, "4.7.0 Too many errors, closing connection")
    assert await client.closed()


@pytest.mark.gen_test
async def test_good_commands_do_not_count_as_errors(connect):
    client = await connect()
    for _ in range(20):
        await client.command("NOOP")
    for _ in range(9):
        assert (await client.command("MAIL FROM:<a@example.com>"))[0] == 503
    assert (await client.command("NOOP"))[0] == 250


@pytest.mark.gen_test(timeout=20)
async def test_idle_client_gets_421_timeout_and_is_closed(serve, connect):
    client = await connect(serve(timeout=1))
    started = time.monotonic()
    code, text = await client.reply()
    waited = time.monotonic() - started
    assert (code, text) == (421, "4.4.2 Error: timeout exceeded, closing connection")
    assert 0.8 < waited < 5
    assert await client.closed()


@pytest.mark.gen_test(timeout=20)
async def test_active_client_is_not_timed_out(serve):
    port = serve(timeout=1)

    def chatty():
        with smtplib.SMTP(HOST, port) as smtp:
            replies = []
            for _ in range(6):
                time.sleep(0.4)
                replies.append(smtp.noop()[0])
            return replies

    assert await in_thread(chatty) == [250] * 6


@pytest.mark.gen_test(timeout=20)
async def test_a_byte_at_a_time_does_not_hold_off_the_timeout(serve, connect):
    """Slowloris: only whole commands count as activity, so the clock is not reset."""
    client = await connect(serve(timeout=1))
    started = time.monotonic()
    for byte in b"NOOP":  # one byte every 0.25 s, the last at 0.75 s
        await client.send(bytes([byte]))
        await asyncio.sleep(0.25)
    assert (await client.reply())[0] == 421
    assert time.monotonic() - started < 1.5  # a reset clock would wait until 1.75 s


@pytest.mark.gen_test(timeout=20)
async def test_a_timeout_that_meets_a_reset_connection_harms_no_one_else(smtp_server):
    """The 421 is written to a connection the client reset before the loop saw it."""
    server, port = smtp_server(timeout=1)
    reset = socket.create_connection((HOST, port), timeout=5)
    reset.setblocking(False)  # a blocking recv here would stop the very loop that greets
    await until(lambda: select.select([reset], [], [], 0)[0])
    assert reset.recv(100).startswith(b"220 ")
    reset.setblocking(True)
    (state,) = server.sessions
    reset.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    reset.close()  # an RST, which the server's loop has not polled for yet
    state.check_idle(asyncio.get_running_loop().time() + 60)  # what the sweep does
    assert not server.sessions
    other = await Client.connect(port)  # it may well get the same descriptor
    assert await other.command("NOOP") == (250, "2.0.0 OK")
    assert (await other.reply())[0] == 421  # and the sweep still times it out
    assert await other.closed()


@pytest.mark.gen_test
@pytest.mark.parametrize("verb", ["QUıT", "RſET", "ＮＯＯＰ"])
async def test_non_ascii_lookalike_verbs_are_unknown(connect, verb):
    client = await connect()
    assert await client.command(verb) == (500, "5.5.1 Command not recognized")
    assert (await client.command("NOOP"))[0] == 250


@pytest.mark.gen_test
async def test_connections_over_the_cap_get_421(smtp_server, connect):
    server, port = smtp_server(max_connections=2)
    first, second = await connect(port), await connect(port)
    refused = await Client.connect(port)
    assert refused.greeting == (421, "4.3.2 Too many connections, try again later")
    assert await refused.closed()
    assert (await first.command("NOOP"))[0] == 250
    await second.command("QUIT")
    await second.closed()
    await until(lambda: len(server.sessions) < 2)  # the server has seen it go
    assert (await connect(port)).greeting[0] == 220


def test_a_client_that_never_reads_cannot_pile_up_replies(daemon):
    """Pipelined HELPs from 20 clients that never read: replies wait, memory does not grow."""
    import socket
    from tests.test_data import rss_kib

    process, port = daemon()
    before = rss_kib(process.pid)
    flood = b"HELP\r\n" * (1024 * 1024 // 6)  # ~175,000 commands, ~17 MB of replies
    floods = [socket.create_connection((HOST, port)) for _ in range(20)]
    try:
        for sock in floods:
            sock.settimeout(0.5)
            try:
                sock.sendall(flood)
            except TimeoutError:
                pass  # the server stopped reading: that is the point
        time.sleep(0.5)
        grown = rss_kib(process.pid) - before
        with smtplib.SMTP(HOST, port, timeout=5) as smtp:
            assert smtp.noop()[0] == 250
    finally:
        for sock in floods:
            sock.close()
    # Uncapped, each client's 64 KiB read turned into ~1 MiB of replies.
    assert grown < 5 * 1024, f"server grew by {grown} KiB"
