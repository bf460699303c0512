"""LMTP (RFC 2033) listeners: LHLO, and a reply per recipient, each its own.

Driven by a raw client on the test's loop, by Python's smtplib.LMTP and
Postfix's smtp-source -L against the real command, over TCP and a Unix socket.
"""

import signal
import smtplib
import socket
import subprocess

import pytest

from blackhole import metrics
from blackhole.config import Settings
from blackhole.policy import Policy
from blackhole.protocol import LMTPSession
from blackhole.replies import Reply
from tests.conftest import HOST, free_port
from tests.test_session import every_split

MESSAGE = b"Subject: lmtp\r\n\r\nbody\r\n.\r\n"
SMTP_SOURCE = "/usr/sbin/smtp-source"  # Debian's postfix; .ci/run installs it


def test_the_replies_do_not_depend_on_where_reads_end():
    """Two transactions, by DATA and by BDAT; a 421 for one recipient ends the
    session, so the recipient after it gets no reply."""
    dialogue = (b"LHLO c\r\nMAIL FROM:<a+eod-452@x.example>\r\nRCPT TO:<b@x.example>\r\n"
                b"RCPT TO:<c+eod-550@x.example>\r\nRCPT TO:<d+rcpt-450@x.example>\r\n"
                b"RCPT TO:<e+eod-ok@x.example>\r\nDATA\r\nSubject: x\r\n\r\nbody\r\n.\r\n"
                b"MAIL FROM:<a@x.example>\r\nRCPT TO:<f+eod-421@x.example>\r\n"
                b"RCPT TO:<g@x.example>\r\nBDAT 4 LAST\r\nabcdNOOP\r\n")
    expected = [250, 250, 250, 250, 450, 250, 354, 452, 550, 250, 250, 250, 250, 421]
    for chunks in every_split(dialogue):
        session = LMTPSession(Settings(mailname="lmtp.example"), Policy())
        codes = [item.code for chunk in chunks for item in session.receive(chunk)
                 if isinstance(item, Reply)]
        assert codes == expected, chunks


@pytest.fixture
def lmtp(serve, connect):
    """A raw client of an LMTP listener with the given settings."""
    async def open_lmtp(**settings):
        return await connect(serve(lmtp=True, **settings))
    return open_lmtp


async def deliver(client, sender, *recipients, body=MESSAGE):
    """MAIL, each RCPT, DATA and the message, pipelined; every reply's code."""
    lines = [f"MAIL FROM:<{sender}>", *(f"RCPT TO:<{rcpt}>" for rcpt in recipients), "DATA"]
    await client.send("".join(line + "\r\n" for line in lines).encode())
    codes = [code for code, _ in await client.replies(len(lines))]
    if codes[-1] == 354:
        await client.send(body)
        codes += [code for code, _ in await client.replies(codes[1:-1].count(250))]
    return codes


@pytest.mark.gen_test
async def test_lhlo_offers_what_ehlo_does_and_helo_and_ehlo_are_refused(lmtp, connect, port):
    client = await lmtp()
    assert (await client.command("MAIL FROM:<a@example.com>"))[0] == 503
    assert await client.command("EHLO client.example") == (500, "5.5.1 This is LMTP: use LHLO")
    assert (await client.command("HELO client.example"))[0] == 500
    code, text = await client.command("LHLO client.example")
    smtp = await connect(port)
    assert (code, text.splitlines()[1:]) == (
        250, (await smtp.command("EHLO client.example"))[1].splitlines()[1:])
    assert (await client.command("LHLO"))[0] == 501
    assert (await smtp.command("LHLO client.example"))[0] == 500  # SMTP has none


@pytest.mark.gen_test
@pytest.mark.parametrize("sender, recipients, codes", [
    ("a@example.com", ["b@example.com", "bob+eod-550@example.com", "c@example.com"],
     [250, 250, 250, 250, 354, 250, 550, 250]),
    # Refused at RCPT: no delivery, so no reply after the data.
    ("a@example.com", ["b+rcpt-550@example.com", "c+eod-451@example.com", "d@example.com"],
     [250, 550, 250, 250, 354, 451, 250]),
    # The sender's eod tag for every recipient but one with its own.
    ("a+eod-452@example.com", ["b@example.com", "c+eod-ok@example.com"],
     [250, 250, 250, 354, 452, 250]),
    # A data tag fails the DATA command itself: nothing is delivered.
    ("a@example.com", ["b@example.com", "c+data-554@example.com"], [250, 250, 250, 554]),
])
async def test_a_reply_per_accepted_recipient_each_decided_apart(
        lmtp, sender, recipients, codes):
    client = await lmtp()
    await client.command("LHLO client.example")
    assert await deliver(client, sender, *recipients) == codes
    assert (await client.command("NOOP"))[0] == 250  # nothing more was owed


@pytest.mark.gen_test
async def test_every_delivery_counts_as_a_message(lmtp):
    client = await lmtp()
    accepted, refused = (metrics.counts[metrics.MESSAGE + code - 200] for code in (250, 550))
    await client.command("LHLO client.example")
    await deliver(client, "a@example.com", "b@example.com", "c+eod-550@example.com",
                  "d@example.com")
    assert metrics.counts[metrics.MESSAGE + 50] == accepted + 2
    assert metrics.counts[metrics.MESSAGE + 350] == refused + 1


@pytest.mark.gen_test
async def test_too_large_a_message_fails_for_every_recipient(lmtp):
    client = await lmtp(message_size_limit=10)
    await client.command("LHLO client.example")
    assert await deliver(client, "a@example.com", "b@example.com", "c+eod-ok@example.com") == [
        250, 250, 250, 354, 552, 552]


@pytest.mark.gen_test
async def test_the_last_bdat_chunk_gets_a_reply_per_recipient(lmtp):
    client = await lmtp()
    await client.command("LHLO client.example")
    for line in ("MAIL FROM:<a@example.com>", "RCPT TO:<b+eod-450@example.com>",
                 "RCPT TO:<c@example.com>"):
        await client.command(line)
    await client.send(b"BDAT 5\r\nHello")
    assert (await client.reply())[0] == 250
    await client.send(b"BDAT 3 LAST\r\n!\r\n")
    assert [code for code, _ in await client.replies(2)] == [450, 250]


@pytest.mark.gen_test
async def test_too_large_a_last_bdat_chunk_fails_for_every_recipient(lmtp):
    client = await lmtp(message_size_limit=10)
    await client.command("LHLO client.example")
    for line in ("MAIL FROM:<a@example.com>", "RCPT TO:<b@example.com>",
                 "RCPT TO:<c@example.com>"):
        await client.command(line)
    await client.send(b"BDAT 11 LAST\r\nHello world")
    assert [code for code, _ in await client.replies(2)] == [552, 552]
    assert (await client.command("NOOP"))[0] == 250


@pytest.mark.gen_test
async def test_a_mode_decides_each_delivery(lmtp):
    client = await lmtp(mode="offline")
    await client.command("LHLO client.example")
    assert await deliver(client, "a@example.com", "b@example.com", "c+eod-451@example.com",
                         "d@example.com") == [250, 250, 250, 250, 354, 521, 451, 521]


def raw_lmtp(sock):
    """Per-recipient replies with tags from a raw client on a connected socket."""
    lines = sock.makefile("rb")

    def reply():
        while (line := lines.readline())[3:4] == b"-":
            pass
        return int(line[:3])

    assert reply() == 220
    sock.sendall(b"LHLO client.example\r\n")
    assert reply() == 250
    sock.sendall(b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\n"
                 b"RCPT TO:<bob+eod-550@example.com>\r\nDATA\r\n")
    assert [reply() for _ in range(4)] == [250, 250, 250, 354]
    sock.sendall(MESSAGE + b"QUIT\r\n")
    return [reply() for _ in range(3)]


def test_per_recipient_replies_over_tcp_and_a_unix_socket(daemon, tmp_path):
    port, path = free_port(), tmp_path / "lmtp.sock"
    daemon(f"--listen=unix:{path} lmtp, {HOST}:{port} lmtp", port=port)
    with socket.create_connection((HOST, port), timeout=10) as sock:
        assert raw_lmtp(sock) == [250, 550, 221]
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(10)
        sock.connect(str(path))
        assert raw_lmtp(sock) == [250, 550, 221]


def test_smtplib_lmtp_over_tcp_and_a_unix_socket(daemon, tmp_path):
    """smtplib.LMTP reads one reply after the data: one recipient each."""
    port, path = free_port(), tmp_path / "lmtp.sock"
    daemon(f"--listen=unix:{path} lmtp mode=bounce, {HOST}:{port} lmtp", port=port)
    with smtplib.LMTP(HOST, port, timeout=10) as client:
        assert client.sendmail("a@example.com", ["b@example.com"], MESSAGE[:-3]) == {}
    with smtplib.LMTP(str(path), timeout=10) as client:
        with pytest.raises(smtplib.SMTPDataError):  # bounce: never 250
            client.sendmail("a@example.com", ["b@example.com"], MESSAGE[:-3])
    with smtplib.LMTP(str(path), timeout=10) as client:
        with pytest.raises(smtplib.SMTPDataError) as refused:
            client.sendmail("a@example.com", ["b+eod-451@example.com"], MESSAGE[:-3])
        assert refused.value.smtp_code == 451


def test_smtp_source_delivers_over_lmtp(daemon, tmp_path):
    """50 messages of 3 recipients each, over TCP and over the Unix socket."""
    port, path = free_port(), tmp_path / "lmtp.sock"
    process, _ = daemon(f"--listen=unix:{path} lmtp, {HOST}:{port} lmtp", port=port)
    for where in (f"{HOST}:{port}", f"unix:{path}"):
        result = subprocess.run([SMTP_SOURCE, "-L", "-s", "5", "-m", "50", "-r", "3",
                                 "-l", "2048", where], capture_output=True, text=True,
                                timeout=60)
        assert (result.returncode, result.stderr) == (0, ""), where
    process.send_signal(signal.SIGTERM)
    process.communicate(timeout=20)
    log = (tmp_path / "blackhole.log").read_text()
    assert ", 300 messages accepted, refused by code: none," in log
