"""MailState: one connection's stream, and the moving of bytes to and from its Session.

The stream is an attribute so that TLS can replace it in place, for STARTTLS
and on the implicit-TLS port alike; the protocol itself never touches it.

A plaintext connection is served from the event loop's read callback,
``_on_readable``: it reads, parses and answers in one step, with no future,
task or coroutine switch per command, and a session that ends there (QUIT,
the client leaving) never needs a task at all. What that step cannot finish
at once (a delay, a reply the socket will not take whole, STARTTLS, a stop)
hands the connection to a task running the stream loop, ``_serve``, which
keeps it from then on. The implicit-TLS port starts there, and so do a
rule's delay, DROP and HANG.

Whatever the path, the session's output is acted on as it comes (replies,
pauses, then CLOSE, DROP, HANG, START_TLS or MORE: blackhole.actions).

On a proxy=on listener a read callback of its own, ``_on_proxy_readable``,
comes first: it takes the PROXY header's octets off the socket, and no
more, before the greeting or the TLS handshake (blackhole.proxy).
"""

import asyncio
import ipaddress
import logging
import socket
import ssl

from tornado.iostream import SSLIOStream, StreamClosedError

from blackhole import metrics, proxy, replies
from blackhole.actions import CLOSE, DROP, HANG, START_TLS, MORE, Pause
from blackhole.protocol import LMTPSession, Session
from blackhole.replies import Reply

log = logging.getLogger("blackhole")

READ_SIZE = 65536  # bytes asked of the stream at once; every complete line is parsed
MIN_DATA_RATE = 500  # octets a second a client must keep up under pressure


class MailState:
    """Serve one SMTP connection: greet, read, answer in batches, time out."""

    __slots__ = ("stream", "address", "settings", "listener", "tls", "session", "sessions",
                 "_loop", "_opened", "idle_since", "_messages", "_reading", "_stopping",
                 "_handshake", "_fd", "_task", "_hang", "_more", "_proxy")

    def __init__(self, stream, address, settings, listener):
        """``listener``: where the connection came in (server.Listener), with its
        policy and TLS context, offered by STARTTLS or, if implicit, at once."""
        self.stream = stream
        self.address = address
        self.settings = settings
        self.listener = listener
        self.tls = listener.tls
        self.session = (LMTPSession if listener.lmtp else Session)(
            settings, listener.policy, starttls=listener.tls is not None,
            secure=listener.implicit)
        self.sessions = None  # the live sessions this one belongs to, until it ends
        self._handshake = None  # the pending start_tls future
        self._loop = None
        self._opened = None
        # Since when the client has been keeping us waiting, or None while we
        # work: only a whole command, message data, or reading our replies
        # counts as the client doing something (RFC 5321 4.5.3.2). The idle
        # sweep reads it, and at the cap it picks whom to make room for.
        self.idle_since = None
        self._messages = 0  # the session's count when the clock last restarted
        self._reading = False
        self._stopping = False
        # While served by the loop's read callback: the socket's descriptor,
        # kept because Tornado forgets it when it closes the socket.
        self._fd = None
        self._task = None  # the stream loop's task, held here: asyncio holds tasks weakly
        self._hang = None  # the timer that ends a HANG
        self._more = False  # the session has input left over from its last batch
        # proxy=on: the PROXY header's octets taken so far, until it is whole.
        self._proxy = b"" if listener.proxy else None

    def start(self, sessions):
        """Greet and serve, as one of ``sessions`` until the session ends."""
        sessions.add(self)
        self.sessions = sessions
        loop = self._loop = asyncio.get_running_loop()
        self._opened = self.idle_since = loop.time()
        metrics.counts[metrics.OPENED] += 1
        if self._proxy is None:
            self._greet()
        else:
            self._await_proxy()

    def _greet(self):
        """The client's address is known: greet, or start TLS on the implicit-TLS port."""
        session = self.session
        session.peer = self.address[0]
        if session.ident:
            log.debug("[%s] Connection from '%s'", session.ident, self.address[0])
        loop = self._loop
        if session.secure:
            self._hand_over(self._greet_in_tls, None)
            return
        out = session.connected()
        if len(out) > 1 or out[0].__class__ is not Reply:  # a rule's delay, 421, DROP, HANG
            self._hand_over(self._answer, (out, True))
            return
        greeting = out[0].wire
        if session.ident:
            self._log_sent([greeting])
        if not self._send_direct(greeting):
            return
        self._fd = self.stream.socket.fileno()
        loop.add_reader(self._fd, self._on_readable)
        self._reading = True

    def _await_proxy(self):
        """proxy=on: only a balancer in --proxy_from may connect (anyone allowed on
        the Unix socket's file may), and it speaks first, within --timeout."""
        if not (self.listener.path or any(ipaddress.ip_address(self.address[0]) in network
                                          for network in self.listener.proxy_from)):
            self._refuse_proxy(metrics.PROXY_UNTRUSTED, "not in --proxy_from")
            return
        self._fd = self.stream.socket.fileno()
        self._loop.add_reader(self._fd, self._on_proxy_readable)

    def _on_proxy_readable(self):
        """Take the PROXY header's octets and not one more: peeked first, so that
        what follows it in the same segment (pipelined commands, a TLS
        ClientHello) stays queued in the socket for the session."""
        sock = self.stream.socket
        try:
            peeked = sock.recv(proxy.V2_FIXED + proxy.V2_MAX - len(self._proxy), socket.MSG_PEEK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            peeked = b""
        if not peeked:
            self._refuse_proxy(metrics.PROXY_MISSING, "closed before a PROXY header")
            return
        received = self._proxy + peeked
        try:
            header = proxy.parse(received)
        except proxy.ProxyError as error:
            self._refuse_proxy(metrics.PROXY_MALFORMED, str(error))
            return
        # All that was peeked is queued, so recv takes exactly this many octets;
        # of a header not yet whole, every octet received so far is its own.
        sock.recv(len(peeked) if header is None else header.length - len(self._proxy))
        if header is None:
            self._proxy = received
            return
        self._stop_direct()
        self._proxy = None
        if header.source is not None:  # else LOCAL, a health check: the balancer's own
            self.address = header.source
        self.idle_since = self._loop.time()  # the session's own clock starts now
        self._greet()

    def _refuse_proxy(self, reason, why):
        """Close without a word a connection that brought no valid PROXY header, and count it."""
        metrics.counts[reason] += 1
        if self.session.ident:
            log.debug("[%s] Connection from '%s' refused: %s", self.session.ident,
                      self.address[0], why)
        self.close()

    def _on_readable(self):
        """Read, parse and answer on the direct path, or hand over to the stream loop."""
        try:
            data = self.stream.socket.recv(READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self.close()  # the client left
            return
        session = self.session
        try:
            out = session.receive(data)
        except Exception:
            log.exception("Session with %s failed", self.address[0])
            self.close()
            return
        sessions = self.sessions
        restart = (out or session.in_data) and (
            len(sessions) < sessions.pressure or self._active(len(data)))
        if self._stopping:
            self._hand_over(self._answer, (out, restart))
            return
        if out:
            chunks = []
            for item in out:
                if item.__class__ is Reply:
                    chunks.append(item.wire)
                elif item is not CLOSE:  # a Pause, DROP, HANG, START_TLS or MORE
                    self._hand_over(self._answer, (out, restart))
                    return
            if session.ident:
                self._log_sent(chunks)
            closing = out[-1] is CLOSE
            if not self._send_direct(chunks[0] if len(chunks) == 1 else b"".join(chunks),
                                     closing):
                return
            if closing:
                self.close()
                return
        if restart:
            self.idle_since = self._loop.time()

    def _active(self, octets):
        """Whether a read that gave replies or message data restarts the idle
        clock: a whole command or data is activity (RFC 5321 4.5.3.2).

        Under pressure only progress is: a message completed, or ``octets``
        buying 1/MIN_DATA_RATE seconds each (Postfix's smtpd_min_data_rate
        under stress), so a client that trickles data or keeps sending NOOP
        cannot hold a connection that others need.
        """
        session, sessions = self.session, self.sessions
        if session.messages != self._messages:
            self._messages = session.messages
            return True
        since = self.idle_since
        if since is None or sessions is None or len(sessions) < sessions.pressure:
            return True
        self.idle_since = min(self._loop.time(), since + octets / MIN_DATA_RATE)
        return False

    def _send_direct(self, data, closing=False):
        """Send from the direct path, where Tornado has nothing queued.

        Returns False if the session was handed over (to finish the write, then
        close if ``closing``) or closed.
        """
        try:
            sent = self.stream.socket.send(data)
        except BlockingIOError:
            sent = 0
        except OSError:
            self.close()
            return False
        if sent == len(data):
            return True
        self._stop_direct()  # before Tornado, which may close the socket
        try:
            self._hand_over(self._flush, (self.stream.write(data[sent:]), closing))
        except StreamClosedError:
            self.close()
        return False

    def _hand_over(self, step, argument):
        """Serve from a task from now on, beginning with ``await step(argument)``."""
        self._stop_direct()
        self._task = self._loop.create_task(self._serve(step, argument))

    def _stop_direct(self):
        """Unregister the read callback; always before the socket can be closed."""
        if self._fd is not None:
            self._loop.remove_reader(self._fd)
            self._fd = None
            self._reading = False

    async def _serve(self, step, argument):
        """The stream loop: serve the connection to its end.

        ``await step(argument)`` comes first, and says whether to go on.
        """
        session = self.session
        try:
            going = await step(argument)
            while going:
                if self._stopping and not session.in_data:
                    self._close_with(replies.SHUTTING_DOWN)
                    break
                if self._more:
                    data = b""
                else:
                    if self.idle_since is None:
                        self.idle_since = self._loop.time()
                    self._reading = True
                    data = await self.stream.read_bytes(READ_SIZE, partial=True)
                    self._reading = False
                out = session.receive(data)
                going = await self._answer(
                    (out, (out or session.in_data) and self._active(len(data))))
        except StreamClosedError:
            pass  # the client went away, or the session was closed
        except Exception:
            log.exception("Session with %s failed", self.address[0])
        finally:
            self.close()

    async def _greet_in_tls(self, _):
        """The implicit-TLS port: the handshake, then the greeting."""
        await self._start_tls()
        return await self._answer((self.session.connected(), True))

    async def _answer(self, answer):
        """Act on what one receive() returned, and whether it restarts the idle
        clock; return whether the session goes on."""
        out, restart = answer
        action = None
        if out:
            since, self.idle_since = self.idle_since, None  # delays and writes are ours
            action = await self._send(out)
            self.idle_since = None if restart else since
        elif restart:
            self.idle_since = None  # the loop restarts the clock before it reads
        if action is CLOSE or action is DROP:
            self.close()
            return False
        if action is START_TLS:
            await self._start_tls()
            self.session.tls_started()
        self._more = action is MORE
        return True

    async def _flush(self, write):
        """Wait out a write the socket did not take at once, and say whether the
        session goes on: not if the replies written end it. A non-reader is idle."""
        written, closing = write
        self.idle_since = self._loop.time()
        await written
        self.idle_since = None
        return not closing

    async def _send(self, out):
        """Write the replies of one batch at once, sleeping where a Pause says;
        return the action that ends the batch, if any (HANG never returns)."""
        pending = []
        for item in out:
            if item.__class__ is Reply:
                pending.append(item.wire)
                continue
            if pending:
                await self._write(pending)
                pending = []
            if item.__class__ is Pause:
                metrics.delayed(item.seconds)
                await asyncio.sleep(item.seconds)
            elif item is HANG:
                await self._hang_up()
            else:
                return item  # CLOSE, DROP, START_TLS or MORE: always last
        if pending:
            await self._write(pending)
        return None

    async def _hang_up(self):
        """Answer nothing more: read and discard until the client leaves, or
        close silently --timeout seconds from now. Never idle to the sweep."""
        self.idle_since = None
        self._hang = self._loop.call_later(self.settings.timeout, self.close)
        while True:
            await self.stream.read_bytes(READ_SIZE, partial=True)  # StreamClosedError ends it

    async def _write(self, chunks):
        if self.session.ident:
            self._log_sent(chunks)
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        stream = self.stream
        if not (stream.closed() or stream.writing()):
            # Nothing queued: hand the replies to the socket at once, which is
            # what stream.write would do, without its per-write bookkeeping.
            try:
                sent = stream.socket.send(data)
            except (BlockingIOError, ssl.SSLWantWriteError, ssl.SSLWantReadError):
                sent = 0
            except OSError:
                raise StreamClosedError() from None  # _serve() closes the session
            if sent == len(data):
                return
            data = data[sent:]
        future = stream.write(data)
        if not future.done():
            # A client that stops reading our replies is as idle as one that
            # stops sending.
            self.idle_since = self._loop.time()
            await future
            self.idle_since = None

    async def _start_tls(self):
        """Replace the stream in place with ``IOStream.start_tls`` (RFC 3207, RFC 8314).

        Every reply is flushed first. Tornado holds no plaintext either, unless
        the client sent more without waiting for our 220; that is refused below.
        """
        self.idle_since = self._loop.time()  # a stalled handshake is an idle client
        plain, self.stream = self.stream, None  # start_tls takes the socket over
        try:
            self._handshake = plain.start_tls(server_side=True, ssl_options=self.tls)
            self.stream = await self._handshake
        except ValueError:
            # Tornado read plaintext the client sent after STARTTLS without
            # waiting for our 220: an injection attempt (RFC 3207 5). Drop it all.
            if self.session.ident:
                log.debug("[%s] Plaintext after STARTTLS: closing", self.session.ident)
            plain.close()
            raise StreamClosedError() from None
        except (asyncio.CancelledError, ssl.SSLError, OSError) as error:
            # The wrap itself fails if the client has already reset (the ssl
            # module closes the socket then); otherwise a client fault or the
            # idle timer giving up, which Tornado has logged in one line.
            # Either way, end this session and only this one.
            metrics.counts[metrics.TLS_FAILED] += 1
            if self.session.ident:
                log.debug("[%s] TLS handshake failed: %r", self.session.ident, error)
            raise StreamClosedError() from None
        finally:
            self._handshake = None
        if self.sessions is None:
            # Closed (timed out, or made room) as the handshake completed:
            # cancelling a done future closed nothing, so the new stream is ours.
            raise StreamClosedError()
        self.idle_since = None
        metrics.tls_started(self.stream.socket.version())
        if self.session.ident:
            log.debug("[%s] TLS started: %s %s", self.session.ident,
                      self.stream.socket.version(), self.stream.socket.cipher()[0])

    def close(self):
        """End the session: close the connection, whatever the state of the TLS switch."""
        self._stop_direct()
        if self._hang is not None:
            self._hang.cancel()
        if self._handshake is not None:
            self._handshake.cancel()  # Tornado closes the half-made TLS stream
        elif self.stream is not None and not self.stream.closed():
            if isinstance(self.stream, SSLIOStream):
                try:
                    self.stream.socket.unwrap()  # close_notify (RFC 8446 6.1)
                except (ssl.SSLError, OSError):
                    pass  # the client's own close_notify is not waited for
            self.stream.close()
        if self.sessions is not None:  # the first close: a task may still be unwinding
            self.sessions.discard(self)
            self.sessions = None
            self.session.ended()
            metrics.session_ended(self._loop.time() - self._opened)
            if self.session.ident:
                log.debug("[%s] Closing", self.session.ident)

    def shutdown(self):
        """The server is stopping: 421 now if waiting for a command, else after this exchange."""
        self._stopping = True
        if self._hang is not None or self._proxy is not None:
            self.close()  # a hang says nothing, even now; nor does a balancer get a word
        elif self._reading and not self.session.in_data:
            self._close_with(replies.SHUTTING_DOWN)

    def check_idle(self, now):
        """421 and close if the client has kept us waiting for --timeout seconds;
        otherwise return since when it has been (None while we work)."""
        since = self.idle_since
        if since is None or now - since < self.settings.timeout:
            return since
        self.expire(replies.TIMEOUT)
        return None

    def expire(self, reply):
        """End a session the client keeps waiting: ``reply`` (a 421), or a bare close
        in the middle of a TLS handshake, or with no PROXY header yet."""
        if self._proxy is not None:
            self._refuse_proxy(metrics.PROXY_MISSING, "no PROXY header in time")
        elif self._handshake is not None:
            self.close()
        else:
            self._close_with(reply)

    def _close_with(self, reply):
        """Say a last 421 and close; a stream loop ends on the closed stream."""
        metrics.replied(reply)
        if self.session.ident:
            self._log_sent([reply.wire])
        self._stop_direct()  # before Tornado, which closes the socket if the write fails
        try:
            self.stream.write(reply.wire)
        except StreamClosedError:
            pass  # gone already; closing below is all that is left to do
        self.close()

    def _log_sent(self, chunks):
        for chunk in chunks:
            for line in chunk.decode().splitlines():
                log.debug("[%s] SEND: %s", self.session.ident, line)
