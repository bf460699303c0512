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
                 "_idle_since", "_timer")

    def __init__(self, stream, address, settings, policy):
        self.stream = stream
        self.address = address
        self.settings = settings
        self.session = Session(settings, policy)
        self._loop = None
        self._idle_since = None  # when we began waiting on the client, else None
        self._timer = None

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
                self._idle_since = loop.time()
                data = await self.stream.read_bytes(READ_SIZE, partial=True)
                self._idle_since = None
                out = session.receive(data)
                if out:
                    await self._send(out)
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

    def _check_idle(self):
        """The idle timer: rearm while the client is active, else 421 and close."""
        timeout = self.settings.timeout
        since = self._idle_since
        now = self._loop.time()
        if since is None or now - since < timeout:
            wait = timeout if since is None else since + timeout - now
            self._timer = self._loop.call_later(wait, self._check_idle)
            return
        if self.session.ident:
            self._log_sent([replies.TIMEOUT.wire])
        try:
            self.stream.write(replies.TIMEOUT.wire)
        except StreamClosedError:
            pass  # gone already; closing below is all that is left to do
        self.stream.close()

    def _log_sent(self, chunks):
        for chunk in chunks:
            for line in chunk.decode().splitlines():
                log.debug("[%s] SEND: %s", self.session.ident, line)
