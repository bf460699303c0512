"""Rules over loopback: every stage and action, refused commands without effect, odds."""

import random
import re
import smtplib
import time

import pytest
from tornado.tcpclient import TCPClient

from blackhole import tls
from blackhole.policy import HANG, STAGE_NAMES, Policy, Stage, parse_rules
from tests.conftest import HOST, Client, in_thread

TIMEOUT = 0.5  # --timeout, which ends a hang
DELAY = 0.3
EHLO, MAIL, RCPT = "EHLO client.example", "MAIL FROM:<a@example.com>", "RCPT TO:<b@example.com>"
ENHANCED = re.compile(r"[45]\.\d{1,3}\.\d{1,3} ")
# stage: (commands that lead to it, what its reply answers, the normal reply's code)
STAGES = {
    "connect": ((), b"", 220),
    "helo": ((), b"HELO client.example\r\n", 250),
    "ehlo": ((), b"EHLO client.example\r\n", 250),
    "starttls": ((EHLO,), b"STARTTLS\r\n", 220),
    "auth": ((EHLO,), b"AUTH PLAIN AGEAYg==\r\n", 235),
    "mail": ((EHLO,), MAIL.encode() + b"\r\n", 250),
    "rcpt": ((EHLO, MAIL), RCPT.encode() + b"\r\n", 250),
    "data": ((EHLO, MAIL, RCPT), b"DATA\r\n", 354),
    "bdat": ((EHLO, MAIL, RCPT), b"BDAT 4\r\nbody", 250),
    "eod": ((EHLO, MAIL, RCPT, "DATA"), b"Subject: rule\r\n\r\nbody\r\n.\r\n", 250),
    "rset": ((EHLO,), b"RSET\r\n", 250),
    "noop": ((EHLO,), b"NOOP\r\n", 250),
    "vrfy": ((EHLO,), b"VRFY someone\r\n", 252),
    "expn": ((EHLO,), b"EXPN list1\r\n", 250),
    "etrn": ((EHLO,), b"ETRN example.com\r\n", 250),
    "help": ((EHLO,), b"HELP\r\n", 214),
    "quit": ((EHLO,), b"QUIT\r\n", 221),
}
CODES = {"connect": 554, "helo": 550, "ehlo": 421, "starttls": 454, "auth": 454, "mail": 451,
         "rcpt": 550, "data": 554, "bdat": 452, "eod": 451, "rset": 451, "noop": 502,
         "vrfy": 550, "expn": 550, "etrn": 458, "help": 502, "quit": 550}


def test_every_stage_is_driven_here():
    assert list(STAGES) == list(CODES) == list(STAGE_NAMES)


@pytest.fixture(scope="module")
def context():
    return tls.server_context()


@pytest.fixture
def raw():
    """Connect raw clients that read nothing yet, not even the greeting."""
    clients = []

    async def open_client(port):
        client = Client(await TCPClient().connect(HOST, port))
        clients.append(client)
        return client

    yield open_client
    for client in clients:
        client.close()


async def reach(raw, port, stage):
    """Bring a session to ``stage``; return the client and when its reply became due."""
    before, trigger, _ = STAGES[stage]
    client = await raw(port)
    started = time.monotonic()
    if stage != "connect":
        assert (await client.reply())[0] == 220
        for line in before:
            assert (await client.command(line))[0] < 400, line
        started = time.monotonic()
        await client.send(trigger)
    return client, started


@pytest.mark.gen_test(timeout=20)
@pytest.mark.parametrize("stage", STAGES)
@pytest.mark.parametrize("action", ["code", "drop", "hang", "ok"])
async def test_every_stage_and_action(serve, raw, context, stage, action):
    rule = {"code": CODES[stage], "ok": f"ok:delay={DELAY}"}.get(action, action)
    port = serve(rules=f"{stage}:{rule}", timeout=TIMEOUT,
                 tls=context if stage == "starttls" else None)
    client, started = await reach(raw, port, stage)
    if action == "code":
        code, text = await client.reply()
        assert code == CODES[stage]
        # RFC 2034 3: no enhanced status code on the greeting or to HELO/EHLO.
        assert bool(ENHANCED.match(text)) == (stage not in ("connect", "helo", "ehlo")), text
        if code == 421:  # RFC 5321 3.8
            assert await client.closed()
    elif action == "drop":
        assert await client.closed()  # and not a byte before
    elif action == "hang":
        await client.send(b"NOOP\r\n" * 100)  # read and thrown away
        assert await client.closed()
        assert time.monotonic() - started >= TIMEOUT - 0.05  # not the idle sweep's 421
    else:
        assert (await client.reply())[0] == STAGES[stage][2]
        assert time.monotonic() - started >= DELAY - 0.02


def test_the_catalogue_has_the_issues_examples():
    rules = parse_rules("rcpt:550, mail:451, eod:421, connect:421")
    assert [rule.answer.wire for rule in rules] == [
        b"550 5.1.1 Recipient address rejected: mailbox unavailable\r\n",
        b"451 4.3.0 Requested action aborted: local error in processing\r\n",
        b"421 4.3.2 Service not available, closing transmission channel\r\n",
        b"421 Service not available, closing transmission channel\r\n",
    ]


@pytest.mark.parametrize("stage", STAGES)
@pytest.mark.parametrize("code", [400, 421, 450, 451, 499, 500, 503, 550, 554, 599])
def test_any_code_at_any_stage_gets_a_well_formed_reply(stage, code):
    reply = parse_rules(f"{stage}:{code}")[0].answer
    line = reply.wire.decode()
    assert line.startswith(f"{code} ") and line.endswith("\r\n") and len(line) > 6
    enhanced = ENHANCED.match(line[4:])
    if stage in ("connect", "helo", "ehlo"):
        assert not enhanced
    else:
        assert enhanced and enhanced.group(0)[0] == str(code)[0]
    assert not reply.error  # the server's choice: never one of the client's ten errors
    assert reply.closes == (code == 421)


@pytest.mark.gen_test
async def test_a_greeting_that_refuses_serves_only_quit(serve, connect):
    client = await connect(serve(rules="connect:554"))
    assert client.greeting == (554, "No SMTP service here")
    for line in (EHLO, MAIL, "AUTH PLAIN AGEAYg==", "QUIT now", "BDAT 4"):
        assert await client.command(line) == (503, "5.5.1 No SMTP service here: only QUIT")
    assert (await client.command("X" * 13000))[0] == 500  # too long, and no way out
    assert (await client.command(EHLO))[0] == 503
    assert await client.command("QUIT") == (221, "2.0.0 Thank you for speaking to me")
    assert await client.closed()


@pytest.mark.gen_test
async def test_a_greeting_of_421_closes(serve, raw):
    client = await raw(serve(rules="connect:421"))
    assert await client.reply() == (421, "Service not available, closing transmission channel")
    assert await client.closed()


@pytest.mark.gen_test
async def test_the_greeting_waits_for_a_connect_rule_only(serve, raw):
    """--delay spares the greeting (as ever); a connect rule's delay does not."""
    for rules, low, high in (("", 0, DELAY), (f"connect:ok:delay={DELAY}", DELAY, 3)):
        started = time.monotonic()
        client = await raw(serve(delay=1, rules=rules))
        assert (await client.reply())[0] == 220
        assert low <= time.monotonic() - started < high


# A refused command has no effect (issue 13, section 1): each row is the
# rule, the dialogue, and the replies it gets.
NO_EFFECT = [
    ("ehlo:550", [EHLO, MAIL], [550, 503]),  # not greeted
    ("helo:550", ["HELO client.example", MAIL], [550, 503]),
    ("mail:451", [EHLO, MAIL, RCPT], [250, 451, 503]),  # no transaction
    ("rcpt:550", [EHLO, MAIL, RCPT, "DATA"], [250, 250, 550, 503]),  # no recipient
    ("data:554", [EHLO, MAIL, RCPT, "DATA", "Subject: x"], [250, 250, 250, 554, 500]),
    ("eod:554", [EHLO, MAIL, RCPT, "DATA", ".", RCPT], [250, 250, 250, 354, 554, 503]),
    ("rset:451", [EHLO, MAIL, "RSET", RCPT], [250, 250, 451, 250]),  # the transaction stands
    ("auth:454", [EHLO, "AUTH PLAIN AGEAYg==", "AUTH PLAIN AGEAYg=="], [250, 454, 454]),
    ("quit:550", [EHLO, "QUIT", "NOOP"], [250, 550, 250]),  # the session stays open
    ("ehlo:ok:delay=0", [EHLO, MAIL], [250, 250]),  # ok: the command goes through
]


@pytest.mark.gen_test
@pytest.mark.parametrize("rules, lines, codes", NO_EFFECT)
async def test_a_refused_command_has_no_effect(serve, connect, rules, lines, codes):
    client = await connect(serve(rules=rules))
    assert [(await client.command(line))[0] for line in lines] == codes


@pytest.mark.gen_test
async def test_a_refused_auth_leaves_the_client_unauthenticated(serve, connect):
    """Authenticated, a second AUTH would get 503: refused, it is run again."""
    client = await connect(serve(rules="auth:535"))
    await client.command(EHLO)
    assert (await client.command("AUTH PLAIN AGEAYg=="))[0] == 535
    assert await client.command("AUTH PLAIN") == (334, "")
    assert (await client.command("AGEAYg=="))[0] == 535


@pytest.mark.gen_test
async def test_a_refused_starttls_leaves_the_session_plain(serve, connect, context):
    client = await connect(serve(tls=context, rules="starttls:454"))
    await client.command(EHLO)
    assert await client.command("STARTTLS") == (454, "4.7.0 TLS not available due to "
                                                     "temporary reason")
    code, text = await client.command(EHLO)  # in plaintext, and STARTTLS still on offer
    assert code == 250 and "STARTTLS" in text.split("\n")


@pytest.mark.gen_test
async def test_a_refused_chunk_is_read_whole_and_adds_nothing(serve, connect):
    client = await connect(serve(rules="bdat:452", message_size_limit=10))
    for line in (EHLO, MAIL, RCPT):
        await client.command(line)
    await client.send(b"BDAT 8\r\nNOOPNOOPNOOP\r\n")  # 8 octets eaten, then a NOOP
    assert [code for code, _ in await client.replies(2)] == [452, 250]
    # Counted, the refused chunk would take this one over the limit (552).
    await client.send(b"BDAT 8 LAST\r\n12345678")
    assert await client.reply() == (250, "2.0.0 OK")
    # Nor did it make the transaction a BDAT one: DATA is still fine.
    for line in (MAIL, RCPT):
        await client.command(line)
    assert (await client.command("DATA"))[0] == 354


@pytest.mark.gen_test
@pytest.mark.parametrize("rules, lines, codes", [
    # Sequence, syntax and limit refusals are answered as always.
    ("mail:451", ["MAIL FROM:<a@example.com>"], [503]),
    ("mail:451", [EHLO, "MAIL FROM:nobody"], [250, 501]),
    ("mail:451", [EHLO, "MAIL FROM:<a@example.com> SIZE=99999"], [250, 552]),
    ("help:502", ["HELP NOSUCH", "HELP"], [504, 502]),
    ("vrfy:554", ["VRFY"], [501]),
    ("quit:550", ["QUIT now"], [501]),
])
async def test_checks_come_before_the_rules(serve, connect, rules, lines, codes):
    client = await connect(serve(rules=rules, message_size_limit=1000))
    assert [(await client.command(line))[0] for line in lines] == codes


@pytest.mark.gen_test
async def test_too_many_recipients_beats_rules_and_tags(serve, connect):
    client = await connect(serve(rules="rcpt:550", max_recipients=1))
    for line in (EHLO, MAIL):
        await client.command(line)
    assert (await client.command("RCPT TO:<rcpt-ok@example.com>"))[0] == 250  # tag > rule
    assert (await client.command("RCPT TO:<rcpt-ok@example.com>"))[0] == 452
    assert (await client.command(RCPT))[0] == 452


@pytest.mark.gen_test
async def test_rule_refusals_never_count_as_errors(serve, connect):
    """Ten of the client's bad commands end a session; the server's own 502s do not."""
    client = await connect(serve(rules="noop:502"))
    assert [(await client.command("NOOP"))[0] for _ in range(15)] == [502] * 15


@pytest.mark.gen_test
async def test_a_rule_replaces_the_mode_at_the_end_of_data(serve, connect):
    client = await connect(serve(mode="offline", rules="eod:452"))
    await client.command(EHLO)
    assert (await client.message(b"Subject: x\r\n\r\nbody\r\n.\r\n"))[0] == 452


@pytest.mark.gen_test
async def test_a_rules_delay_replaces_the_default(serve, connect):
    client = await connect(serve(delay=2, rules="noop:ok:delay=0, rset:550:delay=0.2"))
    for line, code, high in (("NOOP", 250, 0.5), ("RSET", 550, 1)):
        started = time.monotonic()
        assert (await client.command(line))[0] == code
        assert time.monotonic() - started < high


@pytest.mark.gen_test
async def test_rules_of_a_stage_are_tried_in_order(serve, connect):
    """The first to fire decides: the third rule is never reached."""
    client = await connect(serve(rules="noop:451:50%, noop:452, noop:550", seed=1))
    await client.send(b"NOOP\r\n" * 200)
    codes = [code for code, _ in await client.replies(200)]
    assert set(codes) == {451, 452}
    assert 70 <= codes.count(451) <= 130


@pytest.mark.gen_test(timeout=60)
async def test_odds_fire_as_often_as_asked_and_a_seed_repeats_them(serve, connect):
    def sequence_of(seed):
        return connect(serve(rules="noop:550:10%", seed=seed))

    seen = []
    for seed in (13, 13, 14):
        client = await sequence_of(seed)
        await client.send(b"NOOP\r\n" * 1000)
        seen.append([code for code, _ in await client.replies(1000)])
    assert 60 <= seen[0].count(550) <= 140
    assert seen[0] == seen[1]
    assert seen[0] != seen[2]


def test_a_draw_is_taken_only_where_something_is_left_to_chance():
    draws = random.Random(1)
    state = draws.getstate()
    policy = Policy("accept", 2, parse_rules("noop:550, rcpt:ok:delay=3, eod:451"), draws)
    for stage in range(len(STAGE_NAMES)):
        rule = policy.decide(stage)
        policy.pause(None if rule is None else rule.delay)
    policy.end_of_data({"mode": "offline", "delay": 5.0})
    assert draws.getstate() == state
    for chance in ("noop:550:50%", "noop:ok:delay=1-2", "eod:550:99.9%"):
        policy = Policy(rules=parse_rules(chance), draws=draws)
        rule = policy.decide(Stage.NOOP) or policy.decide(Stage.EOD)
        if rule is not None:
            policy.pause(rule.delay)
        assert draws.getstate() != state, chance
        state = draws.getstate()
    Policy("bounce", draws=draws).end_of_data()
    assert draws.getstate() != state


@pytest.mark.parametrize("text, parsed", [
    ("", []),
    ("rcpt:550:10%", [(Stage.RCPT, 550, 0.1, None)]),
    ("eod:451:5%, connect:421:1%", [(Stage.EOD, 451, 0.05, None),
                                    (Stage.CONNECT, 421, 0.01, None)]),
    ("ehlo:ok:delay=2-5", [(Stage.EHLO, "ok", 1.0, (2.0, 5.0))]),
    ("data:drop:0.5%", [(Stage.DATA, "drop", 0.005, None)]),
    ("quit:hang", [(Stage.QUIT, "hang", 1.0, None)]),
    ("mail:451:delay=1:50%,RCPT:HANG:.5%", [(Stage.MAIL, 451, 0.5, 1.0),
                                            (Stage.RCPT, "hang", 0.005, None)]),
    ("bdat:599:100%:delay=0.5-0.5", [(Stage.BDAT, 599, 1.0, 0.5)]),
])
def test_rule_text(text, parsed):
    assert [rule[:4] for rule in parse_rules(text)] == parsed


def test_a_rule_keeps_its_text_and_its_answer():
    rule, = parse_rules(" eod:hang:delay=1 ")
    assert (rule.token, rule.answer, rule.tag) == ("eod:hang:delay=1", HANG, False)


BAD_RULES = [
    ("rcpt:650", "the code must be 4xx or 5xx"),
    ("rcpt:42", "the code must be 4xx or 5xx"),
    ("rcpt:4500", "the code must be 4xx or 5xx"),
    ("rcpt", "expected STAGE:ACTION[:N%][:delay=N|MIN-MAX]"),
    ("rcpt:", "expected STAGE:ACTION[:N%][:delay=N|MIN-MAX]"),
    ("lunch:550", "unknown stage 'lunch': one of connect, helo, ehlo, starttls, auth, mail, "
                  "rcpt, data, bdat, eod, rset, noop, vrfy, expn, etrn, help, quit"),
    ("rcpt:bounce", "unknown action 'bounce': a 4xx or 5xx code, drop, hang or ok"),
    ("rcpt:550:0%", "the odds must be above 0% and at most 100%"),
    ("rcpt:550:100.5%", "the odds must be above 0% and at most 100%"),
    ("rcpt:550:-5%", "the odds must be above 0% and at most 100%"),
    ("rcpt:550:nan%", "the odds must be above 0% and at most 100%"),
    ("rcpt:550:10%:20%", "the odds are given twice"),
    ("rcpt:550:delay=1:delay=2", "the delay is given twice"),
    ("rcpt:550:delay=5-1", "bad delay '5-1': N or MIN-MAX seconds, MIN <= MAX"),
    ("rcpt:550:delay=1-2-3", "bad delay '1-2-3': N or MIN-MAX seconds, MIN <= MAX"),
    ("rcpt:550:delay=inf", "bad delay 'inf': N or MIN-MAX seconds, MIN <= MAX"),
    ("rcpt:550:delay=", "bad delay '': N or MIN-MAX seconds, MIN <= MAX"),
    ("rcpt:550:sometimes", "unknown modifier 'sometimes': N% or delay=N|MIN-MAX"),
    ("rcpt:550:", "unknown modifier '': N% or delay=N|MIN-MAX"),
]


@pytest.mark.parametrize("text, reason", BAD_RULES)
def test_bad_rule_text(text, reason):
    with pytest.raises(ValueError) as raised:
        parse_rules(f"noop:ok, {text}")
    assert str(raised.value) == f"Invalid rule '{text}': {reason}"


@pytest.mark.gen_test
async def test_smtplib_sees_each_refusal_as_the_right_exception(serve):
    def run(rules, exchange):
        port = serve(rules=rules)

        def client():
            with smtplib.SMTP(HOST, port, timeout=10) as smtp:
                exchange(smtp)

        return in_thread(client)

    def send(smtp):
        smtp.sendmail("a@example.com", ["b@example.com"], b"Subject: x\r\n\r\nbody\r\n")

    for rules, exchange, error, code in [
        ("helo:550, ehlo:550", send, smtplib.SMTPHeloError, 550),
        ("mail:451", send, smtplib.SMTPSenderRefused, 451),
        ("rcpt:550", send, smtplib.SMTPRecipientsRefused, None),
        ("data:554", send, smtplib.SMTPDataError, 554),
        ("eod:552", send, smtplib.SMTPDataError, 552),
        ("auth:454", lambda smtp: smtp.login("user", "secret"),
         smtplib.SMTPAuthenticationError, 454),
        ("data:drop", send, smtplib.SMTPServerDisconnected, None),
        ("eod:421", send, smtplib.SMTPDataError, 421),
    ]:
        with pytest.raises(error) as raised:
            await run(rules, exchange)
        if code is not None:
            assert raised.value.smtp_code == code, rules
    for rules in ("connect:421", "connect:554"):
        with pytest.raises(smtplib.SMTPConnectError):
            await run(rules, send)
    await run("ehlo:550", send)  # smtplib falls back to HELO, as it should
