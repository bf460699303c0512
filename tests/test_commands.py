"""The commands of RFC 5321 over loopback: replies, argument syntax, sequence rules."""

import re
import smtplib
import socket

import pytest

from blackhole import __version__
from tests.conftest import HOST, in_thread

ENHANCED = re.compile(r"^[245]\.\d{1,3}\.\d{1,3} ")


def expected_mailname():
    try:
        with open("/etc/mailname") as lines:
            name = lines.readline().strip()
    except OSError:
        name = ""
    return name or socket.getfqdn()


@pytest.mark.gen_test
async def test_greeting_names_the_host_and_version(connect):
    client = await connect()
    assert client.greeting == (220, f"{expected_mailname()} [blackhole {__version__}]")


@pytest.mark.gen_test
async def test_ehlo_advertises_the_extensions(connect):
    client = await connect()
    code, text = await client.command("EHLO client.example")
    assert code == 250
    assert text.split("\n") == [
        expected_mailname(), "PIPELINING", "SIZE 512000", "8BITMIME", "BINARYMIME",
        "CHUNKING", "SMTPUTF8", "AUTH PLAIN LOGIN CRAM-MD5", "ENHANCEDSTATUSCODES",
        "VRFY", "EXPN", "ETRN", "DSN", "HELP",
    ]


@pytest.mark.gen_test
async def test_ehlo_size_follows_the_limit(serve, connect):
    client = await connect(serve(message_size_limit=1234))
    _, text = await client.command("EHLO client.example")
    assert "SIZE 1234" in text.split("\n")


@pytest.mark.gen_test
async def test_smtplib_sends_a_message(port):
    def send():
        with smtplib.SMTP(HOST, port) as smtp:
            refused = smtp.sendmail("a@example.com", ["b@example.com", "c@example.com"],
                                    b"Subject: hi\r\n\r\nHello\r\n.leading dot\r\n")
            return refused, smtp.noop()

    refused, noop = await in_thread(send)
    assert refused == {}
    assert noop == (250, b"2.0.0 OK")


@pytest.mark.gen_test
async def test_helo_session_and_verbs_in_any_case(connect):
    client = await connect()
    assert await client.command("helo client.example") == (250, expected_mailname())
    assert await client.command("mail from:<a@example.com>") == (250, "2.1.0 OK")
    assert await client.command("Rcpt To:<b@example.com>") == (250, "2.1.5 OK")
    assert (await client.command("dAtA"))[0] == 354
    await client.send(b"Subject: x\r\n\r\nbody\r\n.\r\n")
    assert await client.reply() == (250, "2.0.0 OK")
    assert await client.command("quit") == (221, "2.0.0 Thank you for speaking to me")
    assert await client.closed()


@pytest.mark.gen_test
async def test_legacy_replies_for_noop_rset_vrfy(connect):
    client = await connect()
    await client.command("EHLO client.example")
    assert await client.command("NOOP anything at all") == (250, "2.0.0 OK")
    assert await client.command("RSET") == (250, "2.0.0 OK")
    assert await client.command("VRFY someone@example.com") == (
        252, "2.0.0 OK, cannot VRFY user but will attempt delivery")


@pytest.mark.gen_test
async def test_unknown_verb_is_500_and_the_session_goes_on(connect):
    client = await connect()
    assert await client.command("BOGUS something") == (500, "5.5.1 Command not recognized")
    assert await client.command("") == (500, "5.5.1 Command not recognized")
    assert (await client.command("EHLO client.example"))[0] == 250
    assert (await client.command("NOOP"))[0] == 250


@pytest.mark.gen_test
@pytest.mark.parametrize("line, code, enhanced", [
    ("HELO", 501, "5.5.4"),
    ("EHLO two words", 501, "5.5.4"),
    ("EHLO bad/host", 501, "5.5.4"),
    ("MAIL a@example.com", 501, "5.5.4"),
    ("MAIL FROM:a@example.com", 501, "5.5.4"),
    ("MAIL FROM:<a b@example.com>", 501, "5.1.7"),
    ("MAIL FROM:<@example.com>", 501, "5.1.7"),
    ("MAIL FROM:<a@example.com>junk", 501, "5.1.7"),
    ("MAIL FROM:<" + "x" * 65 + "@example.com>", 501, "5.1.7"),
    ("MAIL FROM:<postmaster>", 501, "5.1.7"),
    ("MAIL FROM:<a@example.com> SIZE=abc", 501, "5.5.4"),
    ("MAIL FROM:<a@example.com> BODY=9BIT", 501, "5.5.4"),
    ("MAIL FROM:<a@example.com> RET=ALL", 501, "5.5.4"),
    ("MAIL FROM:<a@example.com> SMTPUTF8=yes", 501, "5.5.4"),
    ("MAIL FROM:<a@example.com> SIZE=1 SIZE=2", 501, "5.5.4"),
    ("MAIL FROM:<a@example.com> FROBNICATE=1", 555, "5.5.4"),
    ("MAIL FROM:<dépôt@example.com>", 553, "5.6.7"),
    ("VRFY", 501, "5.5.4"),
    ("HELP NOSUCHVERB", 504, "5.5.1"),
    ("RSET now", 501, "5.5.4"),
    ("QUIT now", 501, "5.5.4"),
])
async def test_bad_arguments_get_5xx_and_the_session_goes_on(connect, line, code, enhanced):
    client = await connect()
    await client.command("EHLO client.example")
    reply = await client.command(line)
    assert reply[0] == code and reply[1].startswith(enhanced + " "), reply
    assert (await client.command("MAIL FROM:<a@example.com>"))[0] == 250


@pytest.mark.gen_test
@pytest.mark.parametrize("line, enhanced", [
    ("RCPT TO:<>", "5.1.3"),
    ("RCPT TO:<b@example.com> NOTIFY=SOMETIMES", "5.5.4"),
    ("RCPT TO:<b@example.com> NOTIFY=NEVER,SUCCESS", "5.5.4"),
    ("RCPT TO:<b@example.com> ORCPT=nosemicolon", "5.5.4"),
    ("RCPT b@example.com", "5.5.4"),
    ("DATA now", "5.5.4"),
])
async def test_bad_recipient_and_data_arguments(connect, line, enhanced):
    client = await connect()
    await client.command("EHLO client.example")
    await client.command("MAIL FROM:<a@example.com>")
    if line.startswith("DATA"):
        await client.command("RCPT TO:<b@example.com>")
    code, text = await client.command(line)
    assert code == 501 and text.startswith(enhanced + " ")


@pytest.mark.gen_test
async def test_esmtp_parameters_are_accepted(connect):
    client = await connect()
    await client.command("EHLO client.example")
    assert await client.command(
        "MAIL FROM:<a@example.com> SIZE=1000 BODY=8BITMIME RET=HDRS ENVID=QQ314159"
    ) == (250, "2.1.0 OK")
    assert await client.command(
        "RCPT TO:<b@example.com> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;b@example.com"
    ) == (250, "2.1.5 OK")
    assert await client.command("RCPT TO:<c@example.com> NOTIFY=NEVER") == (250, "2.1.5 OK")
    assert await client.command("RCPT TO:<Postmaster>") == (250, "2.1.5 OK")
    assert await client.command("RCPT TO:<@relay.example:d@example.com>") == (250, "2.1.5 OK")
    assert await client.command('RCPT TO:<"quoted name"@[192.0.2.1]>') == (250, "2.1.5 OK")


@pytest.mark.gen_test
async def test_smtputf8_addresses(connect):
    client = await connect()
    await client.command("EHLO client.example")
    assert await client.command("MAIL FROM:<dépôt@exemple.fr> SMTPUTF8") == (250, "2.1.0 OK")
    assert await client.command("RCPT TO:<用户@例子.广告>") == (250, "2.1.5 OK")
    await client.command("RSET")
    await client.command("MAIL FROM:<a@example.com>")
    code, text = await client.command("RCPT TO:<用户@例子.广告>")
    assert (code, text[:5]) == (553, "5.6.7")


@pytest.mark.gen_test
async def test_parameters_need_ehlo(connect):
    client = await connect()
    await client.command("HELO client.example")
    assert (await client.command("MAIL FROM:<a@example.com> SIZE=10"))[0] == 555
    assert (await client.command("MAIL FROM:<a@example.com>"))[0] == 250


@pytest.mark.gen_test
async def test_sequence_errors_are_503(connect):
    client = await connect()
    assert await client.command("MAIL FROM:<a@example.com>") == (
        503, "5.5.1 Send HELO or EHLO first")
    assert await client.command("RCPT TO:<b@example.com>") == (503, "5.5.1 Need MAIL before RCPT")
    assert await client.command("DATA") == (503, "5.5.1 Need MAIL before DATA")
    await client.command("EHLO client.example")
    assert (await client.command("RCPT TO:<b@example.com>"))[0] == 503
    await client.command("MAIL FROM:<a@example.com>")
    assert await client.command("MAIL FROM:<a@example.com>") == (503, "5.5.1 Sender already given")
    assert await client.command("DATA") == (503, "5.5.1 Need RCPT before DATA")
    assert (await client.command("RCPT TO:<b@example.com>"))[0] == 250
    assert await client.command("MAIL FROM:<a@example.com>") == (503, "5.5.1 Sender already given")
    assert (await client.command("DATA"))[0] == 354


@pytest.mark.gen_test
@pytest.mark.parametrize("reset", ["RSET", "HELO client.example", "EHLO client.example"])
async def test_rset_helo_and_ehlo_reset_the_transaction(connect, reset):
    client = await connect()
    await client.command("EHLO client.example")
    await client.command("MAIL FROM:<a@example.com>")
    await client.command("RCPT TO:<b@example.com>")
    assert (await client.command(reset))[0] == 250
    assert (await client.command("DATA"))[0] == 503
    assert (await client.command("RCPT TO:<b@example.com>"))[0] == 503
    assert (await client.command("MAIL FROM:<a@example.com>"))[0] == 250


@pytest.mark.gen_test
async def test_rset_before_helo_does_not_greet(connect):
    client = await connect()
    assert (await client.command("RSET"))[0] == 250
    assert (await client.command("MAIL FROM:<a@example.com>"))[0] == 503


@pytest.mark.gen_test
async def test_help_lists_verbs_and_their_syntax(connect):
    client = await connect()
    code, text = await client.command("HELP")
    assert code == 214
    assert ("AUTH BDAT DATA EHLO ETRN EXPN HELO HELP MAIL NOOP QUIT RCPT RSET STARTTLS VRFY"
            in text)
    code, text = await client.command("help rcpt")
    assert code == 214 and text.startswith("2.0.0 RCPT TO:<address>")


@pytest.mark.gen_test
async def test_every_2xx_4xx_5xx_reply_carries_an_enhanced_code(connect):
    client = await connect()
    await client.command("EHLO client.example")
    lines = ["NOOP", "VRFY a@example.com", "HELP", "BOGUS", "MAIL FROM:<a@example.com>",
             "RCPT TO:<>", "RCPT TO:<b@example.com>", "RSET", "HELO x", "QUIT"]
    for line in lines:
        code, text = await client.command(line)
        if line.startswith("HELO"):
            continue  # RFC 2034 3: HELO/EHLO replies carry none
        for part in text.split("\n"):
            assert ENHANCED.match(part) and part[0] == str(code)[0], (line, code, part)


@pytest.mark.gen_test
@pytest.mark.parametrize("line, reply", [
    ("VRFY pass=alice@example.com", (250, "2.0.0 pass=alice@example.com")),
    ("VRFY fail=bob@example.com", (550, "5.7.1 fail=bob@example.com unknown")),
    ("VRFY carol@example.com", (252, "2.0.0 OK, cannot VRFY user but will attempt delivery")),
    ("EXPN list2", (250, "2.1.5 Dave <dave@example.com>\n2.1.5 Erin <erin@example.com>")),
    ("EXPN nolist", (550, "5.1.1 nolist unknown")),
    ("EXPN fail=list1", (550, "5.1.1 fail=list1 unknown")),
    ("EXPN", (501, "5.5.4 Syntax: EXPN list")),
    ("ETRN example.com", (250, "2.0.0 Queuing for node example.com started")),
    ("ETRN", (501, "5.5.4 Syntax: ETRN node")),
])
async def test_vrfy_expn_and_etrn(connect, line, reply):
    client = await connect()
    await client.command("EHLO client.example")
    assert await client.command(line) == reply
