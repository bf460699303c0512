"""Hostile input over loopback: long lines, endless lines, bad bytes, too many errors, idling."""

import asyncio
import smtplib
import time

import pytest

from tests.conftest import HOST, in_thread


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
    flooder = await connect()
    await flooder.send(b"X" * (1024 * 1024))  # 1 MiB, no newline
    assert await flooder.reply() == (500, "5.5.2 Line too long")

    # Meanwhile another client goes through a whole transaction.
    other = await connect()
    await other.command("EHLO other.example")
    await other.command("MAIL FROM:<a@example.com>")
    await other.command("RCPT TO:<b@example.com>")
    await other.command("DATA")
    await other.send(b"hello\r\n.\r\n")
    assert await other.reply() == (250, "2.0.0 OK")

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
async def test_a_client_that_stops_mid_line_times_out_too(serve, connect):
    client = await connect(serve(timeout=1))
    await client.send(b"NOOP half a comm")
    await asyncio.sleep(0.5)
    assert (await client.reply())[0] == 421
