"""The SMTP session without I/O: bytes in, what to do out.

What comes out is a list of Replies, each perhaps after a Pause, and last at
most one action for the I/O layer (blackhole.actions: DROP, HANG, CLOSE,
START_TLS, MORE). Every reply's decision goes to the policy (``decide``):
the greeting's at ``connected``, a command's once it is found valid, the
end of data's.

The session keeps the dialogue's state and owns the receive buffer.
Complete command lines go through the command table; message data and AUTH
responses go to the reader the state calls for (blackhole.readers), so a
session holds at most one line whatever a client sends.
"""

import logging
import random

from blackhole import auth, metrics, policy, replies
from blackhole.actions import CLOSE, MORE, START_TLS, Pause
from blackhole.commands import COMMANDS, LMTP_COMMANDS, MAX_LINE, Phase, Refusal
from blackhole.metrics import MESSAGE, MESSAGE_BYTES, OTHER_VERB, RECIPIENTS, REPLY, VERB_SLOTS
from blackhole.policy import SENDER_STAGES, TRANSACTION_STAGES, Stage
from blackhole.readers import AuthReader, ChunkReader, DataReader, Headers
from blackhole.replies import Reply

log = logging.getLogger("blackhole")

MAX_ERRORS = 10  # bad commands before 421 and close
MAX_BATCH = 256  # replies owed at once; the rest of the input waits its turn
MAX_AUTH_LINE = 12288  # octets of an AUTH response (RFC 4954 4)


def new_ident():
    """A 10-hex-digit connection ID for the debug log, as 1.x wrote them."""
    return f"{random.getrandbits(40):010X}"


def _shown(line, verb, arg, command):
    """A command line as the debug log shows it: credentials stay out."""
    if command is not None and command.secret and " " in arg:
        return f"{verb} {arg.partition(' ')[0]} ****"
    return line


class Session:
    """One client's SMTP state; ``receive`` returns what to send back."""

    __slots__ = (
        "settings", "policy", "ident", "phase", "extended", "smtputf8",
        "recipients", "errors", "closing", "in_data", "message_size",
        "starttls_offered", "secure", "tls_pending", "authenticated", "bdat",
        "binarymime", "_out", "_consume", "_unread", "_discarding", "_reader",
        "_chunk_reply", "_chunk_refused", "_auth", "_counts", "messages", "_asks",
        "_tags", "_delay", "peer", "sender", "_verbs",
    )
    lmtp = False

    def __init__(self, settings, policy, starttls=False, secure=False):
        self.settings = settings
        self.policy = policy
        self.starttls_offered = starttls and not secure
        self.secure = secure  # inside TLS
        self.tls_pending = False  # STARTTLS answered; the handshake is next
        self.authenticated = False
        self.ident = new_ident() if settings.debug else None
        self.peer = None  # the client's IP address (a PROXY header's), set before connected()
        self._verbs = LMTP_COMMANDS if self.lmtp else COMMANDS
        self.phase = Phase.CONNECTED
        self.extended = False  # EHLO rather than HELO
        self.smtputf8 = False  # MAIL FROM carried SMTPUTF8
        self.binarymime = False  # MAIL FROM carried BODY=BINARYMIME
        self.bdat = False  # this transaction's data comes in BDAT chunks
        self.recipients = 0
        self.errors = 0
        self.closing = False  # the dialogue is over: nothing more is read
        self.in_data = False  # message data is streaming in (DATA or a BDAT chunk)
        self.message_size = 0  # of the last message, after dot-unstuffing
        self.messages = 0  # messages whose end has been answered
        self.sender = None  # the transaction's reverse-path ("" for the null sender)
        self._out = []
        self._counts = metrics.counts
        self._asks = policy.asks
        self._tags = None  # the transaction's tags, by stage
        self._delay = None  # the deciding rule's or tag's delay, for the next reply
        self._consume = self._commands  # what takes the next bytes: commands or a reader
        self._unread = b""  # a line not yet ended, or a batch's leftover
        self._discarding = False  # skipping the rest of an overlong line
        self._reader = None  # the DataReader or ChunkReader of the message coming in
        self._auth = None  # the AuthReader of an exchange under way

    def receive(self, data):
        """Take the bytes a client sent; return the replies owed and what to do.

        Nothing after a closing reply is read (CLOSE, DROP or HANG ends the
        list). At most MAX_BATCH replies come back at once, so a client that
        pipelines without reading cannot make replies pile up: MORE then says
        to send these and call again with ``b""`` before reading more.
        """
        out = self._out = []
        if self._unread:
            data = self._unread + data
            self._unread = b""
        pos, end = 0, len(data)
        while pos < end and not (self.closing or self.tls_pending) and len(out) < MAX_BATCH:
            pos = self._consume(data, pos)
        if self.tls_pending:
            # Whatever followed STARTTLS in plaintext is dropped, never run
            # inside TLS (RFC 3207 5; CVE-2011-0411).
            if self.ident and pos < end:
                log.debug("[%s] Dropped %d octets sent after STARTTLS", self.ident, end - pos)
            out.append(START_TLS)
        elif pos < end and not self.closing:
            self._unread = data[pos:]
            out.append(MORE)
        return out

    def connected(self):
        """The connection is up (any TLS handshake done): what to send first.

        Returned as ``receive`` returns it: the greeting, or what a connect
        rule decides instead. After a refusal other than 421 nothing but QUIT
        is served (RFC 5321 3.1, RFC 7504).
        """
        out = self._out = []
        refusal = self.decide(Stage.CONNECT)
        self._answer(refusal or self.settings.greeting, 0)  # --delay spares the greeting
        if refusal is not None and not self.closing:
            self._consume = self._unserved
        return out

    # What handlers call.

    def tag(self, address):
        """The tag an envelope address carries, unless --dynamic_switch=False."""
        if "-" in address and self.settings.dynamic_switch:
            return policy.tag(address)
        return None

    def decide(self, stage, tag=None, address=None):
        """Ask the policy, between a command's checks and its effect.

        None: go on, with the normal reply. Otherwise the Reply, DROP or HANG
        to give instead, and the command must have no effect. ``tag``: the
        command's own address's; otherwise the transaction's tags count.
        ``address``: the recipient, for greylisting.
        """
        if tag is not None and tag.stage != stage:
            tag = None  # it asks for a stage it does not stand at: ignored
        if tag is None and self._tags is not None:
            tag = self._tags.get(stage)
        if tag is None and not self._asks[stage]:
            return None  # the common case: no rule, no limit, nothing to ask
        fault = self.policy.decide(stage, tag, self, address)
        if fault is None:
            return None
        metrics.fault(stage, fault.action)
        self._delay = fault.delay
        if self.ident:
            log.debug("[%s] %s: %s", self.ident,
                      "LIMIT" if fault.limit else "TAG" if fault.tag else "RULE", fault.token)
        return fault.answer

    def ended(self):
        """The connection is closed: its place under --max_connections is free."""
        limits = self.policy.limits
        if limits is not None:
            limits.release(self)

    def greet(self, extended):
        self.phase = Phase.GREETED
        self.extended = extended

    def begin_transaction(self, smtputf8, binarymime, tag=None, sender=""):
        """MAIL accepted. The sender's tag holds for the whole transaction.

        The next MAIL replaces the tags: none of their stages comes before it.
        """
        self.sender = sender
        self._tags = {tag.stage: tag} if tag is not None and tag.stage in SENDER_STAGES else None
        self.phase = Phase.MAIL
        self.smtputf8 = smtputf8
        self.binarymime = binarymime
        self.bdat = False
        self.recipients = 0
        self.message_size = 0

    def add_recipient(self, tag=None):
        """RCPT accepted: a recipient's tag for the data beats the sender's."""
        if tag is not None and tag.stage in TRANSACTION_STAGES:
            self._tags = {**(self._tags or {}), tag.stage: tag}
        self.phase = Phase.RCPT
        self.recipients += 1
        self._counts[RECIPIENTS] += 1

    def start_data(self):
        """DATA accepted: the message streams in up to <CRLF>.<CRLF>."""
        self.in_data = True
        self._reader = DataReader(self._end_of_message, self._headers(), self.ident)
        self._consume = self._reader.read

    def start_chunk(self, size, reply, refused=False):
        """BDAT (RFC 3030 2): take exactly ``size`` octets, then answer ``reply``.

        ``reply`` is None for the LAST chunk, whose answer is the end-of-data
        one. A refused chunk is read all the same, then refused.
        """
        if not self.bdat:  # the transaction's first chunk, or one refused before it
            self.bdat = not refused
            self._reader = ChunkReader(self._end_of_chunk, self._headers())
        self._chunk_reply = reply
        self._chunk_refused = refused
        self.in_data = True
        self._consume = self._reader.read
        self._reader.take(size, not refused, self.ident)

    def start_auth(self, mechanism):
        """AUTH (RFC 4954 4): run a mechanism's exchange of 334 challenges.

        ``mechanism`` is an auth generator: it yields challenges, is sent the
        decoded responses and returns the credentials.
        """
        self._auth = AuthReader(mechanism)
        self._auth_step(self._auth.respond(None))

    def tls_started(self):
        """RFC 3207 4.2: after the handshake, forget all the client said."""
        self.tls_pending = False
        self.secure = True
        self.starttls_offered = False
        self.phase = Phase.CONNECTED
        self.extended = False
        self.authenticated = False

    def begin_tls(self):
        self.tls_pending = True

    def renew_ident(self):
        if self.ident:
            new = new_ident()
            log.debug("[%s] RSET received, changing ID to [%s]", self.ident, new)
            self.ident = new

    # Commands.

    def _answer(self, reply, pause=None):
        """Queue ``reply``, or DROP or HANG, after a pause: the deciding rule's
        or tag's delay, else ``pause``, else the policy's delay."""
        if self._delay is not None:
            pause, self._delay = self.policy.pause(self._delay), None
        elif pause is None:
            pause = self.policy.pause() if self.policy.delay else 0
        if pause:
            self._out.append(Pause(pause))
        if reply.__class__ is not Reply:  # DROP or HANG: the dialogue is over
            self._out.append(reply)
            self.closing = True
            return
        if reply.error:
            self.errors += 1
            if self.errors >= MAX_ERRORS:
                reply = replies.TOO_MANY_ERRORS
        self._out.append(reply)
        self._counts[REPLY - 200 + reply.code] += 1
        if reply.closes:
            self._out.append(CLOSE)
            self.closing = True

    def _line_from(self, data, pos, limit):
        """The next complete line (without its ending) and where the rest starts.

        Returns (None, end) while the line is incomplete; a line longer than
        ``limit`` is answered at once and dropped up to its newline.
        """
        end = len(data)
        newline = data.find(b"\n", pos)
        if self._discarding:
            if newline >= 0:
                self._discarding = False
            return None, end if newline < 0 else newline + 1
        if newline < 0:
            if end - pos > limit:
                self._discarding = True
                self._too_long()
            else:
                self._unread = data[pos:]
            return None, end
        if newline + 1 - pos > limit:
            self._too_long()
            return None, newline + 1
        return data[pos:newline], newline + 1

    def _too_long(self):
        if self._auth is not None:  # an AUTH exchange ends there too
            self._consume, self._auth = self._commands, None
        self._answer(replies.LINE_TOO_LONG)

    def _commands(self, data, pos):
        raw, after = self._line_from(data, pos, MAX_LINE)
        if raw is None:
            return after
        command = self._command(raw, after - pos)
        if (
            self.ident
            and command is not None
            and command.ends_group
            and after < len(data)
            and self._consume == self._commands
        ):
            log.debug("[%s] Client pipelined past a group end (RFC 2920 3.1)",
                      self.ident)
        return after

    def _command(self, raw, length):
        """Answer one command line; return its table row, if it has one."""
        try:
            line = raw.decode().rstrip("\r ")
        except UnicodeDecodeError:
            line = None
        if line is None or "\x00" in line:
            if self.ident:
                log.debug("[%s] RECV: %r", self.ident, raw)
            self._answer(replies.BAD_CHARACTERS)
            return None
        verb, _, arg = line.partition(" ")
        # isascii: str.upper() would turn "QUıT" into "QUIT".
        name = verb.upper() if verb.isascii() else ""
        command = self._verbs.get(name)
        self._counts[VERB_SLOTS.get(name, OTHER_VERB)] += 1
        if self.ident:
            log.debug("[%s] RECV: %s", self.ident, _shown(line, verb, arg, command))
        if command is None:
            reply = replies.UNKNOWN_COMMAND
        elif length > command.max_line:
            reply = replies.LINE_TOO_LONG
        else:
            reply = command.refusals.get(self.phase)
            if reply is None:
                try:
                    reply = command.handler(self, arg)
                except Refusal as refusal:
                    reply = refusal.reply
                if command.resets and reply.__class__ is Reply and reply.code < 400:
                    self.phase = min(self.phase, Phase.GREETED)
        if reply is not None:  # None: a BDAT chunk or an AUTH exchange answers later
            self._answer(reply)
        return command

    def _unserved(self, data, pos):
        """After a greeting that refused service: 503 to all but QUIT (RFC 5321 3.1)."""
        raw, after = self._line_from(data, pos, MAX_LINE)
        if raw is None:
            return after
        line = raw.rstrip(b"\r ").decode("utf-8", "replace")
        verb, _, arg = line.partition(" ")
        name = verb.upper() if verb.isascii() else ""
        self._counts[VERB_SLOTS.get(name, OTHER_VERB)] += 1
        if self.ident:
            log.debug("[%s] RECV: %s", self.ident, _shown(line, verb, arg, self._verbs.get(name)))
        self._answer(replies.BYE if name == "QUIT" and not arg else replies.NOT_SERVING)
        return after

    # AUTH exchanges (RFC 4954 4): one line per 334 challenge.

    def _auth_line(self, data, pos):
        raw, after = self._line_from(data, pos, MAX_AUTH_LINE)
        if raw is None:
            return after
        if self.ident:
            log.debug("[%s] RECV: ****", self.ident)  # credentials stay out of logs
        self._consume = self._commands
        self._auth_step(self._auth.line(raw.rstrip(b"\r")))
        return after

    def _auth_step(self, reply):
        """Answer the exchange's next challenge or error, or once the mechanism
        has the credentials, the verdict (or what a rule decides instead)."""
        if reply is None:
            refusal = self.decide(Stage.AUTH)  # refused, the client stays unauthenticated
            if refusal is None:
                self.authenticated = auth.verdict(self._auth.credentials)
                refusal = replies.AUTH_OK if self.authenticated else replies.AUTH_FAILED
            reply, self._auth = refusal, None
        elif reply.code == 334:
            self._consume = self._auth_line
        else:
            self._auth = None
        self._answer(reply)

    # Message data, read by the readers: what it is, once it is in.

    def _headers(self):
        """A Headers to read the switches into, unless --dynamic_switch=False."""
        return Headers() if self.settings.dynamic_switch else None

    def _end_of_chunk(self):
        self.in_data = False
        self._consume = self._commands
        limit = self.settings.message_size_limit
        reply = self._chunk_reply
        size = self._reader.size
        if self._chunk_refused:
            self._answer(reply)
        elif reply is None:  # the LAST chunk: the message is judged whole, size and all
            self._end_of_message(size, False)
        elif limit and size > limit:
            # RFC 3030 2: the transaction fails; later chunks are refused.
            self.phase = Phase.GREETED
            self.messages += 1
            self._counts[MESSAGE - 200 + replies.SIZE_EXCEEDED.code] += 1
            self._counts[MESSAGE_BYTES] += size
            self._answer(replies.SIZE_EXCEEDED)
        else:
            self._answer(reply)

    def _end_of_message(self, size, long_line):
        """The whole message is in: answer by size, line length, then policy."""
        self.in_data = False
        self._consume = self._commands
        self.phase = Phase.GREETED
        self.message_size = size
        self.messages += 1
        self._counts[MESSAGE_BYTES] += size
        limit = self.settings.message_size_limit
        if limit and size > limit:
            self._answer_message(replies.SIZE_EXCEEDED)
        elif long_line:
            self._answer_message(replies.DATA_LINE_TOO_LONG)
        else:
            headers = self._reader.headers
            if headers is not None:
                headers.end()  # a switch on the last line of a header-only message
            self._answer_message(None)

    def _answer_message(self, refused):
        """SMTP's one reply for the message: ``refused``, or the policy's."""
        reply, pause = (refused, None) if refused is not None else self._end_of_data()
        if reply.__class__ is Reply:  # not DROP or HANG
            self._counts[MESSAGE - 200 + reply.code] += 1
        self._answer(reply, pause)

    def _end_of_data(self, tag=None):
        """The eod reply and its pause: the message's X-Blackhole-* headers beat
        its tags (``tag``: a recipient's own), which beat the rules, which beat the mode."""
        headers = self._reader.headers
        if headers is not None and headers.switches:
            return self.policy.end_of_data(headers.switches)
        refusal = self.decide(Stage.EOD, tag)
        if refusal is not None:
            return refusal, None  # the message is discarded
        return self.policy.end_of_data()


class LMTPSession(Session):
    """LMTP (RFC 2033): LHLO for EHLO, and after the message a reply for each
    accepted recipient, in order (4.2), each decided apart: a recipient's eod
    tag fails its own delivery only. Each reply counts as a message."""

    __slots__ = ("_deliveries",)
    lmtp = True

    def begin_transaction(self, smtputf8, binarymime, tag=None, sender=""):
        super().begin_transaction(smtputf8, binarymime, tag, sender)
        self._deliveries = []  # each accepted recipient's own eod tag, or None

    def add_recipient(self, tag=None):
        own = tag if tag is not None and tag.stage == Stage.EOD else None
        super().add_recipient(None if own else tag)
        self._deliveries.append(own)

    def _answer_message(self, refused):
        for tag in self._deliveries:
            if self.closing:
                break  # DROP or HANG, or 421: no more replies
            reply, pause = (refused, None) if refused is not None else self._end_of_data(tag)
            if reply.__class__ is Reply:
                self._counts[MESSAGE - 200 + reply.code] += 1
            self._answer(reply, pause)
