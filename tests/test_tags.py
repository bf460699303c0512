"""Address tags over loopback: an envelope address asks for a failure, deterministically."""

import time

import pytest

from blackhole.policy import Stage, tag

EHLO = "EHLO client.example"
MESSAGE = b"Subject: tagged\r\n\r\nbody\r\n.\r\n"


async def dialogue(client, lines):
    """Send each line as a command; the codes of the replies."""
    return [(await client.command(line))[0] for line in lines]


async def transaction(client, sender, *recipients):
    """EHLO, MAIL, each RCPT and, if one was accepted, DATA and a message."""
    codes = await dialogue(client, [EHLO, f"MAIL FROM:<{sender}>",
                                    *(f"RCPT TO:<{rcpt}>" for rcpt in recipients)])
    if 250 in codes[2:]:
        codes.append((await client.command("DATA"))[0])
        if codes[-1] == 354:
            await client.send(MESSAGE)
            codes.append((await client.reply())[0])
    return codes


@pytest.mark.gen_test
@pytest.mark.parametrize("sender, recipients, codes", [
    # The examples.
    ("a@example.com", ["rcpt-550@example.com", "b@example.com"], [250, 250, 550, 250, 354, 250]),
    ("alice+eod-451@example.com", ["b@example.com"], [250, 250, 250, 354, 451]),
    ("mail-421@example.com", [], [250, 421]),
    # A sender's tags hold for its whole transaction...
    ("a+rcpt-450@example.com", ["b@example.com", "c@example.com"], [250, 250, 450, 450]),
    ("a+data-554@example.com", ["b@example.com"], [250, 250, 250, 554]),
    # ...and a recipient's rcpt tag for itself, its data tags for the transaction.
    ("a@example.com", ["b+rcpt-452@example.com", "c@example.com"], [250, 250, 452, 250, 354,
                                                                     250]),
    ("a@example.com", ["b@example.com", "c+eod-552@example.com"], [250, 250, 250, 250, 354,
                                                                     552]),
    ("a@example.com", ["b+data-451@example.com"], [250, 250, 250, 451]),
    # A recipient's own tag beats the sender's, for the same stage.
    ("a+rcpt-550@example.com", ["b+rcpt-ok@example.com", "c@example.com"],
     [250, 250, 250, 550, 354, 250]),
    ("a+eod-451@example.com", ["b+eod-552@example.com"], [250, 250, 250, 354, 552]),
    # In any case.
    ("A+EOD-554@Example.com", ["RCPT-551@example.com", "b@example.com"],
     [250, 250, 551, 250, 354, 554]),
    # A refused recipient's data tags count for nothing.
    ("a+rcpt-550@example.com", ["b+rcpt-ok@example.com", "c+eod-554@example.com"],
     [250, 250, 250, 550, 354, 250]),
    # A tag for a stage that does not apply where it stands is ignored.
    ("a@example.com", ["mail-421@example.com"], [250, 250, 250, 354, 250]),
    ("helo-550+ehlo-550@example.com", ["quit-hang@example.com"], [250, 250, 250, 354, 250]),
    # Anything that is not a tag is an ordinary address.
    ("first-last@example.com", ["rcpt-650@example.com", "rcpt-bounce@example.com",
                                "rcpt-550-extra@example.com", "rcpt-550-delayx@example.com",
                                "rcpt-550+x@example.com", "b@rcpt-550.example.com"],
     [250, 250, 250, 250, 250, 250, 250, 250, 354, 250]),
])
async def test_tags(connect, sender, recipients, codes):
    client = await connect()
    assert await transaction(client, sender, *recipients) == codes


@pytest.mark.gen_test
async def test_a_senders_tags_end_with_its_transaction(connect):
    client = await connect()
    assert await transaction(client, "a+rcpt-550@example.com", "b@example.com") == [250, 250,
                                                                                   550]
    assert await dialogue(client, ["RSET", "MAIL FROM:<a@example.com>",
                                   "RCPT TO:<b@example.com>"]) == [250, 250, 250]
    assert (await transaction(client, "a+eod-451@example.com", "b@example.com"))[-1] == 451
    assert (await client.message(MESSAGE))[0] == 250  # the next message is untagged


@pytest.mark.gen_test(timeout=20)
async def test_a_tag_can_ask_for_a_delay_in_seconds_or_decimals(connect):
    client = await connect()
    await dialogue(client, [EHLO, "MAIL FROM:<a@example.com>"])
    for address, low in (("bob+rcpt-ok-delay0.3@example.com", 0.3),
                         ("rcpt-451-DELAY1@example.com", 1), ("b@example.com", 0)):
        started = time.monotonic()
        code = (await client.command(f"RCPT TO:<{address}>"))[0]
        assert code == (451 if "451" in address else 250)
        assert low <= time.monotonic() - started < low + 0.9


@pytest.mark.gen_test
async def test_a_drop_tag_closes_at_once(connect):
    client = await connect()
    await dialogue(client, [EHLO, "MAIL FROM:<a@example.com>", "RCPT TO:<carol+data-drop@x.org>"])
    await client.send(b"DATA\r\n")
    assert await client.closed()


@pytest.mark.gen_test
async def test_a_bdat_tag_refuses_chunks_but_not_the_last(connect):
    client = await connect()
    await dialogue(client, [EHLO, "MAIL FROM:<a+bdat-452@example.com>", "RCPT TO:<b@x.org>"])
    await client.send(b"BDAT 4\r\nbodyBDAT 4 LAST\r\nbody")
    assert [code for code, _ in await client.replies(2)] == [452, 250]


@pytest.mark.gen_test
@pytest.mark.parametrize("rules, sender, recipient, code", [
    ("rcpt:550", "a@example.com", "rcpt-ok@example.com", 250),  # a tag beats a rule
    ("rcpt:550", "a+rcpt-ok@example.com", "b@example.com", 250),
    ("mail:451", "mail-ok@example.com", None, 250),
    ("rcpt:550", "a@example.com", "rcpt-452@example.com", 452),
    ("rcpt:550", "a@example.com", "eod-451@example.com", 550),  # a rule beats what is no tag
])
async def test_tags_win_over_rules(serve, connect, rules, sender, recipient, code):
    client = await connect(serve(rules=rules))
    codes = await dialogue(client, [EHLO, f"MAIL FROM:<{sender}>",
                                    *([f"RCPT TO:<{recipient}>"] if recipient else [])])
    assert codes[-1] == code


@pytest.mark.gen_test
async def test_at_the_end_of_data_a_header_beats_a_tag_which_beats_a_rule(serve, connect):
    client = await connect(serve(mode="offline", rules="eod:452"))
    await dialogue(client, [EHLO])
    for sender, headers, code in (
        ("a@example.com", b"", 452),  # the rule beats the mode
        ("a+eod-451@example.com", b"", 451),  # the tag beats the rule
        ("a+eod-451@example.com", b"X-Blackhole-Mode: accept\r\n", 250),  # the header the tag
    ):
        await dialogue(client, [f"MAIL FROM:<{sender}>", "RCPT TO:<b@example.com>", "DATA"])
        await client.send(headers + MESSAGE)
        assert (await client.reply())[0] == code, sender


@pytest.mark.gen_test
async def test_dynamic_switch_false_turns_tags_off(serve, connect):
    client = await connect(serve(dynamic_switch=False))
    assert await transaction(client, "a+eod-451@example.com", "rcpt-550@example.com") == [
        250, 250, 250, 354, 250]


@pytest.mark.parametrize("address, stage, action, delay, token", [
    ("rcpt-550@example.com", Stage.RCPT, 550, None, "rcpt-550"),
    ("alice+eod-451@example.com", Stage.EOD, 451, None, "eod-451"),
    ("bob+rcpt-ok-delay3@example.com", Stage.RCPT, "ok", 3.0, "rcpt-ok-delay3"),
    ("carol+Data-Drop@example.com", Stage.DATA, "drop", None, "Data-Drop"),
    ("x+quit-hang-delay.5@example.com", Stage.QUIT, "hang", 0.5, "quit-hang-delay.5"),
    ("eod-ok-delay9999@example.com", Stage.EOD, "ok", 60.0, "eod-ok-delay9999"),  # as headers
    ("rset-550", Stage.RSET, 550, None, "rset-550"),  # no domain: all of it is the local part
])
def test_tag_text(address, stage, action, delay, token):
    found = tag(address)
    assert (found.stage, found.action, found.delay, found.token, found.tag) == (
        stage, action, delay, token, True)


@pytest.mark.parametrize("address", [
    "a@example.com", "first-last@example.com", "rcpt-650@example.com", "rcpt-@example.com",
    "-550@example.com", "rcpt-550-delay@example.com", "rcpt-550-delay-1@example.com",
    "rcpt-550-wait3@example.com", '"rcpt-550"@example.com', "lunch-550@example.com",
    "rcpt-550+a@example.com", "rcpt-550-delayinf@example.com",
])
def test_what_is_no_tag(address):
    assert tag(address) is None
