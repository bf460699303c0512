"""Logging: the 1.x format, to the log file and, in the foreground, stderr.

Workers queue their records and a thread writes them, so the file never
blocks a session, even with --debug writing every line.  The master, which
has no sessions, writes directly.
"""

import logging
import logging.handlers
import os
import queue
import sys

from blackhole.errors import BlackholeError

FORMAT = "%(asctime)s - %(message)s"  # the 1.x format

_file_handlers = []


class LogFile(logging.FileHandler):
    """The log file, opened for appending without following a symbolic link."""

    def _open(self):
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
        return open(os.open(self.baseFilename, flags, 0o640), "a", encoding=self.encoding)


def configure(path, debug=False, stderr=False, threaded=False):
    """Send every log record to ``path`` (appended; None for no file) and maybe stderr.

    With ``threaded`` returns the started QueueListener (stop it to flush),
    else None.  Replaces whatever handlers were there (a forked worker's).
    """
    try:
        handlers = [LogFile(path, encoding="utf-8")] if path else []
    except OSError as error:
        raise BlackholeError(
            f"Cannot open log file '{path}': {error.strerror or error}"
        ) from None
    if stderr:
        handlers.append(logging.StreamHandler(sys.stderr))
    formatter = logging.Formatter(FORMAT)
    for handler in handlers:
        handler.setFormatter(formatter)
    root = logging.getLogger()
    for handler in root.handlers[:]:
        root.removeHandler(handler)
        handler.close()
    _file_handlers[:] = handlers[:1] if path else []
    root.setLevel(logging.INFO)
    logging.getLogger("blackhole").setLevel(logging.DEBUG if debug else logging.INFO)
    if not threaded:
        for handler in handlers:
            root.addHandler(handler)
        return None
    records = queue.SimpleQueue()
    root.addHandler(logging.handlers.QueueHandler(records))
    listener = logging.handlers.QueueListener(records, *handlers)
    listener.start()
    return listener


def reopen(owner=None):
    """SIGHUP: reopen the log file, which logrotate may have moved away.

    ``owner``: (uid, gid) to give a file created anew, so workers that have
    switched account can reopen it after the master.
    """
    for handler in _file_handlers:
        with handler.lock:
            try:
                stream = handler._open()
            except OSError:
                continue  # keep writing where we were rather than nowhere
            handler.stream.close()
            handler.stream = stream
        if owner:
            chown(owner)


def chown(owner):
    """Give the open log file to (uid, gid)."""
    for handler in _file_handlers:
        os.fchown(handler.stream.fileno(), *owner)
