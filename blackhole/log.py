"""Logging: the 1.x format, to the log file and, in the foreground, stderr.

Workers queue their records and a thread writes them, so the file never
blocks a session, even with --debug writing every line.  The master, which
has no sessions, writes directly.
"""

import logging
import logging.handlers
import queue
import sys

from blackhole.errors import BlackholeError

FORMAT = "%(asctime)s - %(message)s"  # the 1.x format

_file_handlers = []


def configure(path, debug=False, stderr=False, threaded=False):
    """Send every log record to ``path`` (appended) and maybe stderr.

    With ``threaded`` returns the started QueueListener (stop it to flush),
    else None.  Replaces whatever handlers were there (a forked worker's).
    """
    try:
        handlers = [logging.FileHandler(path, encoding="utf-8")]
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
    _file_handlers[:] = handlers[:1]
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


def reopen():
    """SIGHUP: reopen the log file, which logrotate may have moved away."""
    for handler in _file_handlers:
        handler.close()  # the next record opens the path anew
