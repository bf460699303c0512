"""The listeners: sockets bound at startup and the TCPServer that serves them."""

import asyncio
import errno
import resource
import socket

from tornado.netutil import bind_sockets
from tornado.tcpserver import TCPServer

from blackhole import replies
from blackhole.errors import BlackholeError
from blackhole.mailstate import MailState

BACKLOG = 1024  # pending connections per listener; load tests open them in bursts
SPARE_FILES = 64  # descriptors kept free for logs and listeners


def bind(host, port):
    """Bind the plain SMTP port, turning the usual failures into one clear line."""
    where = f"{host}:{port}"
    try:
        return bind_sockets(port, address=host or None, backlog=BACKLOG)
    except (socket.gaierror, UnicodeError):
        raise BlackholeError(f"Cannot resolve host '{host}'") from None
    except PermissionError:
        raise BlackholeError(f"Permission denied, could not bind to {where}") from None
    except OSError as error:
        if error.errno == errno.EADDRINUSE:
            reason = "Address already in use"
        elif error.errno == errno.EADDRNOTAVAIL:
            reason = "Address not available"
        else:
            reason = error.strerror or str(error)
        raise BlackholeError(f"{reason}, could not bind to {where}") from None


def raise_file_limit():
    """Allow as many open connections as the hard limit on descriptors does."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


class SMTPServer(TCPServer):
    """Hands every accepted connection to a MailState of its own.

    ``tls`` is the server SSLContext: with ``implicit`` the connection is TLS
    from the first byte (the SMTPS port), otherwise STARTTLS offers it.
    Listeners of one process share ``sessions``, and so the connection cap.
    """

    def __init__(self, settings, policy, tls=None, implicit=False,
                 sessions=None, max_connections=None):
        super().__init__()
        self.settings = settings
        self.policy = policy
        self.tls = tls
        self.implicit = implicit
        self.sessions = set() if sessions is None else sessions
        # Refuse connections with 421 before the process runs out of
        # descriptors, where accept() would fail in a loop.
        self.max_connections = max_connections or (
            resource.getrlimit(resource.RLIMIT_NOFILE)[0] - SPARE_FILES
        )

    async def handle_stream(self, stream, address):
        if len(self.sessions) >= self.max_connections:
            stream.write(replies.TOO_MANY_CONNECTIONS.wire)
            stream.close()
            return
        state = MailState(stream, address, self.settings, self.policy, self.tls,
                          self.implicit)
        self.sessions.add(state)
        try:
            await state.serve()
        finally:
            self.sessions.discard(state)



async def drain(servers, grace):
    """Stop listening; end each session at its next command, within ``grace`` seconds."""
    sessions = set()
    for smtp in servers:
        smtp.stop()
        sessions = smtp.sessions
    for state in list(sessions):
        state.shutdown()
    deadline = asyncio.get_running_loop().time() + grace
    while sessions and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.05)
    for state in list(sessions):
        state.close()
