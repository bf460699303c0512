"""The command table: every SMTP verb, its RFC 5321 rules as data, and its handler.

A handler takes the session and the argument text and returns a Reply; the
session checks the row's rules (phase, line length) before calling it. Once
the command is found valid, the handler asks ``session.decide`` whether a
rule or tag answers instead (a Reply, or DROP or HANG); if so, the command
has no effect (issue 13, section 1).
"""

import enum
from types import MappingProxyType
from typing import Callable, Mapping, NamedTuple

from blackhole import auth, replies, syntax
from blackhole.policy import Stage
from blackhole.replies import Reply

# EXPN's test mailing lists (RFC 5321 3.5.2).
EXPN_LISTS = {
    "list1": ("Alice <alice@example.com>", "Bob <bob@example.com>",
              "Carol <carol@example.com>"),
    "list2": ("Dave <dave@example.com>", "Erin <erin@example.com>"),
    "list3": ("Frank <frank@example.com>",),
}


class Phase(enum.IntEnum):
    """Where a session stands in the order RFC 5321 4.1.4 imposes."""

    CONNECTED = 0  # greeted, but no HELO or EHLO yet
    GREETED = 1  # no mail transaction
    MAIL = 2  # sender given
    RCPT = 3  # at least one recipient accepted


class Refusal(Exception):
    """Raised by a handler to answer with ``reply`` instead."""

    def __init__(self, reply):
        super().__init__(reply)
        self.reply = reply


class Command(NamedTuple):
    """One row of the table."""

    handler: Callable[..., Reply]
    syntax: str  # what HELP shows
    refusals: Mapping = MappingProxyType({})  # Phase -> the 503 to give there
    ends_group: bool = False  # RFC 2920 3.1: the client must wait for the reply
    resets: bool = False  # success ends any transaction (RFC 5321 4.1.1.1, 4.1.1.5)
    max_line: int = 512  # octets with CRLF (RFC 5321 4.5.3.1.4, plus allowances)
    secret: bool = False  # only the argument's first word reaches the log


def ehlo_keywords(settings, starttls):
    """The extensions EHLO advertises; STARTTLS only where it can be used."""
    return (
        "PIPELINING",
        f"SIZE {settings.message_size_limit}",
        "8BITMIME",
        "BINARYMIME",
        "CHUNKING",
        "SMTPUTF8",
        *(("STARTTLS",) if starttls else ()),
        "AUTH " + " ".join(auth.MECHANISMS),
        "ENHANCEDSTATUSCODES",
        "VRFY",
        "EXPN",
        "ETRN",
        "DSN",
        "HELP",
    )


def _no_argument(handler):
    """Answer 501 when a verb that takes no argument gets one."""

    def checked(session, arg):
        return replies.NO_ARGUMENTS if arg else handler(session, arg)

    checked.__doc__ = handler.__doc__
    return checked


def helo(session, arg):
    """RFC 5321 4.1.1.1."""
    if not syntax.is_helo_domain(arg):
        return replies.SYNTAX_HELO
    if refusal := session.decide(Stage.HELO):
        return refusal  # no greeting: MAIL still needs one
    session.greet(extended=False)
    return session.settings.helo


def ehlo(session, arg):
    """RFC 5321 4.1.1.1; the keywords come from ehlo_keywords()."""
    if not syntax.is_helo_domain(arg):
        return replies.SYNTAX_LHLO if session.lmtp else replies.SYNTAX_HELO
    if refusal := session.decide(Stage.EHLO):
        return refusal
    session.greet(extended=True)
    settings = session.settings
    return settings.ehlo_starttls if session.starttls_offered else settings.ehlo


def _envelope(session, arg, keyword, errors, checks):
    """Parse a MAIL or RCPT argument and vet its parameters; Refusal if bad."""
    try:
        mailbox, params = syntax.envelope(arg, keyword)
    except syntax.ArgumentError as error:
        raise Refusal(errors[error.kind]) from None
    if params and not session.extended:
        # RFC 1869 4.5: parameters only after EHLO.
        raise Refusal(replies.UNKNOWN_PARAMETER)
    for key, value in params.items():
        check = checks.get(key)
        if check is None:
            raise Refusal(replies.UNKNOWN_PARAMETER)
        refusal = check(session, value)
        if refusal is not None:
            raise Refusal(refusal)
    return mailbox, params


def _size(session, value):
    """RFC 1870 6: SIZE=<octets>, refused at once when over the limit."""
    if value is None or not (value.isascii() and value.isdigit()) or len(value) > 20:
        return replies.BAD_PARAMETER
    limit = session.settings.message_size_limit
    if limit and int(value) > limit:
        return replies.SIZE_EXCEEDED
    return None


def _body(session, value):
    """RFC 6152 2 and RFC 3030 3: BODY=7BIT, 8BITMIME or BINARYMIME."""
    if value is None or value.upper() not in ("7BIT", "8BITMIME", "BINARYMIME"):
        return replies.BAD_PARAMETER
    return None


def _bare(session, value):
    """A keyword that takes no value (SMTPUTF8, RFC 6531 3.4)."""
    return None if value is None else replies.BAD_PARAMETER


def _ret(session, value):
    """RFC 3461 4.3: RET=FULL or RET=HDRS."""
    if value is None or value.upper() not in ("FULL", "HDRS"):
        return replies.BAD_PARAMETER
    return None


def _envid(session, value):
    """RFC 3461 4.4: ENVID=xtext, at most 100 characters."""
    if value is None or len(value) > 100 or not syntax.is_xtext(value):
        return replies.BAD_PARAMETER
    return None


def _notify(session, value):
    """RFC 3461 4.1: NOTIFY=NEVER or a list of SUCCESS, FAILURE, DELAY."""
    words = (value or "").upper().split(",")
    if words == ["NEVER"] or (
        len(set(words)) == len(words) and set(words) <= {"SUCCESS", "FAILURE", "DELAY"}
    ):
        return None
    return replies.BAD_PARAMETER


def _orcpt(session, value):
    """RFC 3461 4.2: ORCPT=addr-type;xtext."""
    kind, semicolon, address = (value or "").partition(";")
    if not (semicolon and kind and address and syntax.is_xtext(address)):
        return replies.BAD_PARAMETER
    return None


def _auth_sender(session, value):
    """RFC 4954 5: AUTH=<> or AUTH=xtext, accepted and ignored."""
    if value is None or not (value == "<>" or syntax.is_xtext(value)):
        return replies.BAD_PARAMETER
    return None


MAIL_PARAMETERS = {"SIZE": _size, "BODY": _body, "SMTPUTF8": _bare,
                   "RET": _ret, "ENVID": _envid, "AUTH": _auth_sender}
RCPT_PARAMETERS = {"NOTIFY": _notify, "ORCPT": _orcpt}
_MAIL_ERRORS = {"form": replies.SYNTAX_MAIL, "address": replies.BAD_SENDER,
                "parameter": replies.BAD_PARAMETER}
_RCPT_ERRORS = {"form": replies.SYNTAX_RCPT, "address": replies.BAD_RECIPIENT,
                "parameter": replies.BAD_PARAMETER}


def mail(session, arg):
    """RFC 5321 4.1.1.2: start a transaction."""
    mailbox, params = _envelope(session, arg, "FROM", _MAIL_ERRORS, MAIL_PARAMETERS)
    if mailbox and "@" not in mailbox:
        return replies.BAD_SENDER  # <postmaster> is a recipient only
    utf8 = "SMTPUTF8" in params
    if not (utf8 or mailbox.isascii()):
        return replies.UTF8_NOT_DECLARED
    tag = session.tag(mailbox)
    if refusal := session.decide(Stage.MAIL, tag):
        return refusal
    session.begin_transaction(utf8, (params.get("BODY") or "").upper() == "BINARYMIME", tag,
                              mailbox)
    return replies.SENDER_OK


def rcpt(session, arg):
    """RFC 5321 4.1.1.3: add a recipient, up to --max_recipients."""
    mailbox, _ = _envelope(session, arg, "TO", _RCPT_ERRORS, RCPT_PARAMETERS)
    if not mailbox:
        return replies.BAD_RECIPIENT
    if not (session.smtputf8 or mailbox.isascii()):
        return replies.UTF8_NOT_DECLARED
    if session.recipients >= session.settings.max_recipients:
        return replies.TOO_MANY_RECIPIENTS  # RFC 5321 4.5.3.1.10
    tag = session.tag(mailbox)
    if refusal := session.decide(Stage.RCPT, tag, mailbox):
        return refusal
    session.add_recipient(tag)
    return replies.RECIPIENT_OK


@_no_argument
def data(session, arg):
    """RFC 5321 4.1.1.4: the message follows, up to <CRLF>.<CRLF>."""
    if session.bdat:
        return replies.DATA_AFTER_BDAT  # RFC 3030 2: one or the other
    if session.binarymime:
        return replies.BINARYMIME_NEEDS_BDAT  # RFC 3030 3
    if refusal := session.decide(Stage.DATA):
        return refusal  # no message follows
    session.start_data()
    return replies.START_DATA


_BDAT_REFUSALS = {Phase.CONNECTED: replies.NEED_HELO, Phase.GREETED: replies.BDAT_NEEDS_MAIL,
                  Phase.MAIL: replies.BDAT_NEEDS_RCPT}


def bdat(session, arg):
    """RFC 3030 2: ``BDAT size [LAST]``; the chunk is read even when refused.

    The LAST chunk's answer is the end of data's; any other is decided here
    and given once the chunk is in: a refused chunk adds nothing to the message.
    """
    size, _, last = arg.partition(" ")
    if not (size.isascii() and size.isdigit()) or last.upper() not in ("", "LAST"):
        return replies.SYNTAX_BDAT  # no size to skip: nothing more can be done
    size = int(size)
    refusal = _BDAT_REFUSALS.get(session.phase)
    if refusal is None and not last:
        refusal = session.decide(Stage.BDAT)
    if refusal is not None:
        session.start_chunk(size, refusal, refused=True)
    else:
        received = Reply(250, f"{size} octets received", enhanced="2.0.0")
        session.start_chunk(size, None if last else received)
    return None  # answered once the chunk is in


def auth_(session, arg):
    """RFC 4954 4: PLAIN, LOGIN or CRAM-MD5; anything passes but ``fail=``."""
    if session.authenticated:
        return replies.AUTH_TWICE
    mechanism, _, initial = arg.partition(" ")
    if not mechanism:
        return replies.SYNTAX_AUTH
    exchange = auth.MECHANISMS.get(mechanism.upper())
    if exchange is None:
        return replies.AUTH_UNKNOWN_MECHANISM
    if initial == "*":
        return replies.AUTH_ABORTED
    try:
        initial = auth.initial_response(initial)
    except ValueError:  # binascii.Error, or non-ASCII text
        return replies.AUTH_BAD_BASE64
    session.start_auth(exchange(initial, session.settings.mailname))
    return None  # the exchange answers


@_no_argument
def rset(session, arg):
    """RFC 5321 4.1.1.5; the table's reset does the work."""
    if refusal := session.decide(Stage.RSET):
        return refusal  # the transaction stands
    session.renew_ident()
    return replies.OK


def noop(session, arg):
    """RFC 5321 4.1.1.9: any argument is ignored."""
    return session.decide(Stage.NOOP) or replies.OK


@_no_argument
def quit_(session, arg):
    """RFC 5321 4.1.1.10; refused, the session stays open (unless with 421)."""
    return session.decide(Stage.QUIT) or replies.BYE


def vrfy(session, arg):
    """RFC 5321 3.5.3: ``pass=`` is known, ``fail=`` unknown, the rest 252 as 1.x."""
    if not arg:
        return replies.SYNTAX_VRFY
    if refusal := session.decide(Stage.VRFY):
        return refusal
    if "fail=" in arg:
        return Reply(550, f"{arg} unknown", enhanced="5.7.1")
    if "pass=" in arg:
        return Reply(250, arg, enhanced="2.0.0")
    return replies.CANNOT_VRFY


def expn(session, arg):
    """RFC 5321 3.5.2: the members of a test list (EXPN_LISTS)."""
    if not arg:
        return replies.SYNTAX_EXPN
    if refusal := session.decide(Stage.EXPN):
        return refusal
    members = None if "fail=" in arg else EXPN_LISTS.get(arg.lower())
    if members is None:
        return Reply(550, f"{arg} unknown", enhanced="5.1.1")
    return Reply(250, *members, enhanced="2.1.5")


def etrn(session, arg):
    """RFC 1985: nothing is ever queued, so this is always done at once."""
    if not arg:
        return replies.SYNTAX_ETRN
    return session.decide(Stage.ETRN) or Reply(250, f"Queuing for node {arg} started",
                                                 enhanced="2.0.0")


def starttls(session, arg):
    """RFC 3207 4: the TLS switch itself is MailState's, once this reply is out."""
    if arg:
        return replies.SYNTAX_STARTTLS
    if session.secure:
        return replies.TLS_ACTIVE
    if not session.starttls_offered:
        return replies.TLS_UNAVAILABLE
    if refusal := session.decide(Stage.STARTTLS):
        return refusal  # the session stays plain
    session.begin_tls()
    return replies.READY_FOR_TLS


def help_(session, arg):
    """RFC 5321 4.1.1.8: the verbs, or one verb's syntax."""
    topic = _HELP.get(arg.upper()) if arg else _HELP_ALL
    if topic is None:
        return replies.UNKNOWN_HELP_TOPIC
    return session.decide(Stage.HELP) or topic



COMMANDS = {
    "HELO": Command(helo, "HELO domain", resets=True),
    "EHLO": Command(ehlo, "EHLO domain", ends_group=True, resets=True),
    "MAIL": Command(
        mail,
        "MAIL FROM:<address> [SIZE=n] [BODY=7BIT|8BITMIME] [SMTPUTF8]"
        " [RET=FULL|HDRS] [ENVID=id]",
        refusals={Phase.CONNECTED: replies.NEED_HELO, Phase.MAIL: replies.NESTED_MAIL,
                  Phase.RCPT: replies.NESTED_MAIL},
        # RFC 1870 (SIZE) +26, RFC 6531 (SMTPUTF8) +10, RFC 3461 (DSN) +100.
        max_line=512 + 26 + 10 + 100,
    ),
    "RCPT": Command(
        rcpt,
        "RCPT TO:<address> [NOTIFY=NEVER|SUCCESS,FAILURE,DELAY] [ORCPT=type;address]",
        refusals={Phase.CONNECTED: replies.RCPT_NEEDS_MAIL,
                  Phase.GREETED: replies.RCPT_NEEDS_MAIL},
        max_line=512 + 10 + 500,  # RFC 6531 +10, RFC 3461 +500
    ),
    "DATA": Command(data, "DATA", refusals={Phase.CONNECTED: replies.DATA_NEEDS_MAIL,
                                            Phase.GREETED: replies.DATA_NEEDS_MAIL,
                                            Phase.MAIL: replies.DATA_NEEDS_RCPT},
                    ends_group=True),
    "RSET": Command(rset, "RSET", resets=True),
    "NOOP": Command(noop, "NOOP [text]", ends_group=True),
    "QUIT": Command(quit_, "QUIT", ends_group=True),
    "VRFY": Command(vrfy, "VRFY address", ends_group=True),
    "EXPN": Command(expn, "EXPN list", ends_group=True),
    "ETRN": Command(etrn, "ETRN node"),
    "BDAT": Command(bdat, "BDAT size [LAST]"),
    "AUTH": Command(
        auth_, "AUTH PLAIN|LOGIN|CRAM-MD5 [initial-response]",
        refusals={Phase.CONNECTED: replies.NEED_HELO, Phase.MAIL: replies.AUTH_IN_TRANSACTION,
                  Phase.RCPT: replies.AUTH_IN_TRANSACTION},
        ends_group=True,
        max_line=12288,  # RFC 4954 4
        secret=True,
    ),
    "HELP": Command(help_, "HELP [command]"),
    "STARTTLS": Command(
        starttls, "STARTTLS",
        refusals={Phase.MAIL: replies.STARTTLS_IN_TRANSACTION,
                  Phase.RCPT: replies.STARTTLS_IN_TRANSACTION},
        ends_group=True,
    ),
}


def _use_lhlo(session, arg):
    return replies.USE_LHLO


# LMTP (RFC 2033 4.1): LHLO is EHLO, and LMTP has no HELO or EHLO. A rule
# for the ehlo stage applies to LHLO.
LMTP_COMMANDS = {
    **{verb: command._replace(refusals=MappingProxyType({
        phase: replies.NEED_LHLO if reply is replies.NEED_HELO else reply
        for phase, reply in command.refusals.items()}))
       for verb, command in COMMANDS.items()},
    "LHLO": COMMANDS["EHLO"]._replace(syntax="LHLO domain"),
    "HELO": Command(_use_lhlo, "HELO: not in LMTP"),
    "EHLO": Command(_use_lhlo, "EHLO: not in LMTP"),
}

# The longest line any verb accepts: input beyond this without a newline is refused.
MAX_LINE = max(command.max_line for command in COMMANDS.values())

_HELP = {
    verb: Reply(214, command.syntax, enhanced="2.0.0")
    for verb, command in {**COMMANDS, "LHLO": LMTP_COMMANDS["LHLO"]}.items()
}
_HELP_ALL = Reply(
    214,
    "Commands: " + " ".join(sorted(COMMANDS)),
    "HELP <command> shows its syntax",
    enhanced="2.0.0",
)
