"""The PROXY protocol header a load balancer sends before anything else, read sans-I/O.

HAProxy's "The PROXY protocol, versions 1 and 2" (haproxy.org, doc/proxy-protocol.txt):
v1 is one line of text, v2 a binary block; the first octets tell them apart.
``parse`` takes every byte received so far and answers at the earliest octet
it can: None while the header may still be incomplete, a ``Header`` once it
is whole (the bytes after it belong to the session), or ``ProxyError`` as
soon as what arrived cannot begin a valid header, so a wrong client is
refused without waiting for the timeout.

Our own rather than the ``proxy-protocol`` package: that one (2,500 lines
with TLV decoding and an asyncio server) reads from an asyncio StreamReader,
a v1 line with an unbounded ``readline``; blackhole needs the header's exact
length before taking any octet from the socket, and no more than this.
"""

import ipaddress
from typing import NamedTuple

V1_PREFIX = b"PROXY "
V1_MAX = 107  # octets of a v1 line, CRLF included (section 2.1)
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"  # section 2.2
V2_FIXED = 16  # signature, version and command, family, length
V2_MAX = 4096  # octets after the fixed part we accept: addresses and TLVs, with room to spare
# Section 2.2: the address block of each family, the rest up to the length being TLVs.
_V2_FAMILIES = {0x0: 0, 0x1: 12, 0x2: 36, 0x3: 216}  # UNSPEC, INET, INET6, UNIX
_V1_FAMILIES = {b"TCP4": ipaddress.IPv4Address, b"TCP6": ipaddress.IPv6Address}


class ProxyError(ValueError):
    """What arrived is no valid PROXY header; the message says how."""


class Header(NamedTuple):
    """A whole header: ``length`` octets of it, and the client's (host, port) it
    carries, or None where it carries none (v1 UNKNOWN, v2 LOCAL, UNSPEC, UNIX):
    then the connection's own address stands."""

    source: tuple
    length: int


def parse(data):
    """The header at the start of ``data``, or None if more octets are needed."""
    if data[:1] == V1_PREFIX[:1]:
        return _parse_v1(data)
    if data[:1] == V2_SIGNATURE[:1]:
        return _parse_v2(data)
    if data:
        raise ProxyError("no PROXY header")
    return None


def _parse_v1(data):
    """``PROXY TCP4|TCP6 source destination sport dport`` or ``PROXY UNKNOWN ...``,
    single spaces, ending in CRLF within V1_MAX octets (section 2.1)."""
    if not data.startswith(V1_PREFIX[:len(data)]):
        raise ProxyError("no PROXY header")
    end = data.find(b"\n", 0, V1_MAX) - 1  # where the CR must be
    if end < 0:
        if len(data) >= V1_MAX:
            raise ProxyError("PROXY v1 line too long")
        return None
    if data[end:end + 1] != b"\r":
        raise ProxyError("PROXY v1 line not ended by CRLF")
    line = data[len(V1_PREFIX):end]
    length = end + 2
    if line.startswith(b"UNKNOWN") and line[7:8] in (b"", b" "):
        return Header(None, length)  # what follows UNKNOWN is to be ignored
    fields = line.split(b" ")
    if len(fields) != 5 or fields[0] not in _V1_FAMILIES:
        raise ProxyError("malformed PROXY v1 line")
    family = _V1_FAMILIES[fields[0]]
    try:
        source, _ = (family(field.decode("ascii")) for field in fields[1:3])
    except ValueError:  # UnicodeDecodeError is one
        raise ProxyError("bad address in PROXY v1 line") from None
    port, _ = (_port(field) for field in fields[3:5])
    return Header((str(source), port), length)


def _port(field):
    """0 to 65535 in decimal, no leading zero (section 2.1)."""
    if not (field.isdigit() and len(field) <= 5 and (field == b"0" or field[:1] != b"0")
            and int(field) < 65536):
        raise ProxyError("bad port in PROXY v1 line")
    return int(field)


def _parse_v2(data):
    """The 16-octet fixed part, then the address block and TLVs it counts (section 2.2)."""
    if not data.startswith(V2_SIGNATURE[:len(data)]):
        raise ProxyError("no PROXY header")
    if len(data) > 12 and (data[12] >> 4 != 2 or data[12] & 0xF > 1):
        raise ProxyError("unknown PROXY version or command")
    if len(data) < V2_FIXED:
        return None
    command, family, transport = data[12] & 0xF, data[13] >> 4, data[13] & 0xF
    size = int.from_bytes(data[14:16], "big")
    if family not in _V2_FAMILIES or transport > 2:
        raise ProxyError("unknown PROXY v2 address family or transport")
    if size > V2_MAX:
        raise ProxyError("PROXY v2 header too long")
    if command == 1 and size < _V2_FAMILIES[family]:
        raise ProxyError("PROXY v2 address block too short")
    length = V2_FIXED + size
    if len(data) < length:
        return None
    if command == 0 or family in (0x0, 0x3):  # LOCAL (a health check), or no IP to use
        return Header(None, length)
    block = data[V2_FIXED:]
    if family == 0x1:
        host, port = ipaddress.IPv4Address(block[:4]), block[8:10]
    else:
        host, port = ipaddress.IPv6Address(block[:16]), block[32:34]
    return Header((str(host), int.from_bytes(port, "big")), length)  # TLVs: skipped
