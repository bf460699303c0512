"""Fixtures: a real server on a loopback port, raw and smtplib clients, the CLI as a process."""

import contextlib
import os
import random
import resource
import signal
import socket
import ssl
import subprocess
import sys
import time

import pytest
from tornado.ioloop import IOLoop
from tornado.iostream import StreamClosedError
from tornado.netutil import bind_sockets
from tornado.tcpclient import TCPClient

from blackhole.config import Settings
from blackhole.process import workers_of
from blackhole.policy import Policy, parse_rules
from blackhole.server import Listener, SMTPServer, parse_networks

HOST = "127.0.0.1"


@pytest.fixture
def smtp_server(io_loop):
    """Start an SMTPServer on the test's IOLoop: ``smtp_server(mode=..., delay=..., **settings)``.

    ``rules`` is rule text as --rules takes it; ``seed`` seeds the policy's draws;
    ``limits`` is a capacity.Limits.

    ``tls`` (an SSLContext) offers STARTTLS, or with ``implicit`` speaks TLS at
    once. ``proxy_from`` (--proxy_from's text) wants a PROXY header first;
    ``lmtp`` speaks LMTP. Returns the server and the port it listens on,
    127.0.0.1 only.
    """
    servers = []

    def start(mode="accept", delay=0, tls=None, implicit=False, max_connections=None,
              rules="", seed=None, proxy_from=None, lmtp=False, limits=None, **settings):
        sockets = bind_sockets(0, HOST)
        policy = Policy(mode, delay, parse_rules(rules), random.Random(seed), limits)
        listener = Listener(HOST, sockets[0].getsockname()[1], implicit, policy=policy, tls=tls,
                            lmtp=lmtp, proxy=proxy_from is not None,
                            proxy_from=parse_networks(proxy_from or ""))
        server = SMTPServer(Settings(**settings), listener, max_connections=max_connections)
        server.add_sockets(sockets)
        servers.append(server)
        return server, sockets[0].getsockname()[1]

    yield start
    for server in servers:
        server.stop()
        for state in list(server.sessions):
            state.close()


@pytest.fixture
def serve(smtp_server):
    """Like ``smtp_server``, returning the port only."""
    return lambda *args, **kwargs: smtp_server(*args, **kwargs)[1]


@pytest.fixture
def port(serve):
    """A server with the default settings."""
    return serve()


def in_thread(function, *args):
    """Run a blocking client (smtplib, plain sockets) off the server's loop."""
    return IOLoop.current().run_in_executor(None, function, *args)


class Client:
    """A raw SMTP client for exact bytes: send anything, read whole replies."""

    def __init__(self, stream):
        self.stream = stream
        self.greeting = None

    @classmethod
    async def connect(cls, port):
        client = cls(await TCPClient().connect(HOST, port))
        client.greeting = await client.reply()
        return client

    async def send(self, data):
        await self.stream.write(data)

    async def reply(self):
        """One reply as (code, text), the text of multi-line replies joined by newlines."""
        lines = []
        while True:
            line = (await self.stream.read_until(b"\r\n")).decode()
            lines.append(line[4:-2])
            if line[3] == " ":
                return int(line[:3]), "\n".join(lines)

    async def replies(self, count):
        return [await self.reply() for _ in range(count)]

    async def command(self, line):
        await self.send(line.encode() + b"\r\n")
        return await self.reply()

    async def start_data(self):
        """MAIL, RCPT and DATA for one message; the server must answer 354."""
        for line in ("MAIL FROM:<a@example.com>", "RCPT TO:<b@example.com>"):
            await self.command(line)
        assert (await self.command("DATA"))[0] == 354

    async def message(self, body):
        """Send one whole message (body ending in CRLF.CRLF); return the end-of-data reply."""
        await self.start_data()
        await self.send(body)
        return await self.reply()

    async def closed(self):
        """True once the server has closed the connection (and sent nothing more)."""
        try:
            await self.stream.read_bytes(1)
        except StreamClosedError:
            return True
        return False

    def close(self):
        self.stream.close()


@pytest.fixture
def connect(port):
    """Connect raw clients to the default server; closed after the test."""
    clients = []

    async def open_client(to_port=None):
        client = await Client.connect(to_port or port)
        clients.append(client)
        return client

    yield open_client
    for client in clients:
        client.close()


def insecure_context():
    """A TLS client that accepts any certificate, such as the self-signed one."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def _ephemeral_low():
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as ports:
            return int(ports.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


_FIRST_FREE = 10000  # below: ports that other services on the machine may use
_handed_out = set()


def free_port():
    """A port free now, for a server a test starts in a moment.

    Taken below the kernel's ephemeral range: bind(0) and the source port of
    every outgoing connection on the machine come from that range, and could
    take the number before the server binds it (it did, under load).
    """
    low = _ephemeral_low()
    while True:
        if low - _FIRST_FREE > 1000:
            port = random.randrange(_FIRST_FREE, low)
        else:  # a machine whose ephemeral range leaves no room below it
            with socket.socket() as probe:
                probe.bind((HOST, 0))
                port = probe.getsockname()[1]
        if port in _handed_out:
            continue
        with socket.socket() as probe:
            try:
                probe.bind((HOST, port))
            except OSError:
                continue  # in use: try another
        _handed_out.add(port)
        return port


def blackhole(*args, **kwargs):
    """Run the blackhole command to completion; returns the CompletedProcess."""
    return subprocess.run(
        [sys.executable, "-m", "blackhole", *args],
        capture_output=True, text=True, timeout=30, **kwargs,
    )


def wait_for_port(port, process, seconds=15):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"blackhole exited early: {process.communicate()}")
        try:
            socket.create_connection((HOST, port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"nothing listening on {port} after {seconds}s")


@pytest.fixture
def daemon(tmp_path):
    """Start ``blackhole ... run`` as a real process: ``daemon(*options)`` -> (process, port).

    Every process started is ended by its PID after the test.
    """
    processes = []

    def start(*options, port=None, env=None, files=None):
        """``files``: the server's limit on descriptors (soft and hard)."""
        port = port or free_port()
        args = [f"--host={HOST}", f"--port={port}", f"--ssl_port={free_port()}",
                f"--log={tmp_path / 'blackhole.log'}"]
        limit = files and (lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (files, files)))
        process = subprocess.Popen(
            [sys.executable, "-m", "blackhole", *args, *options, "run"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
            preexec_fn=limit,
        )
        processes.append(process)
        wait_for_port(port, process)
        return process, port

    yield start
    for process in processes:
        stop_by_pid(process)


def stop_by_pid(process):
    """SIGTERM a blackhole master; SIGKILL it and its workers if they linger."""
    if process.poll() is None:
        workers = workers_of(process.pid)
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            for pid in [process.pid, *workers]:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass  # already gone
    process.communicate(timeout=10)


def serving_workers(process, log, count):
    """The pids of the daemon's ``count`` workers, once each says it serves."""
    deadline = time.monotonic() + 15
    while True:
        pids = workers_of(process.pid)
        text = log.read_text() if log.exists() else ""
        if len(pids) == count and all(f"Worker {pid} serving on " in text for pid in pids):
            return pids
        assert time.monotonic() < deadline, f"workers not serving: {pids}"
        time.sleep(0.05)


@contextlib.contextmanager
def only_worker(workers, chosen):
    """Let only worker ``chosen`` accept connections: the others are stopped
    (SIGSTOP, by pid) until the block ends, so what is greeted is its own."""
    others = [pid for pid in workers if pid != chosen]
    for pid in others:
        os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        for pid in others:
            os.kill(pid, signal.SIGCONT)


class BlockingClient:
    """A raw SMTP client on a blocking socket, for threads and workers of a daemon."""

    def __init__(self, sock):
        self.sock = sock
        self.file = sock.makefile("rb")
        self.greeting = None
        self.tries = 1  # connections it took to be greeted

    def reply(self):
        """One reply as (code, text), the text of multi-line replies joined by newlines."""
        lines = []
        while True:
            line = self.file.readline().decode()
            if not line:
                raise ConnectionError("closed by the server")
            lines.append(line[4:].rstrip("\r\n"))
            if line[3] == " ":
                return int(line[:3]), "\n".join(lines)

    def command(self, line):
        self.sock.sendall(line.encode() + b"\r\n")
        return self.reply()

    def closed(self):
        """True once the server has closed the connection (and sent nothing more)."""
        return self.sock.recv(1) == b""

    def close(self):
        self.file.close()
        self.sock.close()


def greeted(port, wait=0.5, tries=40, source=HOST):
    """A BlockingClient greeted by a worker that answers (the greeting in ``.greeting``).

    A connection that the kernel gives to a stopped worker gets no greeting
    within ``wait`` seconds: it is closed and another is tried.
    """
    for tried in range(1, tries + 1):
        sock = socket.create_connection((HOST, port), timeout=10, source_address=(source, 0))
        sock.settimeout(wait)
        client = BlockingClient(sock)
        try:
            client.greeting = client.reply()
        except TimeoutError:
            client.close()
            continue
        sock.settimeout(10)
        client.tries = tried
        return client
    raise AssertionError(f"no worker greeted in {tries} tries")
