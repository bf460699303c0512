"""The sans-I/O Session fuzzed: SMTP-shaped byte streams, split at arbitrary points.

A read can end anywhere (test_session.py splits fixed inputs every way), so
for any stream a client sends, split anyhow, nothing may escape receive(),
and the replies, message sizes and switches must be those of the stream fed
whole. CI runs a fixed set of examples (``CI``); ``scripts/fuzz`` runs the
same property, ``check``, on random ones for as long as asked.
"""

import base64
import logging
import random
import re
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

from blackhole import metrics
from blackhole.actions import CLOSE, MORE, START_TLS, Action, Pause
from blackhole.config import Settings
from blackhole.policy import MODES, Policy
from blackhole.protocol import MAX_BATCH, Session
from blackhole.replies import Reply

FUZZ = Path(__file__).resolve().parent.parent / "scripts" / "fuzz"
# CI: the same examples on every run (no new random one can make CI flaky),
# and no example database written into the checkout. About 20 s on an idle
# 2-core machine; more when it fails, for the shrinking. Inputs are big and
# slow to make by design: those health checks would only make it flaky.
CI = settings(
    max_examples=1500,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
# scripts/fuzz: fresh random examples on every run.
LONG = settings(CI, derandomize=False)


# What a client sends, piece by piece.

def lines(*texts):
    return st.sampled_from([text.encode() if isinstance(text, str) else text for text in texts])


# Mostly CRLF; the others are what a careless or hostile client sends.
ENDING = lines("\r\n", "\r\n", "\r\n", "\n", "\r\r\n", "\r", "")
DOMAIN = lines("x", "fuzz.example", "[127.0.0.1]", "", "dé.example", "a b", "-")
SENDER = lines("<a@x.example>", "<>", "<ü@x.example>", "a@x.example", "<a>", "<postmaster>",
               "<@r.example:a@x.example>")
MAIL_PARAMETER = lines(" SIZE=100", " SIZE=99999999", " SIZE=x", " BODY=8BITMIME",
                       " BODY=BINARYMIME", " BODY=7BIT", " SMTPUTF8", " RET=HDRS", " ENVID=a+2B",
                       " AUTH=<>", " FOO=1", " SIZE")
RECIPIENT = lines("<b@x.example>", "<postmaster>", "<ü@x.example>", "<>", "b@x.example")
RCPT_PARAMETER = lines(" NOTIFY=NEVER", " NOTIFY=SUCCESS,FAILURE", " NOTIFY=BOGUS",
                       " ORCPT=rfc822;b@x.example", " ORCPT=x")
SIMPLE = lines("RSET", "NOOP", ".", "..", ".NOOP", "NOOP hello", "QUIT", "VRFY x", "VRFY pass=x",
               "VRFY fail=x", "VRFY", "EXPN list1", "EXPN fail=list2", "EXPN", "HELP", "HELP mail", "HELP nope",
               "ETRN node", "ETRN", "STARTTLS", "STARTTLS now", "RSET now", "QUIT now",
               "DATA now", "DATA", "BDAT x", "BDAT 1 NOW", "rset", "nOoP", "FOO", "",
               "NO\x00OP", b"NO\xffOP", "QUıT", "MAIL", "RCPT", "MAIL TO:<a@x.example>")
MECHANISM = lines("PLAIN", "LOGIN", "CRAM-MD5", "plain", "XOAUTH2", "")
SECRETS = [b"\0user\0secret", b"\0fail=user\0secret", b"user", b"fail=user",
           b"user 0123456789abcdef0123456789abcdef", b""]
RESPONSE = st.one_of(
    st.sampled_from(SECRETS).map(base64.b64encode),
    lines("*", "=", "", "é", "!!!", b"\xff\xfe", "dXNlcg", "dXN lcg==", "AHVzZXIAc2VjcmV0 x"),
    st.text(max_size=12).map(str.encode),
)
HEADER = lines(
    "Subject: fuzz", "X-Blackhole-Mode: offline", "X-Blackhole-Mode: bounce",
    "X-Blackhole-Mode: random", "X-Blackhole-Mode: unavailable", "X-Blackhole-Mode: accept",
    "x-blackhole-mode:OFFLINE", "X-BLACKHOLE-MODE: offline ", "X-Blackhole-Mode: nonsense",
    "X-Blackhole-Mode:", "X-Blackhole-Mode offline", "X-Blackhole-Delay: 1",
    "X-Blackhole-Delay: 0.5, 2", "X-Blackhole-Delay: 5,1", "X-Blackhole-Delay: -1",
    "X-Blackhole-Delay: 100", "X-Blackhole-Delay: nan", "X-Blackhole-Delay: forever",
    " X-Blackhole-Mode: offline", "\tX-Blackhole-Delay: 1", " folded", "X-Blackhole-Mode: é",
    b"X-Blackhole-Mode: \xff", "X-Blackhole-Mode: off\x00line", "", " ", ".", "..",
)
BODY_LINE = st.one_of(
    lines(".", "..", ".x", "..x", "...", ". ", ".\r", ".\n."),  # dot-stuffed, or forgot to be
    lines("", "x", "X-Blackhole-Mode: offline", "\r", "\n", "\r\r", "a\rb", "a\nb", "\x00",
          b"\xff\xfe", "é ü", "\r.", "\n."),
    st.builds(lambda fill, size: fill * size, lines("L", ".", " ", "\r"),
              st.one_of(st.sampled_from([997, 998, 999, 1000, 1001, 4097]),
                        st.integers(0, 13000))),
    st.binary(max_size=40),
)
# Short runs of the octets the parsers care about.
NOISE = st.lists(lines(".", "\r", "\n", " ", ":", "X", "a", "\x00", b"\xff", "\r\n", "\r\n."),
                 max_size=24).map(b"".join)


@st.composite
def command(draw):
    """One command line, valid or not."""
    kind = draw(st.sampled_from(["greet", "mail", "rcpt", "simple", "auth"]))
    if kind == "greet":
        line = draw(lines("EHLO", "HELO", "ehlo", "EHLO  ")) + b" " + draw(DOMAIN)
    elif kind == "mail":
        line = (b"MAIL FROM:" + draw(SENDER)
                + b"".join(draw(st.lists(MAIL_PARAMETER, max_size=3))))
    elif kind == "rcpt":
        line = (b"RCPT TO:" + draw(RECIPIENT)
                + b"".join(draw(st.lists(RCPT_PARAMETER, max_size=2))))
    elif kind == "simple":
        line = draw(SIMPLE)
    else:
        return draw(login())
    return line + draw(ENDING)


@st.composite
def login(draw):
    """AUTH, maybe with an initial response, and the responses to its challenges."""
    line = b"AUTH " + draw(MECHANISM)
    if draw(st.booleans()):
        line += b" " + draw(RESPONSE)
    return b"".join(text + b"\r\n" for text in [line, *draw(st.lists(RESPONSE, max_size=2))])


@st.composite
def message(draw):
    """DATA content: header lines, maybe a blank line, body lines, maybe the end."""
    headers = draw(st.lists(st.tuples(HEADER, ENDING), max_size=6))
    blank = draw(lines("\r\n", "", "\n", "\r\r\n"))
    body = draw(st.lists(st.tuples(BODY_LINE, ENDING), max_size=6))
    end = draw(lines(*[".\r\n"] * 4, "\r\n.\r\n", ".\n", ".", ""))
    return b"".join(text + ending for text, ending in headers) + blank + \
        b"".join(text + ending for text, ending in body) + end


@st.composite
def chunk(draw, last=None):
    """BDAT n [LAST] with (almost always) exactly n octets after it."""
    payload = draw(st.one_of(message(), st.binary(max_size=64)))
    size = len(payload) + draw(st.sampled_from([0, 0, 0, 0, 1, -1]))
    if last is None:
        last = draw(lines(" LAST", "", " last"))
    return b"BDAT %d%s\r\n" % (max(size, 0), last) + payload


@st.composite
def transaction(draw):
    """MAIL, RCPT and then a message by DATA or BDAT: what gets past the envelope."""
    out = draw(lines("", "RSET\r\n")) + b"MAIL FROM:<a@x.example>"
    chunked = draw(st.booleans())
    out += draw(lines("", "", " SIZE=100", " BODY=8BITMIME", " SMTPUTF8",
                      *([" BODY=BINARYMIME"] if chunked else [])))
    out += b"\r\n" + b"RCPT TO:<b@x.example>\r\n" * draw(st.integers(1, 3))
    if not chunked:
        return out + b"DATA\r\n" + draw(message())
    chunks = draw(st.lists(chunk(last=b""), max_size=2))
    return out + b"".join(chunks) + draw(chunk(last=draw(lines(" LAST", " last", ""))))


# Enough commands at once to fill a batch (MAX_BATCH), none of them an error.
BURST = st.builds(lambda line, times: line * times,
                  lines("NOOP\r\n", "RSET\r\n", "HELP\r\n", "EHLO x\r\n", "VRFY x\r\n"),
                  st.integers(1, 300))
# Mostly transactions: ten bad commands end a session (MAX_ERRORS).
PART = st.one_of(
    transaction(), transaction(), transaction(), transaction(), transaction(), transaction(),
    command(), command(), BURST, chunk(), message(),
    RESPONSE.map(lambda response: response + b"\r\n"),  # inside an AUTH exchange, or not
    NOISE, st.binary(max_size=64),
)


class Config(NamedTuple):
    """How the session is set up: the settings, policy and listener that matter."""

    debug: bool
    mode: str
    delay: object
    message_size_limit: int
    max_recipients: int
    dynamic_switch: bool
    starttls: bool
    secure: bool


CONFIG = st.builds(
    Config,
    debug=st.booleans(),
    mode=st.sampled_from(sorted(MODES)),
    delay=st.sampled_from([0, 1, (0.0, 2.0)]),
    message_size_limit=st.sampled_from([512000, 0, 64]),
    max_recipients=st.sampled_from([1000, 2]),
    dynamic_switch=st.booleans(),
    starttls=st.booleans(),
    secure=st.booleans(),
)


class Case(NamedTuple):
    """One input: the session's setup, the stream, and where its reads end."""

    config: Config
    stream: bytes
    cuts: list  # drawn at random; splits() adds more

    def splits(self):
        """The reads to compare with the whole stream: ``cuts``, then ends of reads
        before, and after, every one of an octet the parsers look for, in turn.

        In turn, not all at once: a bug that needs a read of two octets hides
        when every octet is a read. Inside a run of one octet, only its ends.
        """
        yield self.cuts
        stream = self.stream
        for octet in b"\r\n. \t":
            found = [at for at, each in enumerate(stream) if each == octet
                     and not stream[at - 1 : at + 2] == bytes([octet]) * 3]
            if found:
                yield found
                yield [at + 1 for at in found]

    def reads(self, cuts):
        bounds = [0, *cuts, len(self.stream)]
        return [self.stream[start:end] for start, end in zip(bounds, bounds[1:])]


@st.composite
def cases(draw):
    config = draw(CONFIG)
    greeting = draw(lines(*["EHLO x\r\n"] * 6, "HELO x\r\n", ""))
    if draw(st.integers(0, 3)) == 3:  # log in first, as senders that authenticate do
        greeting += draw(login())
    stream = greeting + b"".join(draw(st.lists(PART, max_size=10)))
    if draw(st.booleans()):  # many reads, each short
        step = draw(st.integers(1, 64))
        cuts = list(range(step, len(stream), step))
    else:
        cuts = sorted(set(draw(st.lists(st.integers(0, len(stream)), max_size=24))))
    return Case(config, stream, cuts)


# Feeding a session as the I/O layer does, and recording what comes out.

class Counts(list):
    """Stands in for metrics.counts, keeping every increment in order."""

    def __init__(self):
        super().__init__([0] * metrics.SLOTS)
        self.increments = []

    def __setitem__(self, slot, value):
        self.increments.append((slot, value - self[slot]))
        super().__setitem__(slot, value)


class Formatting(logging.Handler):
    """Formats every debug record, so that a record that cannot be formatted raises."""

    def emit(self, record):
        self.format(record)


class Run(NamedTuple):
    replies: list  # wire bytes, and delays as numbers, in order
    increments: list  # (metrics slot, amount), in order
    sizes: list  # of each message, from the MESSAGE_BYTES increments


def wire(item):
    """A reply's bytes, a pause's seconds, an action's name; CRAM-MD5 challenges
    are unique by design."""
    if isinstance(item, Pause):
        return item.seconds
    if not isinstance(item, Reply):
        return item.name
    if item.code == 334 and base64.b64decode(item.lines[0]).startswith(b"<"):
        return b"334 <CRAM-MD5 challenge>\r\n"
    return item.wire


def run(config, chunks):
    """Feed ``chunks`` to a new Session, reads in that order; check the invariants on the way."""
    settings_ = Settings(mailname="fuzz.example", message_size_limit=config.message_size_limit,
                         max_recipients=config.max_recipients, debug=config.debug,
                         dynamic_switch=config.dynamic_switch)
    saved, counts = metrics.counts, Counts()
    logger = logging.getLogger("blackhole")
    saved_logging = logger.level, logger.propagate
    handler = Formatting()
    metrics.counts = counts
    if config.debug:
        logger.setLevel(logging.DEBUG)
        logger.propagate = False
        logger.addHandler(handler)
    try:
        # Modes and delay ranges draw: the same draws for every run.
        policy = Policy(config.mode, config.delay, draws=random.Random(0))
        session = Session(settings_, policy, starttls=config.starttls, secure=config.secure)
        out, last = [], None
        for data in chunks:
            if last is START_TLS:
                break  # the TLS handshake is next: what follows is no longer plain SMTP
            closed = last is CLOSE
            batch = session.receive(data)
            for _ in range(len(data) + 2):
                answered = [item for item in batch if isinstance(item, Reply)]
                assert len(answered) <= MAX_BATCH
                assert not (closed and batch), "answered after a closing reply"
                for item, after in zip(batch, batch[1:] + [None]):
                    if isinstance(item, Pause):
                        assert isinstance(after, Reply), "a pause is always followed by its reply"
                    elif isinstance(item, Action):
                        assert after is None, "an action comes last"
                    elif item.closes:
                        assert after is CLOSE, "a closing reply is followed by CLOSE"
                out += [item for item in batch if item is not MORE]  # where batches end
                last = batch[-1] if batch else None
                if last is not MORE:
                    break
                batch = session.receive(b"")
            else:
                raise AssertionError("the backlog never clears")
    finally:
        metrics.counts = saved
        logger.removeHandler(handler)
        logger.setLevel(saved_logging[0])  # setLevel: the logger caches what is enabled
        logger.propagate = saved_logging[1]
    sizes = [amount for slot, amount in counts.increments if slot == metrics.MESSAGE_BYTES]
    assert all(size >= 0 for size in sizes), f"a negative message size: {sizes}"
    return Run([wire(item) for item in out], counts.increments, sizes)


def check(case):
    """The property: the stream split as ``case.splits()`` says is answered as the whole one."""
    whole = run(case.config, [case.stream])
    for cuts in case.splits():
        reads = case.reads(cuts)
        try:
            split = run(case.config, reads)
        except Exception:
            note(f"reads: {reads!r}")
            raise
        if split != whole:
            note(f"reads: {reads!r}")
            note(f"whole: replies {brief(whole.replies)}, message sizes {whole.sizes}")
            note(f"split: replies {brief(split.replies)}, message sizes {split.sizes}")
        assert split.replies == whole.replies, "the replies depend on where reads end"
        assert split.sizes == whole.sizes, "message sizes depend on where reads end"
        assert split.increments == whole.increments, "the counters depend on where reads end"


def brief(replies):
    """Replies by their first line, for the failure report."""
    return [item.partition(b"\r\n")[0] if isinstance(item, bytes) else item for item in replies]


@CI
@given(cases())
def test_any_stream_split_anyhow_is_answered_as_when_whole(case):
    check(case)


def test_scripts_fuzz_runs_this_property_for_as_long_as_asked():
    """scripts/fuzz imports check() and cases() from here: it cannot drift from CI."""
    result = subprocess.run([sys.executable, str(FUZZ), "--seconds=3"],
                            capture_output=True, text=True, timeout=300)
    last = result.stdout.splitlines()[-1]
    if result.returncode == 0:
        assert re.fullmatch(r"[\d,]+ inputs tried in \d+ s, no failure", last), result.stdout
    else:  # a bug found: printed shrunk (the test above fails on it too)
        assert result.returncode == 1, result.stdout + result.stderr
        assert "case=Case(config=Config(" in result.stdout
        assert re.fullmatch(r"FAILED after [\d,]+ inputs \(shrinking included\) in \d+ s", last)
