"""PROXY headers: the reader driven with bytes split every way a read can split
them, then a proxy=on listener with real clients over loopback."""

import asyncio
import ipaddress
import logging
import socket
import ssl
import struct
import time

import pytest
from tornado.iostream import StreamClosedError
from tornado.tcpclient import TCPClient

from blackhole import metrics
from blackhole.proxy import V1_MAX, V2_MAX, V2_SIGNATURE, Header, ProxyError, parse
from tests.conftest import HOST, in_thread, insecure_context
from tests.test_session import every_split
from tests.test_tls import ca, cert_files, context  # noqa: F401 - fixtures

SMTP = b"EHLO pipelined\r\nNOOP\r\n"
CLIENT_HELLO = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"


def v2(command=0x21, family=0x11, block=b"", size=None):
    """A v2 header: version 2 and ``command`` (0x20 LOCAL, 0x21 PROXY), ``family``
    (high nibble: address family, low: transport), then ``block``."""
    return V2_SIGNATURE + bytes([command, family]) + struct.pack(
        "!H", len(block) if size is None else size) + block


def inet(source, destination, sport, dport):
    return (ipaddress.ip_address(source).packed + ipaddress.ip_address(destination).packed
            + struct.pack("!HH", sport, dport))


def tlv(kind, value):
    return bytes([kind]) + struct.pack("!H", len(value)) + value


def read(chunks):
    """Feed the chunks as reads would deliver them: the first answer that is
    not "need more", and the octets left over for the session."""
    received = b""
    for index, chunk in enumerate(chunks):
        received += chunk
        header = parse(received)
        if header is not None:
            return header, b"".join([received, *chunks[index + 1:]])[header.length:]
    return None, received


GOOD = [
    (b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 25\r\n", ("192.0.2.1", 56324)),
    (b"PROXY TCP6 2001:db8::1 2001:db8::2 0 65535\r\n", ("2001:db8::1", 0)),
    (b"PROXY UNKNOWN\r\n", None),
    (b"PROXY UNKNOWN 1.2.3.4 whatever is here\r\n", None),
    (v2(block=inet("192.0.2.1", "198.51.100.2", 56324, 25)), ("192.0.2.1", 56324)),
    (v2(family=0x21, block=inet("2001:db8::1", "2001:db8::2", 65535, 25)),
     ("2001:db8::1", 65535)),
    (v2(block=inet("192.0.2.7", "198.51.100.2", 1, 25) + tlv(0x01, b"smtp")
        + tlv(0x05, b"unique-id" * 10)), ("192.0.2.7", 1)),  # TLVs skipped
    (v2(command=0x20, family=0x00), None),  # LOCAL: a health check
    (v2(command=0x20, family=0x11, block=inet("192.0.2.1", "192.0.2.2", 1, 2)), None),
    (v2(family=0x00, block=b"ignored"), None),  # UNSPEC
    (v2(family=0x31, block=b"/tmp/a".ljust(108, b"\0") + b"/tmp/b".ljust(108, b"\0")), None),
]


@pytest.mark.parametrize("header, source", GOOD)
@pytest.mark.parametrize("after", [b"", SMTP, CLIENT_HELLO])
def test_a_header_and_what_follows_it_however_reads_split_them(header, source, after):
    for chunks in every_split(header + after):
        assert read(chunks) == (Header(source, len(header)), after), chunks


@pytest.mark.parametrize("header, _", GOOD)
def test_every_part_of_a_header_asks_for_more(header, _):
    for end in range(len(header)):
        assert parse(header[:end]) is None, end


def test_a_v1_line_of_the_longest_length_is_read_and_one_more_octet_is_not():
    longest = b"PROXY UNKNOWN " + b"x" * (V1_MAX - 16) + b"\r\n"
    assert len(longest) == V1_MAX
    assert parse(longest + SMTP) == Header(None, V1_MAX)
    longer = longest[:-2] + b"x\r\n"
    assert parse(longer[:V1_MAX - 1]) is None
    with pytest.raises(ProxyError, match="too long"):
        parse(longer)
    longest_tcp6 = (b"PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff "
                    b"ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n")
    assert parse(longest_tcp6).length == len(longest_tcp6) == 104


def test_v2_length_is_bounded_before_the_octets_arrive():
    assert parse(v2(family=0x11, size=V2_MAX)) is None  # waits for the TLVs
    with pytest.raises(ProxyError, match="too long"):
        parse(v2(family=0x11, size=V2_MAX + 1))


BAD = [
    (b"EHLO client\r\n", "no PROXY header"),
    (CLIENT_HELLO, "no PROXY header"),
    (b"PROXX TCP4", "no PROXY header"),
    (b"proxy TCP4 1.2.3.4 1.2.3.4 1 2\r\n", "no PROXY header"),
    (b"\r\n\r\n\x00\r\nQUIX", "no PROXY header"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n", "not ended by CRLF"),
    (b"PROXY TCP4 1.2.3.4\n5.6.7.8 1 2\r\n", "not ended by CRLF"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n", "malformed"),
    (b"PROXY TCP4  1.2.3.4 5.6.7.8 1 2\r\n", "malformed"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 \r\n", "malformed"),
    (b"PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n", "malformed"),
    (b"PROXY UNKNOWNX\r\n", "malformed"),
    (b"PROXY \r\n", "malformed"),
    (b"PROXY TCP4 2001:db8::1 5.6.7.8 1 2\r\n", "bad address"),
    (b"PROXY TCP6 1.2.3.4 2001:db8::1 1 2\r\n", "bad address"),
    (b"PROXY TCP4 1.2.3.256 5.6.7.8 1 2\r\n", "bad address"),
    (b"PROXY TCP4 1.2.3.\xff 5.6.7.8 1 2\r\n", "bad address"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n", "bad port"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n", "bad port"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 -2\r\n", "bad port"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 \xd9\xa3\r\n", "bad port"),  # not ASCII digits
    (V2_SIGNATURE + b"\x11", "unknown PROXY version or command"),
    (v2(command=0x22, family=0x11, size=12), "unknown PROXY version or command"),
    (v2(command=0x31, family=0x11, size=12), "unknown PROXY version or command"),
    (v2(family=0x41, size=12), "family or transport"),
    (v2(family=0x13, size=12), "family or transport"),
    (v2(family=0x11, size=11), "address block too short"),
    (v2(family=0x21, size=35), "address block too short"),
]


@pytest.mark.parametrize("data, error", BAD)
def test_a_bad_header_is_refused_once_its_fault_has_arrived(data, error):
    """Not before (a prefix of a good header may look like anything), and not
    later: a wrong client is told at once, not at the timeout."""
    for end in range(len(data)):
        try:
            assert parse(data[:end]) is None
        except ProxyError:
            break
    for chunks in every_split(data + SMTP):
        with pytest.raises(ProxyError, match=error):
            read(chunks)
    with pytest.raises(ProxyError, match=error):
        parse(data)


# A proxy=on listener, served on the test's loop, and real clients over loopback.

async def open_raw(port):
    return await TCPClient().connect(HOST, port)


async def greeting_after(port, data):
    """Send ``data`` in one write; the greeting and the first reply after it."""
    stream = await open_raw(port)
    await stream.write(data)
    greeting = await stream.read_until(b"\r\n")
    return stream, greeting


def peers(server):
    return [state.session.peer for state in server.sessions]


@pytest.mark.gen_test
@pytest.mark.parametrize("header", [
    b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 25\r\n",
    v2(block=inet("192.0.2.1", "198.51.100.2", 56324, 25) + tlv(0x02, b"mx.example")),
])
async def test_the_header_names_the_client_and_pipelined_commands_are_kept(
        smtp_server, header, caplog):
    caplog.set_level(logging.DEBUG, logger="blackhole")
    server, port = smtp_server(proxy_from="127.0.0.1", debug=True)
    stream, greeting = await greeting_after(port, header + b"EHLO c\r\nNOOP\r\n")
    assert greeting.startswith(b"220 ")
    assert (await stream.read_until(b"250 2.0.0 OK\r\n")).startswith(b"250-")
    assert [state.address for state in server.sessions] == [("192.0.2.1", 56324)]
    assert peers(server) == ["192.0.2.1"]
    logged = [record.getMessage() for record in caplog.records]
    assert any(line.endswith("Connection from '192.0.2.1'") for line in logged), logged
    stream.close()


@pytest.mark.gen_test
async def test_a_header_in_pieces_is_waited_for(smtp_server):
    server, port = smtp_server(proxy_from="127.0.0.0/8,::1")
    header = v2(family=0x21, block=inet("2001:db8::7", "2001:db8::1", 1000, 25))
    stream = await open_raw(port)
    for octet in range(len(header)):
        await stream.write(header[octet:octet + 1])
        await asyncio.sleep(0.002)
    await stream.write(b"NOOP\r\n")
    assert (await stream.read_until(b"\r\n")).startswith(b"220 ")
    assert await stream.read_until(b"\r\n") == b"250 2.0.0 OK\r\n"
    assert peers(server) == ["2001:db8::7"]
    stream.close()


@pytest.mark.gen_test
@pytest.mark.parametrize("header", [v2(command=0x20, family=0x00), b"PROXY UNKNOWN\r\n"])
async def test_a_health_check_is_the_balancers_own_connection(smtp_server, header):
    server, port = smtp_server(proxy_from="127.0.0.1")
    stream, greeting = await greeting_after(port, header)
    assert greeting.startswith(b"220 ")
    assert peers(server) == [HOST]
    stream.close()


async def refused(port, data, reason):
    """``data`` gets no greeting, the connection is closed and counted for ``reason``."""
    counted = metrics.counts[metrics.PROXY + metrics.PROXY_REASONS.index(reason)]
    stream = await open_raw(port)
    if data:
        await stream.write(data)
    with pytest.raises(StreamClosedError):
        await stream.read_bytes(1)
    assert metrics.counts[metrics.PROXY + metrics.PROXY_REASONS.index(reason)] == counted + 1


@pytest.mark.gen_test(timeout=15)
@pytest.mark.parametrize("data, reason", [
    (b"EHLO plain.client\r\n", "malformed"),
    (CLIENT_HELLO, "malformed"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n", "malformed"),
    (b"PROXY UNKNOWN " + b"x" * 100 + b"\r\n", "malformed"),  # over-long
    (v2(family=0x11, size=5), "malformed"),
    (v2(family=0x11, size=V2_MAX + 1), "malformed"),
    (b"PROXY TCP4 1.2.3.4", "missing"),  # and nothing more within --timeout
    (b"", "missing"),
])
async def test_a_bad_or_missing_header_closes_without_a_word_and_the_server_goes_on(
        smtp_server, data, reason):
    _, port = smtp_server(proxy_from="127.0.0.1", timeout=1)
    started = time.monotonic()
    await refused(port, data, reason)
    assert (time.monotonic() - started < 1) == (reason == "malformed")
    stream, greeting = await greeting_after(port, b"PROXY UNKNOWN\r\n")
    assert greeting.startswith(b"220 ")
    stream.close()


@pytest.mark.gen_test
async def test_a_connection_from_outside_proxy_from_is_closed(smtp_server):
    _, port = smtp_server(proxy_from="192.0.2.0/24,::1")
    await refused(port, b"", "untrusted")


@pytest.mark.gen_test
async def test_implicit_tls_behind_a_proxy_header_in_the_same_segment(
        smtp_server, context, caplog):
    """The ClientHello rides in the header's segment: it must reach the TLS layer whole."""
    caplog.set_level(logging.DEBUG, logger="blackhole")
    _, port = smtp_server(proxy_from="127.0.0.1", tls=context, implicit=True, debug=True)

    def client():
        tls_client = insecure_context()
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        tls = tls_client.wrap_bio(incoming, outgoing)
        with socket.create_connection((HOST, port), timeout=10) as sock:
            first = True
            while True:
                try:
                    tls.do_handshake()
                    break
                except ssl.SSLWantReadError:
                    pending = outgoing.read()
                    if first:  # header and ClientHello in one send
                        pending = b"PROXY TCP4 192.0.2.9 192.0.2.1 4000 465\r\n" + pending
                        first = False
                    sock.sendall(pending)
                    incoming.write(sock.recv(65536))
            sock.sendall(outgoing.read())
            greeting = b""
            while not greeting.endswith(b"\r\n"):
                try:
                    greeting += tls.read(1024)
                except ssl.SSLWantReadError:
                    incoming.write(sock.recv(65536))
            return greeting

    assert (await in_thread(client)).startswith(b"220 ")
    logged = [record.getMessage() for record in caplog.records]
    assert any(line.endswith("Connection from '192.0.2.9'") for line in logged), logged
