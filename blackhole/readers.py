"""Message data and AUTH responses, each read by a small object that owns its counters.

The Session picks the reader its state calls for (DATA, a BDAT chunk, an
AUTH exchange) and feeds it bytes; the reader tells it when it is done.
Message data is counted and thrown away as it streams: a reader holds at
most one header line, and only the header section is read, for the
X-Blackhole-* switches.
"""

import base64
import binascii
import logging

from blackhole import auth, policy, replies

log = logging.getLogger("blackhole")

MAX_DATA_LINE = 1000  # octets with the line ending (RFC 5321 4.5.3.1.6)
MAX_HEADER_LINES = 1000  # header lines read for switches; the rest is body to us
_SWITCHES = {b"x-blackhole-mode": "mode", b"x-blackhole-delay": "delay"}
# The first octet a switch's header line can have, in either case.
_SWITCH_INITIALS = frozenset(name[0] for key in _SWITCHES for name in (key, key.upper()))
_END_OF_DATA = b"\r\n.\r\n"  # the only end of data (RFC 5321 4.1.1.4)


class Headers:
    """A message's header section, read for its X-Blackhole-Mode and -Delay switches.

    A line is judged by its first MAX_DATA_LINE octets less one CR before the
    LF, however the reads split it; only that much of a partial line is kept
    between reads, or of a switch's folded value. Only the first
    MAX_HEADER_LINES lines are read, so a message that never ends its header
    section costs no more than that.
    """

    __slots__ = ("switches", "_kept", "_folding", "_lines")

    def __init__(self):
        self.switches = {}  # switch name -> value, for policy.end_of_data
        self._kept = b""  # the start of a line not yet ended
        self._folding = None  # a switch whose value may go on in folded lines
        self._lines = MAX_HEADER_LINES

    def scan(self, data, pos, stop):
        """Read ``data[pos:stop]``; False once the header section is over."""
        while True:
            newline = data.find(b"\n", pos, stop)
            if newline < 0:
                kept = self._kept
                self._kept = kept + data[pos : min(stop, pos + MAX_DATA_LINE - len(kept))]
                return True
            start, pos = pos, newline + 1
            self._lines -= 1
            if not self._lines:  # enough: switches come early or not at all
                self.end()
                return False
            kept = self._kept
            if kept:
                self._kept = b""
                line = kept + data[start : min(newline, start + MAX_DATA_LINE - len(kept))]
            elif (newline - start < 2 or data[start] in _SWITCH_INITIALS
                  or self._folding is not None):
                line = data[start : min(newline, start + MAX_DATA_LINE)]
            else:
                continue  # neither a switch nor the blank line: not worth a copy
            if line[-1:] == b"\r":
                line = line[:-1]
            if line[:1] in (b" ", b"\t"):
                # A folded line continues the header before it (RFC 5322
                # 2.2.3): part of a switch's value, never a switch itself.
                folding = self._folding
                if folding is not None and len(folding[1]) < MAX_DATA_LINE:
                    self._folding = (folding[0], folding[1] + line)
                continue
            self.end()
            if not line:  # the end of the header section (RFC 5322 2.1)
                return False
            name, colon, value = line.partition(b":")
            # Only WSP may stand before the colon (RFC 5322 4.5.3): "\rX-Blackhole-
            # Mode" is no switch, as the first-octet test above already says.
            switch = _SWITCHES.get(name.rstrip(b" \t").lower()) if colon else None
            if switch:
                self._folding = (switch, value)

    def end(self):
        """No more lines of the switch being read: record it."""
        if self._folding is not None:
            switch, value = self._folding
            self._folding = None
            policy.switch(switch, value.decode("latin-1"), self.switches)


class DataReader:
    """DATA's message (RFC 5321 4.1.1.4), up to <CRLF>.<CRLF>: its size with
    dot-stuffing undone (4.5.2) and whether a line was too long (4.5.3.1.6).

    ``finished(size, long_line)`` is called at the end marker.
    """

    __slots__ = ("headers", "_finished", "_ident", "_scanning", "_tail", "_size", "_dots",
                 "_line", "_long_line", "_debug_line")

    def __init__(self, finished, headers, ident):
        """``headers``: a Headers to read the switches into, or None; ``ident``:
        the session's debug ID, or None."""
        self.headers = headers
        self._finished = finished
        self._ident = ident
        self._scanning = headers is not None
        self._tail = b"\r\n"  # the DATA line's own CRLF precedes the data
        self._size = self._dots = self._line = 0
        self._long_line = False
        self._debug_line = b""

    def read(self, data, pos):
        """Take ``data`` from ``pos``; return where the message's data ends in it."""
        end = len(data)
        tail = self._tail
        # The end marker may straddle the previous read and this one.
        found = (tail + data[pos : pos + 4]).find(_END_OF_DATA)
        if found >= 0:
            stop = pos + found + len(_END_OF_DATA) - len(tail)
        else:
            found = data.find(_END_OF_DATA, pos)
            stop = end if found < 0 else found + len(_END_OF_DATA)
        self._size += stop - pos
        # Dot-stuffed lines: count the dots to undo them.  A line ends with
        # CRLF; a dot after a bare LF is content.  A "<CRLF>." that straddles
        # the reads counts only if its dot is before ``stop``: after the end
        # marker a dot starts the next command.
        self._dots += data.count(b"\r\n.", pos, stop) + (
            (tail[-2:] + data[pos : min(pos + 2, stop)]).find(b"\r\n.") in (0, 1)
        )
        if self._scanning:
            self._scanning = self.headers.scan(data, pos, stop)
        if not self._long_line:
            self._check_lines(data, pos, stop)
        if self._ident:
            self._log(data[pos:stop])
        self._tail = data[stop - 4 : stop] if stop - pos >= 4 else (tail + data[pos:stop])[-4:]
        if found >= 0:
            # The terminator's ".\r\n" and its one dot are not message content.
            self._finished(self._size - self._dots - 2, self._long_line)
        return stop

    def _check_lines(self, data, pos, stop):
        """Flag a line of more than MAX_DATA_LINE octets, without splitting lines."""
        first = data.find(b"\n", pos, stop)
        if first < 0:
            self._line += stop - pos
            self._long_line = self._line >= MAX_DATA_LINE
            return
        last = data.rfind(b"\n", first, stop)
        if self._line + first - pos >= MAX_DATA_LINE or stop - last - 1 >= MAX_DATA_LINE:
            self._long_line = True
        self._line = stop - last - 1
        if last - first <= MAX_DATA_LINE or self._long_line:
            return
        # A run of MAX_DATA_LINE octets without a newline holds a whole window
        # of half that length starting at one of these points; look closer
        # only where a window has no newline.
        half = MAX_DATA_LINE // 2
        for start in range(first + 1, last, half):
            if data.find(b"\n", start, start + half) < 0:
                before = data.rfind(b"\n", first, start)
                after = data.find(b"\n", start + half, last + 1)
                if after - before > MAX_DATA_LINE:
                    self._long_line = True
                    return

    def _log(self, segment):
        lines = (self._debug_line + segment).split(b"\n")
        self._debug_line = lines.pop()[-MAX_DATA_LINE:]
        for line in lines:
            log.debug("[%s] RECV: %s", self._ident,
                      line.rstrip(b"\r").decode("utf-8", "replace"))


class ChunkReader:
    """The BDAT chunks of one message (RFC 3030 2), each read whole by its size.

    ``finished()`` is called at the end of every chunk. A chunk taken
    uncounted (refused) is read and adds nothing to the message.
    """

    __slots__ = ("size", "headers", "_finished", "_ident", "_scanning", "_left", "_counted")

    def __init__(self, finished, headers):
        self.size = 0  # octets of the chunks counted so far
        self.headers = headers
        self._finished = finished
        self._ident = None
        self._scanning = headers is not None
        self._left = 0
        self._counted = True

    def take(self, size, counted, ident):
        """The next chunk is ``size`` octets; ``ident``: the session's debug ID now."""
        self._left = size
        self._counted = counted
        self._ident = ident
        if not size:
            self._finished()

    def read(self, data, pos):
        stop = min(len(data), pos + self._left)
        self._left -= stop - pos
        if self._counted:
            self.size += stop - pos
            if self._scanning:
                self._scanning = self.headers.scan(data, pos, stop)
        if self._ident:
            log.debug("[%s] RECV: %d octets of BDAT data", self._ident, stop - pos)
        if not self._left:
            self._finished()
        return stop


class AuthReader:
    """One AUTH exchange (RFC 4954 4): a mechanism's 334 challenges, each
    answered by one line of base64."""

    __slots__ = ("credentials", "_mechanism")

    def __init__(self, mechanism):
        """``mechanism``: an auth generator, given its initial response."""
        self._mechanism = mechanism
        self.credentials = None  # once the mechanism has them

    def respond(self, response):
        """Send the mechanism a decoded response (None to begin): the next 334
        challenge, or None once ``credentials`` are in."""
        try:
            return auth.challenge(self._mechanism.send(response))
        except StopIteration as done:
            self.credentials = done.value
            return None

    def line(self, line):
        """A client's line: the next challenge, None when done, or the error
        that ends the exchange ("*" cancels it)."""
        if line == b"*":
            return replies.AUTH_ABORTED
        try:
            decoded = base64.b64decode(line, validate=True)
        except binascii.Error:
            return replies.AUTH_BAD_BASE64
        return self.respond(decoded)
