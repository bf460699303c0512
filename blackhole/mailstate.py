"""MailState: one connection's stream, and the moving of bytes to and from its Session.

The stream is an attribute so that STARTTLS can replace it in place; the
protocol itself never touches it.
"""

import asyncio
import logging

from tornado.iostream import StreamClosedError

from blackhole import replies
from blackhole.protocol import Session
from blackhole.replies import Reply

log = logging.getLogger("blackhole")

READ_SIZE = 65536  # bytes asked of the stream at once; every complete line is parsed


class MailState:
    """Serve one SMTP connection: greet, read, answer in batches, time out."""

    __slots__ = ("stream", "address", "settings", "session", "_loop",
                 "_idle_since", "_timer", "_reading", "_stopping")

    def __init__(self, stream, address, settings, policy):
        self.stream = stream
        self.address = address
        self.settings = settings
        self.session = Session(settings, policy)
        self._loop = None
        # Since when the client has been keeping us waiting, or None while we
        # work: only a whole command, message data, or reading our replies
        # counts as the client doing something (RFC 5321 4.5.3.2).
        self._idle_since = None
        self._timer = None
        self._reading = False
        self._stopping = False

    async def serve(self):
        session = self.session
        if session.ident:
            log.debug("Connection from '%s'", self.address[0])
        loop = self._loop = asyncio.get_running_loop()
        self._timer = loop.call_later(self.settings.timeout, self._check_idle)
        try:
            self.stream.set_nodelay(True)
            await self._write([self.settings.greeting.wire])
            while not session.closing:
                if session.backlog:
                    data = b""
                else:
                    if self._idle_since is None:
                        self._idle_since = loop.time()
                    self._reading = True
                    data = await self.stream.read_bytes(READ_SIZE, partial=True)
                    self._reading = False
                out = session.receive(data)
                if out or session.in_data:
                    self._idle_since = None
                if out:
                    await self._send(out)
                if self._stopping and not session.in_data and not session.closing:
                    self._close_with(replies.SHUTTING_DOWN)
                    break
        except StreamClosedError:
            pass  # the client went away, or the idle timer closed the stream
        except Exception:
            log.exception("Session with %s failed", self.address[0])
        finally:
            self._timer.cancel()
            self.stream.close()
            if session.ident:
                log.debug("[%s] Closing", session.ident)

    async def _send(self, out):
        """Write the replies of one batch at once, sleeping where a delay says."""
        pending = []
        for item in out:
            if item.__class__ is Reply:
                pending.append(item.wire)
            else:
                if pending:
                    await self._write(pending)
                    pending = []
                await asyncio.sleep(item)
        if pending:
            await self._write(pending)

    async def _write(self, chunks):
        if self.session.ident:
            self._log_sent(chunks)
        future = self.stream.write(chunks[0] if len(chunks) == 1 else b"".join(chunks))
        if not future.done():
            # A client that stops reading our replies is as idle as one that
            # stops sending.
            self._idle_since = self._loop.time()
            await future
            self._idle_since = None

    def shutdown(self):
        """The server is stopping: 421 now if waiting for a command, else after this exchange."""
        self._stopping = True
        if self._reading and not self.session.in_data:
            self._close_with(replies.SHUTTING_DOWN)

    def _check_idle(self):
        """The idle timer: rearm while the client is active, else 421 and close."""
        timeout = self.settings.timeout
        since = self._idle_since
        now = self._loop.time()
        if since is None or now - since < timeout:
            wait = timeout if since is None else since + timeout - now
            self._timer = self._loop.call_later(wait, self._check_idle)
            return
        self._close_with(replies.TIMEOUT)

    def _close_with(self, reply):
        """Say a last 421 and close; the read loop ends on the closed stream."""
        if self.session.ident:
            self._log_sent([reply.wire])
        try:
            self.stream.write(reply.wire)
        except StreamClosedError:
            pass  # gone already; closing below is all that is left to do
        self.stream.close()

    def _log_sent(self, chunks):
        for chunk in chunks:
            for line in chunk.decode().splitlines():
                log.debug("[%s] SEND: %s", self.session.ident, line)
