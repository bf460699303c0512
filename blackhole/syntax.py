"""The argument grammar of RFC 5321 4.1.2, with the UTF-8 of RFC 6531 3.3.

Only the shape of arguments is checked here; what they mean is up to the
command handlers.
"""

import re

_UTF8 = "\u0080-\U0010ffff"
_ATEXT = rf"[A-Za-z0-9!#$%&'*+/=?^_`{{|}}~\-{_UTF8}]"
_DOT_STRING = rf"{_ATEXT}+(?:\.{_ATEXT}+)*"
_QUOTED_STRING = rf'"(?:[\x20\x21\x23-\x5b\x5d-\x7e{_UTF8}]|\\[\x20-\x7e])*"'
_LABEL = rf"[A-Za-z0-9{_UTF8}](?:[A-Za-z0-9\-{_UTF8}]*[A-Za-z0-9{_UTF8}])?"
_DOMAIN = rf"{_LABEL}(?:\.{_LABEL})*"
_ADDRESS_LITERAL = (
    r"\[(?:[0-9]{1,3}(?:\.[0-9]{1,3}){3}"
    r"|IPv6:[0-9A-Fa-f:.]+"
    r"|[A-Za-z0-9\-]*[A-Za-z0-9]:[\x21-\x5a\x5e-\x7e]+)\]"
)
_MAILBOX = rf"(?:{_DOT_STRING}|{_QUOTED_STRING})@(?:{_DOMAIN}|{_ADDRESS_LITERAL})"
# An obsolete source route ("@a,@b:") is accepted and ignored (RFC 5321 4.1.2).
_SOURCE_ROUTE = rf"@{_DOMAIN}(?:,@{_DOMAIN})*:"

_PATH = re.compile(rf"<(?:{_SOURCE_ROUTE})?({_MAILBOX}|postmaster)>|<>", re.IGNORECASE)
_HELO_DOMAIN = re.compile(
    rf"(?:[A-Za-z0-9_](?:[A-Za-z0-9_.\-]*[A-Za-z0-9_.])?|{_ADDRESS_LITERAL})"
)
_PARAMETER = re.compile(r"([A-Za-z0-9][A-Za-z0-9\-]*)(?:=([\x21-\x3c\x3e-\x7e" + _UTF8 + r"]+))?")
_XTEXT = re.compile(r"(?:[\x21-\x2a\x2c-\x3c\x3e-\x7e]|\+[0-9A-F]{2})+")

# RFC 5321 4.5.3.1.1 and 4.5.3.1.3, counted in octets.
MAX_LOCAL_PART = 64
MAX_PATH = 256


class ArgumentError(ValueError):
    """An argument that does not parse; ``kind`` says which part failed."""

    def __init__(self, kind):
        super().__init__(kind)
        self.kind = kind


def is_helo_domain(text):
    """RFC 5321 4.1.1.1, leniently: a host name (underscores allowed) or a literal."""
    return _HELO_DOMAIN.fullmatch(text) is not None


def is_xtext(text):
    """RFC 3461 4: the encoding of ENVID and ORCPT values."""
    return _XTEXT.fullmatch(text) is not None


def envelope(arg, keyword):
    """Parse ``FROM:<path> params`` or ``TO:<path> params``.

    Returns the mailbox ("" for the null path) and the parameters as an
    ordered dict of upper-cased keyword to value (None for a bare keyword).
    Raises ArgumentError of kind "form", "address" or "parameter".
    """
    if arg[: len(keyword) + 1].upper() != keyword + ":":
        raise ArgumentError("form")
    start = len(keyword) + 1
    # Many clients write "FROM: <a@b>"; every MTA in use accepts it.
    while arg[start : start + 1] == " ":
        start += 1
    if arg[start : start + 1] != "<":
        raise ArgumentError("form")
    match = _PATH.match(arg, start)
    if match is None:
        raise ArgumentError("address")
    mailbox = match.group(1) or ""
    if (
        len(match.group(0).encode()) > MAX_PATH
        or len(mailbox.rpartition("@")[0].encode()) > MAX_LOCAL_PART
    ):
        raise ArgumentError("address")
    rest = arg[match.end() :]
    if rest and rest[0] != " ":
        raise ArgumentError("address")
    return mailbox, parameters(rest) if rest else {}


def parameters(text):
    """RFC 5321 4.1.2 Mail-parameters: space-separated ``KEY[=VALUE]``."""
    found = {}
    for item in text.split():
        match = _PARAMETER.fullmatch(item)
        if match is None:
            raise ArgumentError("parameter")
        key = match.group(1).upper()
        if key in found:
            raise ArgumentError("parameter")
        found[key] = match.group(2)
    return found
