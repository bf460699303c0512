"""Logging: records are queued in the event loop and written by a thread.

The file (and stderr, in the foreground) therefore never blocks a session,
even with --debug writing every line.
"""

import logging
import logging.handlers
import queue
import sys

from blackhole.errors import BlackholeError

FORMAT = "%(asctime)s - %(message)s"  # the 1.x format


def configure(path, debug=False, stderr=False):
    """Send every log record to ``path`` (appended) and maybe stderr.

    Returns the started QueueListener; stop it to flush before exiting.
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
    records = queue.SimpleQueue()
    root = logging.getLogger()
    for handler in root.handlers[:]:
        root.removeHandler(handler)
    root.addHandler(logging.handlers.QueueHandler(records))
    root.setLevel(logging.INFO)
    logging.getLogger("blackhole").setLevel(logging.DEBUG if debug else logging.INFO)
    listener = logging.handlers.QueueListener(records, *handlers)
    listener.start()
    return listener
