"""The process model: serve in the foreground until SIGINT or SIGTERM."""

import asyncio
import logging
import signal

from blackhole import log as logs
from blackhole import server, tls

log = logging.getLogger("blackhole")

GRACE = 10  # seconds sessions in flight get to finish after a stop signal


async def serve(listeners, settings, policy, context):
    """Serve on the bound sockets until a stop signal arrives.

    ``listeners`` pairs each list of sockets with whether it is implicit TLS.
    """
    sessions = set()
    servers = []
    for sockets, implicit in listeners:
        smtp = server.SMTPServer(settings, policy, context, implicit, sessions)
        smtp.add_sockets(sockets)
        servers.append(smtp)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    log.info("Stopping")
    await server.drain(servers, GRACE)


def run(values, settings, policy):
    """The ``run`` action: bind, log to the file and stderr, serve until stopped."""
    context = None
    if values.ssl:
        context = tls.server_context(values.ssl_cert, values.ssl_key,
                                     values.tls_min_version, settings.mailname)
    server.raise_file_limit()
    listeners = [(server.bind(values.host, values.port), False)]
    if context:
        listeners.append((server.bind(values.host, values.ssl_port), True))
    listener = logs.configure(values.log, values.debug, stderr=True)
    try:
        log.info("Listening on %s:%d, mode %s", values.host, values.port, policy.mode)
        if context:
            log.info("Listening for SMTPS on %s:%d, STARTTLS offered on %d",
                     values.host, values.ssl_port, values.port)
            if values.ssl_cert is None and values.ssl_key is None:
                log.info("No certificate configured: using a self-signed one for %s",
                         settings.mailname)
        asyncio.run(serve(listeners, settings, policy, context))
    finally:
        listener.stop()
    return 0
