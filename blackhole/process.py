"""The process model: serve in the foreground until SIGINT or SIGTERM."""

import asyncio
import logging
import signal

from blackhole import log as logs
from blackhole import server

log = logging.getLogger("blackhole")

GRACE = 10  # seconds sessions in flight get to finish after a stop signal


async def serve(sockets, settings, policy):
    """Serve on the bound sockets until a stop signal arrives."""
    smtp = server.SMTPServer(settings, policy)
    smtp.add_sockets(sockets)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    log.info("Stopping")
    await smtp.drain(GRACE)


def run(values, settings, policy):
    """The ``run`` action: bind, log to the file and stderr, serve until stopped."""
    server.raise_file_limit()
    sockets = server.bind(values.host, values.port)
    listener = logs.configure(values.log, values.debug, stderr=True)
    try:
        log.info("Listening on %s:%d, mode %s", values.host, values.port, policy.mode)
        asyncio.run(serve(sockets, settings, policy))
    finally:
        listener.stop()
    return 0
