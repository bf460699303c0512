"""The sans-I/O Session driven with bytes: what TCP cannot be made to do on demand.

A read can end anywhere, so the same input must give the same answers however
it is split: these tests split it at every position.
"""

import pytest

from blackhole import replies
from blackhole.actions import Pause
from blackhole.config import Settings
from blackhole.policy import Policy
from blackhole.protocol import Session
from blackhole.replies import Reply

SETTINGS = Settings(mailname="test.example", message_size_limit=0)
ENVELOPE = b"EHLO c\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n"


def feed(chunks, settings=SETTINGS):
    session = Session(settings, Policy())
    out = []
    for chunk in chunks:
        out += session.receive(chunk)
    return [item.code for item in out if isinstance(item, Reply)], session


def every_split(data):
    """The input whole, then cut in two and in three at every position."""
    yield [data]
    for i in range(1, len(data)):
        yield [data[:i], data[i:]]
    for i in range(1, len(data), 7):
        for j in range(i + 1, len(data), 5):
            yield [data[:i], data[i:j], data[j:]]


@pytest.mark.parametrize("body, size", [
    (b".\r\n", 0),
    (b"a\r\n.\r\n", 3),
    (b"..\r\n.\r\n", 3),
    (b"x\r\n..y\r\n\n.\n\r.\r\n.\r\n", 14),  # no unstuffing after a bare LF
    (b"x\n.\r\n\r\n.\r\n", 7),
])
def test_end_of_data_and_size_do_not_depend_on_where_reads_end(body, size):
    # A dot right after the end marker starts the next command: it is no stuffing.
    expected = [250, 250, 250, 354, 250, 500, 250]
    data = ENVELOPE + body + b".NOOP\r\nNOOP\r\n"
    for chunks in every_split(data):
        codes, session = feed(chunks)
        assert codes == expected, chunks
        assert session.message_size == size, chunks


@pytest.mark.parametrize("line_length, code", [(998, 250), (999, 554), (1500, 554)])
def test_long_data_lines_are_found_across_reads(line_length, code):
    body = b"short\r\n" + b"L" * line_length + b"\r\nshort\r\n.\r\n"
    data = ENVELOPE + body
    for cut in range(len(ENVELOPE), len(data), 37):
        for second in (cut + 1, cut + 500, cut + 1001):
            codes, _ = feed([data[:cut], data[cut:second], data[second:]])
            assert codes[-1] == code, (cut, second)


def test_a_long_line_among_many_short_ones_in_one_read():
    lines = b"".join(b"%05d short line\r\n" % n for n in range(2000))
    for position in (0, 1, 17, 5000, 20000, len(lines) - 18):
        body = lines[:position] + b"X" * 1000 + b"\r\n" + lines[position:]
        codes, _ = feed([ENVELOPE + body + b".\r\n"])
        assert codes[-1] == 554, position
    codes, _ = feed([ENVELOPE + lines + b"Y" * 998 + b"\r\n.\r\n"])
    assert codes[-1] == 250


def test_command_split_across_reads_is_one_command():
    codes, _ = feed([b"NO", b"OP", b"\r", b"\n", b"NOOP\r\nNO"])
    assert codes == [250, 250]


def test_delay_is_a_number_before_each_reply():
    session = Session(SETTINGS, Policy(delay=2))
    out = session.receive(b"NOOP\r\nNOOP\r\n")
    assert out == [Pause(2), replies.OK, Pause(2), replies.OK]


@pytest.mark.parametrize("line", [b"NOOP " + b"x" * 1100, b"X" * 2000, b"\xff" * 1500,
                                  b"NOOP " + b"x" * 600])
def test_overlong_command_lines_get_the_same_answer_however_they_arrive(line):
    data = line + b"\r\nNOOP\r\n"
    for chunks in every_split(data):
        codes, session = feed(chunks)
        assert codes == [500, 250], chunks
        assert session.errors == 1
