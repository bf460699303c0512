"""The control and metrics port (``--metrics_port``): a small HTTP server in every worker.

GET /metrics (Prometheus text), GET /healthz, GET /stats (JSON counters
summed over every worker) and GET, PUT and DELETE /rules (the running mode,
delay and rules: see ``rulebook``). Requests are small, and slow ones are
not waited for: a header within TIMEOUT seconds and MAX_HEADER octets; a
body only for PUT /rules, declared by Content-Length, at most MAX_BODY
octets and within BODY_TIMEOUT seconds. Any other body is never read: a
larger one is refused (413) from the header alone. Writes come only from
``--admin_from`` or with ``Authorization: Bearer --admin_token``.
"""

import asyncio
import hmac
import ipaddress
import json
import logging
from http import HTTPStatus
from typing import NamedTuple

from tornado.httpserver import HTTPServer
from tornado.httputil import (HTTPHeaders, HTTPMessageDelegate, HTTPServerConnectionDelegate,
                              ResponseStartLine)
from tornado.iostream import StreamClosedError

from blackhole import metrics, rulebook, server
from blackhole.descriptors import Accepting

log = logging.getLogger("blackhole")

MAX_HEADER = 16 * 1024  # octets of request line and header fields
MAX_BODY = 64 * 1024  # octets of body read at most (PUT /rules)
TIMEOUT = 5  # seconds from connecting to the end of the request's header
BODY_TIMEOUT = 2  # seconds from the header to the end of a PUT's body
CONNECTIONS = 16  # open at once per worker, within its descriptor budget

PAGES = {"/metrics": ("GET",), "/healthz": ("GET",), "/stats": ("GET",),
         "/rules": ("GET", "PUT", "DELETE")}
_JSON = {"Content-Type": "application/json"}
_TEXT = {"Content-Type": "text/plain; charset=utf-8"}


class Admin(NamedTuple):
    """Who may change the rules: ``--admin_from`` networks, or the ``--admin_token`` bearer."""

    networks: tuple
    token: str = None

    def allows(self, address, headers):
        try:
            client = ipaddress.ip_address(address)
        except ValueError:
            client = None
        if client is not None:
            client = getattr(client, "ipv4_mapped", None) or client
            if any(client in network for network in self.networks):
                return True
        scheme, _, given = headers.get("Authorization", "").partition(" ")
        return bool(self.token) and scheme.lower() == "bearer" and hmac.compare_digest(
            given.strip().encode(), self.token.encode())


def admin(networks, token):
    """The Admin of ``--admin_from`` (comma-separated CIDRs) and ``--admin_token``."""
    return Admin(server.parse_networks(networks, "admin_from"), token or None)


def http_server(blocks, healthy, follower, admin):
    """The port, not yet listening. ``healthy()`` is true while mail is
    accepted; ``follower`` is this worker's ``rulebook.Follower``."""
    return _Port(_Pages(blocks, healthy, follower, admin), max_header_size=MAX_HEADER,
                 max_body_size=MAX_BODY, idle_connection_timeout=TIMEOUT,
                 body_timeout=BODY_TIMEOUT)


class _Port(Accepting, HTTPServer):
    """At most CONNECTIONS connections at once, so the port keeps to its share
    of the worker's descriptors; more are closed at once."""

    _open = 0

    def handle_stream(self, stream, address):
        if self._open >= CONNECTIONS:
            stream.close()
            return
        self._open += 1
        super().handle_stream(stream, address)

    def on_close(self, server_conn):
        self._open -= 1
        super().on_close(server_conn)


def _json(status, value):
    return status, _JSON, (json.dumps(value) + "\n").encode()


def _line(status, text):
    return status, _TEXT, f"{text}\n".encode()


class _Pages(HTTPServerConnectionDelegate):
    """Every page, answered from the header alone or, for /rules, once the
    change has been made (``answer`` returns a coroutine function for those)."""

    def __init__(self, blocks, healthy, follower, admin):
        self.blocks, self.healthy, self.follower, self.admin = blocks, healthy, follower, admin

    def start_request(self, server_conn, request_conn):
        return _Request(self, request_conn)

    def answer(self, start_line, headers, client):
        """(status, headers, body), or an ``async (body) -> (status, headers, body)``."""
        declared = headers.get("Content-Length", "")
        if declared.isascii() and declared.isdigit() and int(declared) > MAX_BODY:
            return 413, {}, b""  # RFC 9110 15.5.14
        path, method = start_line.path.partition("?")[0], start_line.method
        if path not in PAGES:
            return 404, {}, b""
        if method not in PAGES[path]:
            return 405, {"Allow": ", ".join(PAGES[path])}, b""  # RFC 9110 15.5.6
        if method != "GET" and not self.admin.allows(client, headers):
            return _line(403, "changes come from --admin_from, or with "
                              "'Authorization: Bearer' and --admin_token")
        if method == "PUT" and "Transfer-Encoding" in headers:
            return 411, {}, b""  # RFC 9110 15.5.12: a size, so a large body is never read
        if path == "/healthz":
            healthy = self.healthy()
            return _line(200 if healthy else 503, "OK" if healthy else "stopping")
        if path == "/metrics":
            page = metrics.exposition(self.blocks, self.healthy()).encode()
            return 200, {"Content-Type": "text/plain; version=0.0.4; charset=utf-8"}, page
        if path == "/stats":
            return _json(200, self.stats())
        return {"GET": self.show, "PUT": self.put, "DELETE": self.restore}[method]

    def stats(self):
        applied = self.follower.book.workers()
        return {**metrics.stats(self.blocks),
                "workers": [{"pid": pid, "generation": applied.get(pid, -1)}
                            for pid in sorted(self.follower.live())]}

    async def show(self, body):
        shown = await self.follower.show()
        return _json(200, shown) if shown else _line(503, "the rules are being changed: try again")

    async def put(self, body):
        try:
            change = json.loads(body)
        except (ValueError, RecursionError) as error:  # RecursionError: nested too deep
            return _line(400, f"the body is not JSON: {error}")
        running = self.follower.book.running
        return self._changed(await self.follower.change(
            lambda current: rulebook.revised(current, change, running)))

    async def restore(self, body):
        started = self.follower.book.started
        return self._changed(await self.follower.change(lambda current: started))

    @staticmethod
    def _changed(outcome):
        status, value = outcome
        return _json(status, value) if status == 200 else _line(status, value)


class _Request(HTTPMessageDelegate):
    """One request, and the connection's last: answered as soon as its header
    is in (Tornado closes the connection rather than read a body after the
    answer, so such a body is never read), or for /rules once it is all in."""

    def __init__(self, pages, connection):
        self.pages, self.connection = pages, connection
        self.later, self.body, self.task = None, [], None

    def headers_received(self, start_line, headers):
        outcome = self.pages.answer(start_line, headers, self.connection.context.remote_ip)
        if isinstance(outcome, tuple):
            self.send(*outcome)
        else:
            self.later = outcome

    def data_received(self, chunk):
        self.body.append(chunk)  # only for /rules, MAX_BODY octets at most

    def finish(self):
        if self.later is not None:
            self.task = asyncio.ensure_future(self.respond())

    async def respond(self):
        try:
            outcome = await self.later(b"".join(self.body))
        except Exception:  # a fault here must not end the worker, nor leave the client hanging
            log.exception("Control request failed")
            outcome = _line(500, "internal error: see the log")
        self.send(*outcome)

    def send(self, status, fields, body):
        fields = HTTPHeaders({**fields, "Content-Length": str(len(body)), "Connection": "close"})
        try:
            self.connection.write_headers(
                ResponseStartLine("HTTP/1.1", status, HTTPStatus(status).phrase), fields, body)
            self.connection.finish()
        except StreamClosedError:
            pass  # the client left before its answer
