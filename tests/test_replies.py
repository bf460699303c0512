"""The reply catalogue itself: well-formed, RFC 2034 codes, a text for every mode code."""

import re

import pytest

from blackhole import replies
from blackhole.policy import MODES
from blackhole.replies import Reply

CATALOGUE = [value for value in vars(replies).values() if isinstance(value, Reply)]
ALL = CATALOGUE + list(replies.END_OF_DATA.values())


@pytest.mark.parametrize("reply", ALL, ids=lambda reply: reply.wire[:20].decode())
def test_each_reply_is_well_formed(reply):
    lines = reply.wire.split(b"\r\n")
    assert lines.pop() == b""
    for index, line in enumerate(lines):
        separator = b" " if index == len(lines) - 1 else b"-"
        assert line[:3] == str(reply.code).encode() and line[3:4] == separator
        assert len(line) + 2 <= 512  # RFC 5321 4.5.3.1.5
        if reply.code >= 400 or reply.code < 300:
            enhanced = re.match(rb"(\d)\.\d{1,3}\.\d{1,3} \S", line[4:])
            assert enhanced and enhanced.group(1) == str(reply.code)[:1].encode()


def test_every_mode_code_has_a_reply():
    for codes in MODES.values():
        for code in codes:
            assert replies.END_OF_DATA[code].code == code


def test_only_221_and_421_close():
    assert {reply.code for reply in ALL if reply.closes} == {221, 421}


def test_multiline_reply_layout():
    reply = Reply(250, "one", "two", "three")
    assert reply.wire == b"250-one\r\n250-two\r\n250 three\r\n"
    assert Reply(214, "a", "b", enhanced="2.0.0").wire == b"214-2.0.0 a\r\n214 2.0.0 b\r\n"
