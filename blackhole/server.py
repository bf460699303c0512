"""The listeners: what to listen on, the sockets bound at startup, the TCPServer.

Besides the 1.x ``--host``/``--port``/``--ssl_port``, ``--listen`` and
``--ssl_listen`` take entries like ``:2525 mode=bounce delay=1-5 rule=rcpt:550:10%``,
each listener answering with its own mode, delay and rules; ``unix:/path``
listens on a Unix-domain socket, ``lmtp`` speaks LMTP (RFC 2033) there, and
``proxy=on`` reads a load balancer's PROXY header first (blackhole.proxy).
"""

import asyncio
import errno
import ipaddress
import logging
import os
import resource
import socket
import sys
from typing import NamedTuple

from tornado.netutil import bind_sockets, bind_unix_socket
from tornado.tcpserver import TCPServer

from blackhole import descriptors, metrics, replies
from blackhole.descriptors import Accepting
from blackhole.errors import BlackholeError
from blackhole.mailstate import MailState
from blackhole.policy import MODES, delay_range, parse_rule

log = logging.getLogger("blackhole")

BACKLOG = 1024  # pending connections per listener; load tests open them in bursts
STALE = 1.0  # seconds a client must have kept us waiting before it makes room
UNIX_PEER = ("unix", 0)  # the address of a client on a Unix-domain socket


class Listener(NamedTuple):
    """One address to serve, and all a connection there needs: implicit TLS,
    the TLS context, and the Policy made from its own mode, delay and rules
    (``process.prepare`` fills ``policy`` and ``tls`` in once they exist)."""

    host: str
    port: int
    implicit: bool = False
    mode: str = None  # None: --mode
    delay: object = None  # seconds or a (min, max) range; None: --delay
    rules: tuple = None  # parsed Rules; None: --rules
    policy: object = None  # the Policy its connections answer by
    tls: object = None  # the server SSLContext: STARTTLS, or at once if ``implicit``
    path: str = None  # a Unix-domain socket's, in place of host and port
    lmtp: bool = False  # LHLO and a reply per recipient (RFC 2033)
    proxy: bool = False  # a PROXY header comes first, from one of ``proxy_from``
    proxy_from: tuple = ()  # ip_networks of the balancers (--proxy_from)

    def __str__(self):
        return f"unix:{self.path}" if self.path else address(self.host, self.port)


def address(host, port):
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_listeners(text, implicit):
    """``[host]:port|unix:/path [lmtp] [proxy=on] [mode=M] [delay=N|MIN-MAX] [rule=RULE ...]``
    entries, separated by commas.

    ``:2525`` is every IPv4 address, ``:::2525`` every IPv6 one, ``[::1]:2525``
    one IPv6 address.
    """
    listeners = []
    for entry in filter(None, (part.strip() for part in text.split(","))):
        where, *settings = entry.split()
        options, rules, lmtp = {}, [], False
        for setting in settings:
            name, equals, value = setting.partition("=")
            if equals and name == "rule":  # as many as needed
                rules.append(value)
                continue
            if setting == "lmtp" and not lmtp:
                lmtp = True
                continue
            if not equals or name not in ("mode", "delay", "proxy") or name in options:
                raise BlackholeError(f"Invalid listener '{entry}': unknown setting '{setting}'")
            options[name] = value
        if options.get("mode", "accept") not in MODES:
            raise BlackholeError(f"Invalid listener '{entry}': unknown mode")
        if options.get("proxy", "off") not in ("on", "off"):
            raise BlackholeError(f"Invalid listener '{entry}': proxy is on or off")
        try:
            delay = delay_range(options["delay"]) if "delay" in options else None
        except ValueError:
            raise BlackholeError(f"Invalid listener '{entry}': bad delay") from None
        try:
            own = tuple(map(parse_rule, rules)) if rules else None
        except ValueError as error:  # it names the rule
            raise BlackholeError(str(error)) from None
        kind = {"mode": options.get("mode"), "delay": delay, "rules": own, "lmtp": lmtp,
                "proxy": options.get("proxy") == "on"}
        if where.startswith("unix:") and where[5:]:
            # Absolute: the daemon removes it at exit, from another directory.
            listeners.append(Listener("", 0, implicit, path=os.path.abspath(where[5:]), **kind))
            continue
        host, colon, port = where.rpartition(":")
        if not (colon and port.isdigit() and 0 < int(port) < 65536):
            raise BlackholeError(f"Invalid listener '{entry}': expected [host]:port or "
                                 "unix:/path")
        listeners.append(Listener(host.strip("[]") or "0.0.0.0", int(port), implicit, **kind))
    return listeners


def parse_networks(text, name="proxy_from"):
    """--proxy_from or --admin_from (``name``): ``CIDR,...`` (a bare address is one host)."""
    try:
        return tuple(ipaddress.ip_network(part.strip(), strict=False)
                     for part in text.split(",") if part.strip())
    except ValueError as error:
        raise BlackholeError(f"Invalid value for {name}: {error}") from None


def parse_socket_mode(text):
    """--socket_mode: permission bits in octal, such as 0660."""
    try:
        mode = int(text, 8)
    except ValueError:
        mode = -1
    if not 0 <= mode <= 0o777:
        raise BlackholeError(f"Invalid value for socket_mode: '{text}' is not an octal mode "
                             "such as 0666")
    return mode


def check_unique(listeners):
    seen = set()
    for listener in listeners:
        if (listener.host, listener.port, listener.path) in seen:
            raise BlackholeError(f"Duplicate listener {listener}")
        seen.add((listener.host, listener.port, listener.path))


def bind(host, port, workers=1):
    """Bind one address, turning the usual failures into one clear line.

    With several workers, each gets a socket of its own in one SO_REUSEPORT
    group, so the kernel spreads connections over them (a shared socket
    lets the quickest worker take most); returns one list of sockets per worker.
    """
    where = address(host, port)
    try:
        if workers == 1 or not sys.platform.startswith("linux"):
            # Elsewhere SO_REUSEPORT does not spread TCP connections: share one.
            return [bind_sockets(port, address=host or None, backlog=BACKLOG)]
        # SO_REUSEPORT would let a second blackhole share the port unnoticed:
        # a plain bind first keeps "Address already in use" honest.
        for probe in bind_sockets(port, address=host or None, backlog=1):
            probe.close()
        return [bind_sockets(port, address=host or None, backlog=BACKLOG, reuse_port=True)
                for _ in range(workers)]
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


def bind_unix(path, mode, owner=None):
    """Bind a Unix-domain socket file with permissions ``mode``, owned by ``owner``
    ((uid, gid) or None), replacing a stale one; returns the socket and the
    file's inode, so that only our own file is removed at exit.

    Every worker accepts on this one socket (SO_REUSEPORT does not balance
    Unix sockets).
    """
    where = f"unix:{path}"
    try:
        if _served(path):  # never take a live server's socket away
            raise BlackholeError(f"Address already in use, could not bind to {where}")
        sock = bind_unix_socket(path, mode, backlog=BACKLOG)  # removes a stale one first
        if owner:
            os.chown(path, *owner)
        return sock, os.stat(path).st_ino
    except ValueError:  # from bind_unix_socket
        raise BlackholeError(f"A file that is not a socket is in the way, could not bind "
                             f"to {where}") from None
    except OSError as error:
        raise BlackholeError(f"{error.strerror or error}, could not bind to {where}") from None


def _served(path):
    """Whether a socket file at ``path`` has a server accepting on it."""
    with socket.socket(socket.AF_UNIX) as probe:
        probe.settimeout(1)  # a full backlog would hold a blocking connect
        return os.path.exists(path) and probe.connect_ex(path) == 0


def unbind_unix(path, inode):
    """Remove the socket file we bound, unless another has taken its place."""
    try:
        if os.lstat(path).st_ino == inode:
            os.unlink(path)
    except OSError:
        pass  # gone already


def raise_file_limit():
    """Allow as many open connections as the hard limit on descriptors does."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


class Sessions(set):
    """The live sessions of one process, at most ``limit`` of them.

    One sweep a tick ends those idle for ``timeout`` seconds (cheaper, in time
    and memory, than a timer for each). From ``pressure`` sessions on, message
    data must keep up a minimum rate (MailState), and the sweep lists the
    sessions whose clients have kept us waiting longest: at the cap, the
    stalest of them makes room for a newcomer rather than the newcomer being
    refused, so clients that hold connections without making progress cannot
    lock out the rest.
    """

    def __init__(self, timeout, limit):
        super().__init__()
        self.limit = limit
        self.pressure = max(1, limit * 3 // 4)
        self._tick = min(1.0, timeout / 8)
        self._sweeper = None
        self._stale = []  # sessions waiting on their clients, stalest last

    def add(self, state):
        super().add(state)
        if self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().call_later(self._tick, self._sweep)

    def make_room(self):
        """End the stalest session listed by the last sweep, if it is still waiting
        on its client after STALE seconds; True if one was ended."""
        now = asyncio.get_running_loop().time()
        while self._stale:
            state = self._stale.pop()
            since = state.idle_since
            if state in self and since is not None and now - since >= STALE:
                state.expire(replies.MAKING_ROOM)
                return True
        return False

    def _sweep(self):
        loop = asyncio.get_running_loop()
        now = loop.time()
        pressed = len(self) >= self.pressure
        stale = []
        try:
            for state in list(self):  # a copy: closing a session leaves the set
                try:
                    since = state.check_idle(now)
                except Exception:  # one session's fault must not stop the sweep
                    log.exception("Idle check of %s failed", state.address[0])
                    continue
                if pressed and since is not None and now - since >= STALE:
                    stale.append(state)
            stale.sort(key=lambda state: state.idle_since, reverse=True)
            self._stale = stale
        finally:
            if self:
                self._sweeper = loop.call_later(self._tick, self._sweep)
            else:
                self._sweeper, self._stale = None, []


class SMTPServer(Accepting, TCPServer):
    """Hands every connection accepted on ``listener`` to a MailState of its own.

    Listeners of one process share ``sessions``, and so the connection cap:
    without one, the server counts its own, up to ``max_connections`` or
    what its descriptors allow.
    """

    def __init__(self, settings, listener, sessions=None, max_connections=None):
        super().__init__()
        self.settings = settings
        self.listener = listener
        if sessions is None:
            sessions = Sessions(settings.timeout, max_connections or descriptors.budget())
        self.sessions = sessions

    def add_sockets(self, sockets):
        """Listen on ``sockets``; TCP connections inherit TCP_NODELAY, saving a call each."""
        for sock in sockets:
            if sock.family != socket.AF_UNIX:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        super().add_sockets(sockets)

    def handle_stream(self, stream, address):
        """Give the connection a MailState, or 421 if there are too many."""
        if self.listener.path:
            address = UNIX_PEER  # Unix-domain clients are unnamed
        sessions = self.sessions
        if len(sessions) >= sessions.limit and not sessions.make_room():
            metrics.counts[metrics.OPENED] += 1
            if not self.listener.implicit:  # plaintext would mean nothing to a TLS client
                metrics.replied(replies.TOO_MANY_CONNECTIONS)
                stream.write(replies.TOO_MANY_CONNECTIONS.wire)
            stream.close()
            metrics.session_ended(0)
            return
        MailState(stream, address, self.settings, self.listener).start(sessions)


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
