"""The listeners: sockets bound at startup and the TCPServer that serves them."""

import errno
import socket

from tornado.netutil import bind_sockets
from tornado.tcpserver import TCPServer

from blackhole.errors import BlackholeError
from blackhole.mailstate import MailState

BACKLOG = 1024  # pending connections per listener; load tests open them in bursts


def bind(host, port):
    """Bind the plain SMTP port, turning the usual failures into one clear line."""
    where = f"{host}:{port}"
    try:
        return bind_sockets(port, address=host or None, backlog=BACKLOG)
    except socket.gaierror:
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


class SMTPServer(TCPServer):
    """Hands every accepted connection to a MailState of its own."""

    def __init__(self, settings, policy, **kwargs):
        super().__init__(**kwargs)
        self.settings = settings
        self.policy = policy

    async def handle_stream(self, stream, address):
        await MailState(stream, address, self.settings, self.policy).serve()
