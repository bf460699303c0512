"""Descriptors: how many connections a worker can hold, and accepting within that.

Every connection costs a descriptor.  A worker serves within a budget taken
from its own limit once it holds everything else it needs, so a flood of
clients meets a 421 rather than a process that cannot open its log.  If the
descriptors run out all the same (the limit lowered from outside, the system
table full), the listener rests for a second instead of retrying at once, as
Tornado's accept loop does, which spins a core and logs each failure.
"""

import errno
import logging
import os
import resource
import time

from tornado.ioloop import IOLoop
from tornado.iostream import IOStream

log = logging.getLogger("blackhole")

RESERVE = 16  # kept free: reopening the log, a refused client's 421, a TLS wrap
REST = 1.0  # seconds a listener stops accepting once descriptors run out
ACCEPTS_AT_ONCE = 128  # per wakeup, so one busy listener cannot hold the loop
_EXHAUSTED = frozenset((errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM))
_last_warning = 0.0  # when a shortage was last logged, for one line a second at most


def open_count():
    """Descriptors this process holds now."""
    for directory in ("/proc/self/fd", "/dev/fd"):
        try:
            return len(os.listdir(directory)) - 1  # less the one listdir opened
        except OSError:
            continue
    return 0


def budget(reserved=0):
    """Connections this process may hold: its limit less what it holds now,
    ``reserved`` descriptors for other uses and RESERVE."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return max(1, soft - open_count() - reserved - RESERVE)


class Accepting:
    """A TCPServer mixin: its own accept loop, which rests when descriptors run out.

    Connections go to ``handle_stream`` (not a coroutine) as plain IOStreams.
    """

    _resting = None  # listening socket -> its timer while it rests
    _listening = ()

    def add_sockets(self, sockets):
        loop = IOLoop.current()
        if self._resting is None:
            self._resting = {}
            self._listening = []
        for sock in sockets:
            self._listening.append(sock)
            loop.add_handler(sock, self._accept, IOLoop.READ)

    def _accept(self, sock, events):
        for _ in range(ACCEPTS_AT_ONCE):
            try:
                connection, address = sock.accept()
            except BlockingIOError:
                return
            except ConnectionAbortedError:
                continue  # gone before we took it
            except OSError as error:
                if error.errno not in _EXHAUSTED:
                    raise
                self._rest(sock, error)
                return
            try:
                self.handle_stream(IOStream(connection, max_buffer_size=self.max_buffer_size,
                                            read_chunk_size=self.read_chunk_size), address)
            except Exception:  # that client's loss only: keep accepting
                log.exception("Accepting a connection from %s failed", address)
                connection.close()

    def _rest(self, sock, error):
        """Stop accepting on ``sock`` for REST seconds; clients wait in its backlog."""
        global _last_warning
        loop = IOLoop.current()
        loop.remove_handler(sock)
        self._resting[sock] = loop.call_later(REST, self._wake, sock)
        now = time.monotonic()
        if now - _last_warning >= REST:
            _last_warning = now
            log.warning("Out of descriptors (%s): not accepting for %gs", error.strerror, REST)

    def _wake(self, sock):
        del self._resting[sock]
        IOLoop.current().add_handler(sock, self._accept, IOLoop.READ)

    def stop(self):
        """Stop listening and close the listening sockets, resting or not."""
        loop = IOLoop.current()
        for sock in self._listening:
            timer = self._resting.pop(sock, None)
            if timer is None:
                loop.remove_handler(sock)
            else:
                loop.remove_timeout(timer)
            sock.close()
        self._listening = []
        super().stop()
