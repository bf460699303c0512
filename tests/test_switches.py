"""Dynamic switches: X-Blackhole-Mode and X-Blackhole-Delay steer one message, from its headers."""

import time

import pytest

from blackhole.actions import Pause
from blackhole.config import Settings
from blackhole.policy import Policy
from blackhole.protocol import Session
from tests.test_session import ENVELOPE, every_split


@pytest.mark.gen_test
async def test_a_mode_switch_steers_that_message_only(connect):
    client = await connect()
    await client.command("EHLO client.example")
    assert await client.message(b"X-Blackhole-Mode: offline\r\nSubject: s\r\n\r\nbody\r\n.\r\n") \
        == (521, "5.3.2 Machine does not accept mail")
    assert await client.message(b"Subject: next\r\n\r\nbody\r\n.\r\n") == (250, "2.0.0 OK")


@pytest.mark.gen_test
@pytest.mark.parametrize("message", [
    b"Subject: s\r\n\r\nX-Blackhole-Mode: offline\r\n.\r\n",  # in the body
    b"Subject: s\r\nX-Blackhole-Mode: nonsense\r\n\r\nbody\r\n.\r\n",  # not a mode
    b"Subject: s\r\nX-Blackhole-Delay: forever\r\n\r\nbody\r\n.\r\n",  # not a delay
    b"Subject: s\r\nX-Blackhole-Delay: -5\r\n\r\nbody\r\n.\r\n",
    b"Subject: s\r\nX-Blackhole-Delay: 5, 1\r\n\r\nbody\r\n.\r\n",
])
async def test_switches_in_the_body_or_invalid_are_ignored(connect, message):
    client = await connect()
    await client.command("EHLO client.example")
    started = time.monotonic()
    assert await client.message(message) == (250, "2.0.0 OK")
    assert time.monotonic() - started < 0.9


@pytest.mark.gen_test
async def test_switches_can_be_turned_off(serve, connect):
    client = await connect(serve(dynamic_switch=False))
    await client.command("EHLO client.example")
    assert await client.message(b"X-Blackhole-Mode: offline\r\n\r\nbody\r\n.\r\n") == (
        250, "2.0.0 OK")


@pytest.mark.gen_test(timeout=30)
@pytest.mark.parametrize("header, low, high", [(b"1", 0.95, 1.9), (b"1, 2", 0.95, 2.9)])
async def test_a_delay_switch_delays_that_end_of_data_reply_only(connect, header, low, high):
    client = await connect()
    await client.command("EHLO client.example")
    await client.start_data()
    started = time.monotonic()
    await client.send(b"X-Blackhole-Delay: " + header + b"\r\n\r\nbody\r\n.\r\n")
    assert await client.reply() == (250, "2.0.0 OK")
    assert low <= time.monotonic() - started < high
    started = time.monotonic()
    assert await client.message(b"Subject: next\r\n\r\nbody\r\n.\r\n") == (250, "2.0.0 OK")
    assert time.monotonic() - started < 0.9


def end_of_data(data, settings=Settings(mailname="test.example")):
    """The last reply and the pause before it, for input fed in the given pieces."""
    session = Session(settings, Policy())
    out = []
    for chunk in data:
        out += session.receive(chunk)
    pause = out[-2].seconds if len(out) > 1 and isinstance(out[-2], Pause) else 0
    return out[-1].code, pause


def test_a_delay_switch_is_capped_at_60_seconds():
    body = b"X-Blackhole-Delay: 1000\r\n\r\nbody\r\n.\r\n"
    assert end_of_data([ENVELOPE + body]) == (250, 60)


def test_switches_are_found_however_the_headers_arrive():
    body = b"Subject: split\r\nX-Blackhole-Mode: offline\r\n\r\nbody\r\n.\r\n"
    for chunks in every_split(ENVELOPE + body):
        assert end_of_data(chunks)[0] == 521, chunks


def test_switch_lookalikes_and_a_header_section_without_end():
    assert end_of_data([ENVELOPE + b"X-Blackhole-Modes: offline\r\n\r\n.\r\n"])[0] == 250
    assert end_of_data([ENVELOPE + b"x-blackhole-mode:OFFLINE\r\n.\r\n"])[0] == 521
    # BDAT has no line length limit: a huge header line is skipped, not kept.
    content = b"Subject: " + b"x" * 100000 + b"\r\nX-Blackhole-Mode: offline\r\n\r\nbody"
    chunked = (b"EHLO c\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\n"
               b"BDAT %d LAST\r\n" % len(content) + content)
    assert end_of_data([chunked[i:i + 4096] for i in range(0, len(chunked), 4096)])[0] == 521


def test_a_switch_in_the_body_is_ignored_however_the_message_arrives():
    body = b"Subject: s\r\n\r\nX-Blackhole-Mode: offline\r\n.\r\n"
    for chunks in every_split(ENVELOPE + body):
        assert end_of_data(chunks)[0] == 250, chunks


@pytest.mark.parametrize("headers, code", [
    # A folded line belongs to the header before it (RFC 5322 2.2.3).
    (b"Subject: s\r\n X-Blackhole-Mode: offline\r\n", 250),
    (b"Subject: s\r\n\tX-Blackhole-Mode: offline\r\n", 250),
    (b"X-Blackhole-Mode:\r\n offline\r\n", 521),  # a switch's own value, unfolded
    (b"X-Blackhole-Mode: off\r\n line\r\nSubject: s\r\n", 250),  # "off line": no mode
    # CR CR LF: the line is "\r", neither blank nor a switch.
    (b"Subject: s\r\n\r\r\nX-Blackhole-Mode: offline\r\n", 521),
    (b"X-Blackhole-Mode: offline\r\r\n", 521),
    (b"\rX-Blackhole-Mode: offline\r\n", 250),  # found by scripts/fuzz
    (b"X-Blackhole-Mode \t: offline\r\n", 521),  # WSP before the colon (RFC 5322 4.5.3)
])
def test_folded_and_odd_header_lines_get_one_answer_however_they_arrive(headers, code):
    for chunks in every_split(ENVELOPE + headers + b"\r\nbody\r\n.\r\n"):
        assert end_of_data(chunks)[0] == code, chunks


def test_a_long_switch_line_is_judged_by_its_first_octets_in_any_split():
    # BDAT has no line length limit, so the switch itself decides.
    content = b"X-Blackhole-Mode:" + b" " * 1990 + b"offline\r\n\r\nbody"
    data = (b"EHLO c\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\n"
            b"BDAT %d LAST\r\n" % len(content) + content)
    for cut in range(1, len(data), 13):
        assert end_of_data([data[:cut], data[cut:]])[0] == 250, cut


@pytest.mark.parametrize("before, code", [(998, 521), (999, 250)])
def test_only_the_first_thousand_header_lines_are_read(before, code):
    headers = b"Received: from a.example\r\n" * before + b"X-Blackhole-Mode: offline\r\n"
    assert end_of_data([ENVELOPE + headers + b"\r\nbody\r\n.\r\n"])[0] == code


def test_a_folded_switch_value_is_kept_to_a_thousand_octets():
    # Each folded line would otherwise copy the whole value so far: a flood of
    # them cost minutes of a worker's time, quadratically.
    def message(folds):
        return (ENVELOPE + b"X-Blackhole-Mode:" + (b"\r\n" + b" " * 10) * folds
                + b"\r\n\toffline\r\n\r\n.\r\n")

    assert end_of_data([message(50)])[0] == 521  # 500 octets of value, then the mode
    assert end_of_data([message(101)])[0] == 250  # 1010 octets: the rest is not kept
