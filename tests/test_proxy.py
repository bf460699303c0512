"""The PROXY header reader driven with bytes, split every way a read can split them."""

import ipaddress
import struct

import pytest

from blackhole.proxy import V1_MAX, V2_MAX, V2_SIGNATURE, Header, ProxyError, parse
from tests.test_session import every_split

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
