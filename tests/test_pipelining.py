"""How replies leave, over loopback: a batch (RFC 2920) in order and in one write, whole even
when the socket takes them in part, and without Nagle's wait."""

import asyncio
import socket

import pytest
from tests.conftest import Client


@pytest.fixture
def server_writes(monkeypatch):
    """Every send() of SMTP replies (bytes starting with a reply code), as sent."""
    writes = []
    original = socket.socket.send

    def recording(sock, data, *flags):
        if bytes(data[:3]).isdigit():
            writes.append(bytes(data))
        return original(sock, data, *flags)

    monkeypatch.setattr(socket.socket, "send", recording)
    return writes


@pytest.mark.gen_test
async def test_a_batch_is_answered_in_order_in_one_write(connect, server_writes):
    client = await connect()
    await client.command("EHLO client.example")
    server_writes.clear()
    await client.send(b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\n"
                      b"RCPT TO:<>\r\nRCPT TO:<c@example.com>\r\nDATA\r\n")
    assert await client.replies(5) == [
        (250, "2.1.0 OK"), (250, "2.1.5 OK"), (501, "5.1.3 Bad recipient address syntax"),
        (250, "2.1.5 OK"), (354, "Start mail input; end with <CRLF>.<CRLF>"),
    ]
    assert len(server_writes) == 1


@pytest.mark.gen_test
async def test_data_end_and_the_next_transaction_in_one_batch(connect, server_writes):
    client = await connect()
    await client.command("EHLO client.example")
    await client.send(b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n")
    await client.replies(3)
    server_writes.clear()
    await client.send(b"one\r\n.\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\n"
                      b"DATA\r\n")
    assert [code for code, _ in await client.replies(4)] == [250, 250, 250, 354]
    assert len(server_writes) == 1


@pytest.mark.gen_test
async def test_a_hundred_pipelined_commands_all_get_answers(connect):
    client = await connect()
    await client.send(b"".join(b"NOOP %d\r\n" % n for n in range(99)) + b"QUIT\r\n")
    replies = await client.replies(100)
    assert replies[:99] == [(250, "2.0.0 OK")] * 99
    assert replies[99][0] == 221
    assert await client.closed()


@pytest.mark.gen_test
async def test_nothing_after_quit_is_executed(connect):
    client = await connect()
    await client.send(b"QUIT\r\nNOOP\r\nNOOP\r\n")
    assert (await client.reply())[0] == 221
    assert await client.closed()


@pytest.fixture
def short_writes(monkeypatch):
    """A socket that takes at most 100 octets per send(), as a full send buffer would."""
    original = socket.socket.send
    monkeypatch.setattr(socket.socket, "send", lambda sock, data, *flags: original(
        sock, data[:100], *flags))


@pytest.mark.gen_test
async def test_replies_the_socket_takes_in_part_all_arrive_in_order(connect, short_writes):
    client = await connect()
    ehlo = await client.command("EHLO client.example")
    await client.send(b"EHLO client.example\r\nNOOP\r\nEHLO client.example\r\n")
    assert await client.replies(3) == [ehlo, (250, "2.0.0 OK"), ehlo]
    assert await client.message(b"Subject: after\r\n\r\nstill served\r\n.\r\n") == (
        250, "2.0.0 OK")


@pytest.mark.gen_test(timeout=10)
async def test_a_closing_reply_the_socket_takes_in_part_still_closes(serve, short_writes):
    """QUIT's 221 after EHLO's reply is over 100 octets: the rest is flushed, then
    the server closes, rather than idle on to --timeout and a 421 after its 221."""
    client = await Client.connect(serve(timeout=3))
    await client.send(b"EHLO client.example\r\nQUIT\r\n")
    await client.reply()
    assert (await client.reply())[0] == 221
    assert await asyncio.wait_for(client.stream.read_until_close(), 2) == b""


@pytest.mark.gen_test
async def test_accepted_connections_have_nagle_off(smtp_server):
    """Replies leave at once, not held back until the last one is acknowledged."""
    server, port = smtp_server()
    client = await Client.connect(port)
    (state,) = server.sessions
    assert state.stream.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    client.close()
