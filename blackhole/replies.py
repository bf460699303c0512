"""The reply catalogue: every line blackhole sends, encoded once.

Enhanced status codes follow RFC 2034/3463; they are left off the greeting,
the HELO/EHLO replies and 3xx replies, as RFC 2034 section 3 says.  Texts are
the 1.x ones wherever 1.x had one.
"""

import functools

# Replies that mean "your command was wrong"; enough of them end the session.
_COMMAND_ERRORS = frozenset((500, 501, 502, 503, 504, 555))


class Reply:
    """One SMTP reply, single- or multi-line, with its bytes ready to write."""

    __slots__ = ("code", "lines", "wire", "closes", "error")

    def __init__(self, code, *lines, enhanced=None, error=None):
        """``error``: whether it blames the client's command; by default, by its code."""
        self.code = code
        if enhanced:
            lines = tuple(f"{enhanced} {line}" for line in lines)
        self.lines = lines or ("",)
        last = len(self.lines) - 1
        self.wire = "".join(
            f"{code}{' ' if i == last else '-'}{line}\r\n"
            for i, line in enumerate(self.lines)
        ).encode()
        # RFC 5321 3.8: 421 is a promise to close; 221 answers QUIT.
        self.closes = code in (221, 421)
        self.error = code in _COMMAND_ERRORS if error is None else error

    def __repr__(self):
        return f"<Reply {self.wire!r}>"


def greeting(mailname, version):
    """The 220 banner, as 1.x wrote it."""
    return Reply(220, f"{mailname} [blackhole {version}]")


# Replies to commands that went through.
OK = Reply(250, "OK", enhanced="2.0.0")
SENDER_OK = Reply(250, "OK", enhanced="2.1.0")
RECIPIENT_OK = Reply(250, "OK", enhanced="2.1.5")
START_DATA = Reply(354, "Start mail input; end with <CRLF>.<CRLF>")
CANNOT_VRFY = Reply(
    252, "OK, cannot VRFY user but will attempt delivery", enhanced="2.0.0"
)
BYE = Reply(221, "Thank you for speaking to me", enhanced="2.0.0")
READY_FOR_TLS = Reply(220, "Ready to start TLS", enhanced="2.0.0")

# Replies to commands blackhole could not understand or take now.
UNKNOWN_COMMAND = Reply(500, "Command not recognized", enhanced="5.5.1")
LINE_TOO_LONG = Reply(500, "Line too long", enhanced="5.5.2")
BAD_CHARACTERS = Reply(
    500, "Command contains NUL or is not valid UTF-8", enhanced="5.5.2"
)
NO_ARGUMENTS = Reply(501, "This command takes no arguments", enhanced="5.5.4")
SYNTAX_HELO = Reply(501, "Syntax: HELO/EHLO domain", enhanced="5.5.4")
SYNTAX_LHLO = Reply(501, "Syntax: LHLO domain", enhanced="5.5.4")
SYNTAX_VRFY = Reply(501, "Syntax: VRFY address", enhanced="5.5.4")
SYNTAX_MAIL = Reply(501, "Syntax: MAIL FROM:<address> [parameters]", enhanced="5.5.4")
SYNTAX_RCPT = Reply(501, "Syntax: RCPT TO:<address> [parameters]", enhanced="5.5.4")
BAD_SENDER = Reply(501, "Bad sender address syntax", enhanced="5.1.7")
BAD_RECIPIENT = Reply(501, "Bad recipient address syntax", enhanced="5.1.3")
BAD_PARAMETER = Reply(501, "Bad parameter syntax", enhanced="5.5.4")
UNKNOWN_PARAMETER = Reply(
    555, "Parameter not recognized or not implemented", enhanced="5.5.4"
)
UTF8_NOT_DECLARED = Reply(
    553, "Non-ASCII address needs MAIL FROM with SMTPUTF8", enhanced="5.6.7"
)
UNKNOWN_HELP_TOPIC = Reply(504, "No help for that topic", enhanced="5.5.1")
SYNTAX_STARTTLS = Reply(501, "Syntax: STARTTLS", enhanced="5.5.4")
TLS_UNAVAILABLE = Reply(502, "STARTTLS not available", enhanced="5.5.1")
TLS_ACTIVE = Reply(503, "TLS already active", enhanced="5.5.1")
STARTTLS_IN_TRANSACTION = Reply(503, "STARTTLS not allowed in a mail transaction",
                                enhanced="5.5.1")
NEED_HELO = Reply(503, "Send HELO or EHLO first", enhanced="5.5.1")
NEED_LHLO = Reply(503, "Send LHLO first", enhanced="5.5.1")
USE_LHLO = Reply(500, "This is LMTP: use LHLO", enhanced="5.5.1")  # RFC 2033 4.1
NESTED_MAIL = Reply(503, "Sender already given", enhanced="5.5.1")
RCPT_NEEDS_MAIL = Reply(503, "Need MAIL before RCPT", enhanced="5.5.1")
DATA_NEEDS_MAIL = Reply(503, "Need MAIL before DATA", enhanced="5.5.1")
DATA_NEEDS_RCPT = Reply(503, "Need RCPT before DATA", enhanced="5.5.1")
BINARYMIME_NEEDS_BDAT = Reply(503, "BODY=BINARYMIME needs BDAT", enhanced="5.5.1")
DATA_AFTER_BDAT = Reply(503, "DATA not allowed after BDAT", enhanced="5.5.1")
BDAT_NEEDS_MAIL = Reply(503, "Need MAIL before BDAT", enhanced="5.5.1")
BDAT_NEEDS_RCPT = Reply(503, "Need RCPT before BDAT", enhanced="5.5.1")
SYNTAX_BDAT = Reply(501, "Syntax: BDAT size [LAST]", enhanced="5.5.4")
SYNTAX_AUTH = Reply(501, "Syntax: AUTH mechanism [initial-response]", enhanced="5.5.4")
SYNTAX_ETRN = Reply(501, "Syntax: ETRN node", enhanced="5.5.4")
SYNTAX_EXPN = Reply(501, "Syntax: EXPN list", enhanced="5.5.4")
AUTH_OK = Reply(235, "Authentication successful", enhanced="2.7.0")
AUTH_FAILED = Reply(535, "Authentication failed", enhanced="5.7.8")
AUTH_ABORTED = Reply(501, "Authentication aborted", enhanced="5.7.0")
AUTH_BAD_BASE64 = Reply(501, "Invalid base64 data", enhanced="5.5.2")
AUTH_UNKNOWN_MECHANISM = Reply(504, "Unrecognized authentication type", enhanced="5.5.4")
AUTH_TWICE = Reply(503, "Already authenticated", enhanced="5.5.1")
AUTH_IN_TRANSACTION = Reply(503, "AUTH not allowed in a mail transaction",
                            enhanced="5.5.1")
TOO_MANY_RECIPIENTS = Reply(452, "Too many recipients", enhanced="4.5.3")
SIZE_EXCEEDED = Reply(
    552, "Message size exceeds fixed maximum message size", enhanced="5.3.4"
)
DATA_LINE_TOO_LONG = Reply(
    554, "Message has a line longer than 1000 octets", enhanced="5.6.0"
)
TOO_MANY_ERRORS = Reply(421, "Too many errors, closing connection", enhanced="4.7.0")
TIMEOUT = Reply(421, "Error: timeout exceeded, closing connection", enhanced="4.4.2")
TOO_MANY_CONNECTIONS = Reply(421, "Too many connections, try again later",
                             enhanced="4.3.2")
# --max_rate and --greylist (issue 13, section 4): policy refusals, RFC 3463 X.7.1.
TOO_MUCH_MAIL = Reply(450, "Too much mail, try again later", enhanced="4.7.1")
MAKING_ROOM = Reply(421, "Too busy to wait for an idle client, closing connection",
                    enhanced="4.4.2")
SHUTTING_DOWN = Reply(421, "Shutting down, try again later", enhanced="4.3.2")
# After a greeting that refused service: anything but QUIT (RFC 5321 3.1).
NOT_SERVING = Reply(503, "No SMTP service here: only QUIT", enhanced="5.5.1")

# The end-of-data replies a mode can choose from, by code (texts from 1.x;
# 431 had none and crashed 1.x, so it gets one here).
END_OF_DATA = {
    reply.code: reply
    for reply in (
        OK,
        Reply(421, "Service not available, closing transmission channel",
              enhanced="4.3.2"),
        Reply(431, "Not enough space on the disk", enhanced="4.3.1"),
        Reply(450, "Requested mail action not taken: mailbox unavailable",
              enhanced="4.2.1"),
        Reply(451, "Requested action aborted: local error in processing",
              enhanced="4.3.0"),
        Reply(452, "Requested action not taken: insufficient system storage",
              enhanced="4.3.1"),
        Reply(454, "TLS not available due to temporary reason", enhanced="4.7.0"),
        Reply(458, "Unable to queue message", enhanced="4.3.0"),
        Reply(459, "Not allowed: unknown reason", enhanced="4.7.0"),
        Reply(521, "Machine does not accept mail", enhanced="5.3.2"),
        Reply(534, "Authentication mechanism is too weak", enhanced="5.7.9"),
        Reply(550, "Requested action not taken: mailbox unavailable",
              enhanced="5.2.1"),
        Reply(551, "User not local", enhanced="5.1.6"),
        Reply(552, "Requested mail action aborted: exceeded storage allocation",
              enhanced="5.2.2"),
        Reply(553, "Requested action not taken: mailbox name not allowed",
              enhanced="5.1.3"),
        Reply(554, "Transaction failed", enhanced="5.0.0"),
        Reply(571, "Blocked", enhanced="5.7.1"),
    )
}


# The texts a rule's or tag's code gets (RFC 5321 4.2.2, RFC 3463 detail
# codes): the end-of-data ones of 1.x and these, else one by the code's class.
_BY_CODE = {
    **{code: (reply.lines[0].partition(" ")[0], reply.lines[0].partition(" ")[2])
       for code, reply in END_OF_DATA.items()},
    455: ("4.5.4", "Server unable to accommodate parameters"),
    500: ("5.5.2", "Syntax error, command unrecognized"),
    501: ("5.5.4", "Syntax error in parameters or arguments"),
    502: ("5.5.1", "Command not implemented"),
    503: ("5.5.1", "Bad sequence of commands"),
    504: ("5.5.4", "Command parameter not implemented"),
    530: ("5.7.0", "Authentication required"),
    535: ("5.7.8", "Authentication credentials invalid"),
    555: ("5.5.4", "MAIL FROM/RCPT TO parameters not recognized or not implemented"),
}
# Where a stage has a better word for a code than the code alone.
_BY_STAGE = {
    ("connect", 554): ("", "No SMTP service here"),  # RFC 5321 3.1
    ("connect", 521): ("", "Server does not accept mail"),  # RFC 7504
    ("mail", 550): ("5.7.1", "Sender address rejected: access denied"),
    ("mail", 553): ("5.1.7", "Sender address rejected: mailbox name not allowed"),
    ("rcpt", 550): ("5.1.1", "Recipient address rejected: mailbox unavailable"),
    ("auth", 454): ("4.7.0", "Temporary authentication failure"),  # RFC 4954 6
}
# RFC 2034 3: no enhanced code on the greeting or the HELO/EHLO replies.
_PLAIN_STAGES = ("connect", "helo", "ehlo")


@functools.lru_cache(maxsize=64)
def greylisted(seconds):
    """451 to a triplet's first RCPT, saying how long its retry must wait."""
    return Reply(451, f"Greylisted, try again in {seconds} seconds", enhanced="4.7.1")


def refusal(stage, code):
    """The reply a rule or a tag gives with ``code`` (4xx or 5xx) at ``stage``.

    Never counted as the client's error: it is the server's own choice.
    """
    enhanced, text = _BY_STAGE.get((stage, code)) or _BY_CODE.get(code) or (
        ("4.0.0", "Requested action not taken: try again later") if code < 500
        else ("5.0.0", "Requested action not taken"))
    return Reply(code, text, enhanced=None if stage in _PLAIN_STAGES else enhanced,
                 error=False)
