"""DATA over loopback: only <CRLF>.<CRLF> ends it, size is counted unstuffed, nothing is kept."""

import smtplib
import socket

import pytest

from tests.conftest import HOST, in_thread


async def transaction(client):
    await client.command("EHLO client.example")
    await client.start_data()


@pytest.mark.gen_test
@pytest.mark.parametrize("fake_end", [b"\n.\n", b"\r.\r", b"\n.\r\n", b"\r\n.\n",
                                      b"\r\n.\r", b"\r.\r\n", b"\n..\r\n"])
async def test_only_crlf_dot_crlf_ends_data(connect, fake_end):
    """SMTP smuggling: a second message hidden behind a lookalike end is never executed."""
    client = await connect()
    await transaction(client)
    smuggled = (b"MAIL FROM:<evil@example.com>\r\nRCPT TO:<victim@example.com>\r\n"
                b"DATA\r\nsmuggled\r\n")
    await client.send(b"Subject: x\r\n\r\nbody" + fake_end + smuggled + b".\r\n")
    await client.send(b"NOOP\r\nQUIT\r\n")
    assert await client.replies(3) == [
        (250, "2.0.0 OK"), (250, "2.0.0 OK"), (221, "2.0.0 Thank you for speaking to me"),
    ]


@pytest.mark.gen_test
async def test_empty_message_and_bare_lf_lines_are_accepted(connect):
    client = await connect()
    await transaction(client)
    await client.send(b".\r\n")
    assert await client.reply() == (250, "2.0.0 OK")
    assert await client.message(b"Subject: lf\n\nline one\nline two\n\r\n.\r\n") == (
        250, "2.0.0 OK")


@pytest.mark.gen_test
@pytest.mark.parametrize("body, code", [
    (b".x\r\n" * 24 + b"ab\r\n", 250),   # 100 octets unstuffed, 125 on the wire
    (b".x\r\n" * 24 + b"abc\r\n", 552),  # 101 octets unstuffed
])
async def test_size_limit_counts_unstuffed_octets(serve, body, code):
    port = serve(message_size_limit=100)

    def send():
        with smtplib.SMTP(HOST, port) as smtp:
            smtp.ehlo()
            smtp.mail("a@example.com")
            smtp.rcpt("b@example.com")
            reply = smtp.data(body)  # smtplib adds the dot-stuffing
            return reply, smtp.noop()

    reply, noop = await in_thread(send)
    assert reply[0] == code
    if code == 552:
        assert reply[1] == b"5.3.4 Message size exceeds fixed maximum message size"
    assert noop[0] == 250


@pytest.mark.gen_test
async def test_oversized_message_leaves_the_session_usable(serve, connect):
    client = await connect(serve(message_size_limit=1000))
    await transaction(client)
    await client.send(b"x" * 900 + b"\r\n" + b"y" * 900 + b"\r\n.\r\n")
    assert (await client.reply())[0] == 552
    assert await client.message(b"small\r\n.\r\n") == (250, "2.0.0 OK")


@pytest.mark.gen_test
async def test_size_parameter_over_the_limit_is_refused_at_once(serve, connect):
    client = await connect(serve(message_size_limit=1000))
    await client.command("EHLO client.example")
    assert await client.command("MAIL FROM:<a@example.com> SIZE=1001") == (
        552, "5.3.4 Message size exceeds fixed maximum message size")
    assert await client.command("MAIL FROM:<a@example.com> SIZE=1000") == (250, "2.1.0 OK")


@pytest.mark.gen_test
async def test_no_limit_when_size_is_zero(serve, connect):
    client = await connect(serve(message_size_limit=0))
    _, text = await client.command("EHLO client.example")
    assert "SIZE 0" in text.split("\n")
    assert (await client.command("MAIL FROM:<a@example.com> SIZE=99999999999"))[0] == 250
    await client.command("RCPT TO:<b@example.com>")
    await client.command("DATA")
    await client.send((b"z" * 998 + b"\r\n") * 2000 + b".\r\n")
    assert await client.reply() == (250, "2.0.0 OK")


@pytest.mark.gen_test
@pytest.mark.parametrize("line, code", [(b"a" * 998 + b"\r\n", 250),
                                        (b"a" * 999 + b"\r\n", 554),
                                        (b"a" * 999 + b"\n", 250),
                                        (b"a" * 5000 + b"\r\n", 554)])
async def test_data_lines_over_1000_octets_are_refused_at_the_end(connect, line, code):
    client = await connect()
    await transaction(client)
    await client.send(b"Subject: long\r\n\r\n" + line + b"short\r\n.\r\n")
    reply = await client.reply()
    assert reply[0] == code
    if code == 554:
        assert reply[1] == "5.6.0 Message has a line longer than 1000 octets"
    assert (await client.command("NOOP"))[0] == 250


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_a_huge_message_is_discarded_as_it_streams(daemon):
    """64 MiB through one session: the server's memory hardly moves."""
    process, port = daemon("--message_size_limit=0")
    chunk = (b"0123456789" * 99 + b"\r\n") * 1024  # 1 MiB of 992-octet lines
    with socket.create_connection((HOST, port)) as sock:
        stream = sock.makefile("rwb")
        stream.readline()
        stream.write(b"EHLO c\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\n")
        stream.flush()
        while not stream.readline().startswith(b"250 "):
            pass
        stream.readline(), stream.readline()
        stream.write(b"DATA\r\n")
        stream.flush()
        assert stream.readline().startswith(b"354")
        before = rss_kib(process.pid)
        for _ in range(64):
            stream.write(chunk)
        stream.write(b".\r\n")
        stream.flush()
        assert stream.readline() == b"250 2.0.0 OK\r\n"
        grown = rss_kib(process.pid) - before
    assert grown < 8 * 1024, f"server grew by {grown} KiB for a 64 MiB message"
