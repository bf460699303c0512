"""TLS over loopback with real clients: SMTPS, STARTTLS, injection, versions, faulty peers."""

import asyncio
import logging
import smtplib
import socket
import ssl
import struct
import subprocess
import time

from pathlib import Path

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID
from tornado.iostream import IOStream

from blackhole import metrics, replies, tls
from tests.conftest import HOST, blackhole, free_port, in_thread, insecure_context
from tests.test_commands import expected_mailname


@pytest.fixture(scope="module")
def ca():
    return trustme.CA()


@pytest.fixture
def cert_files(ca, tmp_path):
    """A certificate chain and key for localhost and 127.0.0.1, as PEM files."""
    issued = ca.issue_cert("localhost", HOST)
    chain, key = tmp_path / "chain.pem", tmp_path / "key.pem"
    chain.write_bytes(b"".join(blob.bytes() for blob in issued.cert_chain_pems))
    issued.private_key_pem.write_to_path(str(key))
    return str(chain), str(key)


@pytest.fixture
def context(cert_files):
    return tls.server_context(*cert_files)


@pytest.fixture
def client_context(ca):
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


def old_tls_client(ca):
    """A client that speaks nothing newer than TLS 1.1."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ca.configure_trust(context)
    context.minimum_version = ssl.TLSVersion.TLSv1
    context.maximum_version = ssl.TLSVersion.TLSv1_1
    context.set_ciphers("DEFAULT:@SECLEVEL=0")
    return context


def transaction(smtp):
    return smtp.sendmail("a@example.com", ["b@example.com"], b"Subject: tls\r\n\r\nsecret\r\n")


@pytest.mark.gen_test
async def test_smtps_port_speaks_tls_from_the_first_byte(serve, context, client_context):
    port = serve(tls=context, implicit=True)

    def session():
        with smtplib.SMTP_SSL(HOST, port, context=client_context) as smtp:
            code, _ = smtp.ehlo()
            return code, smtp.has_extn("starttls"), smtp.sock.version(), transaction(smtp)

    code, starttls, version, refused = await in_thread(session)
    assert (code, starttls, refused) == (250, False, {})
    assert version in ("TLSv1.2", "TLSv1.3")


@pytest.mark.gen_test
async def test_starttls_then_a_whole_transaction(serve, context, client_context):
    port = serve(tls=context)

    def session():
        with smtplib.SMTP(HOST, port) as smtp:
            smtp.ehlo()
            offered = smtp.has_extn("starttls")
            ready = smtp.starttls(context=client_context)
            smtp.ehlo()
            return offered, ready, smtp.has_extn("starttls"), transaction(smtp)

    offered, ready, offered_again, refused = await in_thread(session)
    assert offered and not offered_again
    assert ready == (220, b"2.0.0 Ready to start TLS")
    assert refused == {}


def plain_session(port):
    sock = socket.create_connection((HOST, port), timeout=10)
    lines = sock.makefile("rb")
    assert lines.readline().startswith(b"220 ")
    sock.sendall(b"EHLO client.example\r\n")
    while lines.readline()[3:4] == b"-":
        pass
    return sock, lines


@pytest.mark.gen_test
async def test_plaintext_after_starttls_is_never_run_inside_tls(serve, context, client_context):
    """CVE-2011-0411: STARTTLS and NOOP in one write; the NOOP must be dropped."""
    port = serve(tls=context)

    def inject():
        sock, _ = plain_session(port)
        sock.sendall(b"STARTTLS\r\nNOOP\r\n")
        ready = b""
        while not ready.endswith(b"\r\n"):  # byte by byte: leave the rest unread
            ready += sock.recv(1)
        time.sleep(0.2)
        sock.setblocking(False)
        with pytest.raises(BlockingIOError):  # nor was the NOOP answered in plaintext
            sock.recv(1, socket.MSG_PEEK)
        sock.setblocking(True)
        secure = client_context.wrap_socket(sock, server_hostname="localhost")
        secure.sendall(b"EHLO client.example\r\n")
        first = secure.makefile("rb").readline()
        secure.close()
        return ready, first

    ready, first = await in_thread(inject)
    assert ready == b"220 2.0.0 Ready to start TLS\r\n"
    assert first.startswith(b"250-")  # EHLO's reply: nothing answered the NOOP


@pytest.mark.gen_test(timeout=20)
async def test_plaintext_sent_after_starttls_in_its_own_packet_closes(serve, context, caplog):
    """While the 220 waits out a delay, the injected line reaches Tornado's buffer."""
    port = serve(tls=context, delay=1)

    def inject():
        sock = socket.create_connection((HOST, port), timeout=10)
        sock.recv(1024)
        sock.sendall(b"STARTTLS\r\n")
        time.sleep(0.3)
        sock.sendall(b"NOOP\r\n")
        return closed_by_server(sock), sock

    closed, sock = await in_thread(inject)
    sock.close()
    assert closed
    assert not [record for record in caplog.records if record.exc_info]


@pytest.mark.gen_test
async def test_the_session_starts_over_after_starttls(serve, context, client_context):
    port = serve(tls=context)

    def session():
        with smtplib.SMTP(HOST, port) as smtp:
            smtp.ehlo()
            smtp.starttls(context=client_context)
            before_ehlo = smtp.docmd("MAIL FROM:<a@example.com>")
            smtp.ehlo()
            again = smtp.docmd("STARTTLS")
            smtp.mail("a@example.com")
            in_transaction = smtp.docmd("STARTTLS")
            return before_ehlo, again, in_transaction

    before_ehlo, again, in_transaction = await in_thread(session)
    assert before_ehlo == (503, b"5.5.1 Send HELO or EHLO first")
    assert again == (503, b"5.5.1 TLS already active")
    assert in_transaction[0] == 503


@pytest.mark.gen_test
async def test_starttls_refusals(serve, connect, context):
    client = await connect(serve(tls=context))
    await client.command("EHLO client.example")
    assert await client.command("STARTTLS now") == (501, "5.5.4 Syntax: STARTTLS")
    await client.command("MAIL FROM:<a@example.com>")
    assert await client.command("STARTTLS") == (
        503, "5.5.1 STARTTLS not allowed in a mail transaction")


@pytest.mark.gen_test
async def test_starttls_on_the_smtps_port_is_refused(serve, context, client_context):
    port = serve(tls=context, implicit=True)

    def session():
        with smtplib.SMTP_SSL(HOST, port, context=client_context) as smtp:
            smtp.ehlo()
            return smtp.docmd("STARTTLS")

    assert await in_thread(session) == (503, b"5.5.1 TLS already active")


@pytest.mark.gen_test
async def test_without_tls_starttls_is_neither_advertised_nor_accepted(connect):
    client = await connect()
    _, text = await client.command("EHLO client.example")
    assert "STARTTLS" not in text.split("\n")
    assert await client.command("STARTTLS") == (502, "5.5.1 STARTTLS not available")
    assert (await client.command("NOOP"))[0] == 250


@pytest.mark.gen_test
@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1:DeprecationWarning")
async def test_tls_1_0_and_1_1_are_refused(serve, context, ca, client_context):
    port = serve(tls=context, implicit=True)

    def old_client():
        with socket.create_connection((HOST, port), timeout=10) as sock:
            try:
                old_tls_client(ca).wrap_socket(sock, server_hostname="localhost")
            except (ssl.SSLError, ConnectionError) as error:
                return error
        return None

    assert isinstance(await in_thread(old_client), ssl.SSLError)

    def modern_client():
        with smtplib.SMTP_SSL(HOST, port, context=client_context) as smtp:
            return smtp.noop()[0]

    assert await in_thread(modern_client) == 250


@pytest.mark.gen_test
@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1:DeprecationWarning")
async def test_minimum_version_can_be_lowered_for_old_senders(serve, cert_files, ca):
    port = serve(tls=tls.server_context(*cert_files, min_version="1.0"), implicit=True)

    def old_client():
        with smtplib.SMTP_SSL(HOST, port, context=old_tls_client(ca)) as smtp:
            return smtp.sock.version(), smtp.noop()[0]

    assert await in_thread(old_client) == ("TLSv1.1", 250)


def closed_by_server(sock):
    """True once the server closes (after any TLS alert it sends); False on a timeout."""
    try:
        while sock.recv(4096):
            pass
    except ConnectionResetError:
        pass
    except TimeoutError:
        return False
    return True


@pytest.mark.gen_test
async def test_garbage_instead_of_a_client_hello_closes_quietly(
        serve, context, client_context, caplog):
    caplog.set_level(logging.DEBUG)
    smtps, plain = serve(tls=context, implicit=True), serve(tls=context)

    def garbage():
        with socket.create_connection((HOST, smtps), timeout=10) as sock:
            sock.sendall(b"EHLO plaintext.example\r\n" * 20)
            first = closed_by_server(sock)
        sock, lines = plain_session(plain)
        sock.sendall(b"STARTTLS\r\n")
        lines.readline()
        sock.sendall(b"\x16\x03\x01\x00\x05hello, this is not TLS" * 10)
        second = closed_by_server(sock)
        sock.close()
        with smtplib.SMTP_SSL(HOST, smtps, context=client_context) as smtp:
            return first, second, smtp.noop()[0]

    assert await in_thread(garbage) == (True, True, 250)
    assert not [record for record in caplog.records if record.exc_info]
    assert len([r for r in caplog.records if r.levelno >= logging.WARNING]) <= 2


@pytest.mark.gen_test(timeout=30)
async def test_a_stalled_handshake_delays_no_one_and_times_out(
        serve, context, client_context):
    smtps, plain = serve(tls=context, implicit=True, timeout=1), serve(tls=context, timeout=1)

    def stall_then_others():
        started = time.monotonic()
        stalled = socket.create_connection((HOST, smtps), timeout=10)
        half, lines = plain_session(plain)
        half.sendall(b"STARTTLS\r\n")
        lines.readline()  # then no ClientHello
        with smtplib.SMTP_SSL(HOST, smtps, context=client_context) as smtp:
            delivered = transaction(smtp)
        served_in = time.monotonic() - started
        closed = closed_by_server(stalled), closed_by_server(half)
        gave_up_after = time.monotonic() - started
        stalled.close()
        half.close()
        return delivered, served_in, closed, gave_up_after

    delivered, served_in, closed, gave_up_after = await in_thread(stall_then_others)
    assert delivered == {} and served_in < 1
    assert closed == (True, True) and gave_up_after < 5


@pytest.mark.gen_test(timeout=30)
async def test_openssl_s_client_starttls(serve, context, ca, tmp_path):
    port = serve(tls=context)
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    session = b"EHLO openssl.example\nMAIL FROM:<a@example.com>\nRCPT TO:<b@example.com>\n" \
              b"DATA\nSubject: s_client\n\nhello\n.\nQUIT\n"

    def s_client():
        return subprocess.run(
            ["openssl", "s_client", "-starttls", "smtp", "-connect", f"{HOST}:{port}",
             "-CAfile", str(tmp_path / "ca.pem"), "-verify_return_error", "-crlf",
             "-quiet", "-ign_eof"],
            input=session, capture_output=True, timeout=20)

    result = await in_thread(s_client)
    assert result.returncode == 0, result.stderr
    assert b"250 2.0.0 OK\r\n" in result.stdout
    assert result.stdout.endswith(b"221 2.0.0 Thank you for speaking to me\r\n")


# The TLS options through the real command.

def test_bad_certificate_options_get_one_line(cert_files, ca, tmp_path):
    chain, key = cert_files
    other_key = tmp_path / "other.pem"
    ca.issue_cert("other.example").private_key_pem.write_to_path(str(other_key))
    encrypted = tmp_path / "encrypted.pem"
    loaded = serialization.load_pem_private_key(Path(key).read_bytes(), password=None)
    encrypted.write_bytes(loaded.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"passphrase")))
    cases = [
        ([f"--ssl_cert={tmp_path}/missing.pem", f"--ssl_key={key}"],
         f"Certificate '{tmp_path}/missing.pem' does not exist"),
        ([f"--ssl_cert={chain}", f"--ssl_key={tmp_path}/missing.pem"],
         f"Keyfile '{tmp_path}/missing.pem' does not exist"),
        ([f"--ssl_key={key}"], "You need to set an SSL certificate and SSL key"),
        ([f"--ssl_cert={chain}"], "You need to set an SSL certificate and SSL key"),
        ([f"--ssl_cert={chain}", f"--ssl_key={other_key}"],
         f"Certificate '{chain}' and key '{other_key}' do not match"),
        ([f"--ssl_cert={key}", f"--ssl_key={chain}"],
         f"Certificate '{key}' or key '{chain}' is not a valid PEM file"),
        (["--tls_min_version=1.4"], "Unknown TLS version '1.4': choose one of 1.0, 1.1, 1.2, 1.3"),
        ([f"--ssl_cert={chain}", f"--ssl_key={encrypted}"],
         f"Key '{encrypted}' is encrypted: give blackhole an unencrypted key"),
    ]
    for options, message in cases:
        result = blackhole(f"--host={HOST}", f"--port={free_port()}",
                           f"--ssl_port={free_port()}", f"--log={tmp_path}/log", *options, "run")
        assert (result.returncode, result.stderr) == (1, f"blackhole: {message}\n"), options


def test_run_with_a_certificate_chain_serves_smtps_and_starttls(daemon, cert_files,
                                                                client_context):
    chain, key = cert_files
    ssl_port = free_port()
    _, port = daemon(f"--ssl_cert={chain}", f"--ssl_key={key}", f"--ssl_port={ssl_port}")
    with smtplib.SMTP_SSL(HOST, ssl_port, context=client_context) as smtp:
        assert transaction(smtp) == {}
    with smtplib.SMTP(HOST, port) as smtp:
        smtp.starttls(context=client_context)
        assert transaction(smtp) == {}


def test_run_without_a_certificate_makes_a_self_signed_one(daemon, tmp_path):
    ssl_port = free_port()
    process, _ = daemon(f"--ssl_port={ssl_port}")
    insecure = insecure_context()
    with smtplib.SMTP_SSL(HOST, ssl_port, context=insecure) as smtp:
        assert transaction(smtp) == {}
        peer = x509.load_der_x509_certificate(smtp.sock.getpeercert(binary_form=True))
    assert peer.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == (
        expected_mailname())
    assert peer.issuer == peer.subject
    log = (tmp_path / "blackhole.log").read_text()
    assert "No certificate configured: using a self-signed one for " in log


def test_ssl_false_opens_no_smtps_port(daemon):
    ssl_port = free_port()
    _, port = daemon("--ssl=False", f"--ssl_port={ssl_port}")
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((HOST, ssl_port), timeout=5)
    with smtplib.SMTP(HOST, port) as smtp:
        smtp.ehlo()
        assert not smtp.has_extn("starttls")


@pytest.mark.gen_test
async def test_a_client_reset_before_the_handshake_is_one_counted_failure(
        serve, context, client_context, caplog):
    caplog.set_level(logging.DEBUG)
    smtps = serve(tls=context, implicit=True, debug=True)
    failed = metrics.counts[metrics.TLS_FAILED]
    # Connected, a first octet sent, then reset, all before the server's loop
    # runs again: the socket is wrapped after the client has gone.
    with socket.create_connection((HOST, smtps), timeout=10) as sock:
        sock.sendall(b"\x16")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    await asyncio.sleep(0.2)
    assert metrics.counts[metrics.TLS_FAILED] == failed + 1
    assert not [record for record in caplog.records if record.exc_info]
    assert [record.getMessage() for record in caplog.records
            if "TLS handshake failed" in record.getMessage()]

    def session():
        with smtplib.SMTP_SSL(HOST, smtps, context=client_context) as smtp:
            return smtp.noop()[0]

    assert await in_thread(session) == 250


@pytest.mark.gen_test
async def test_a_session_closed_as_its_handshake_completes_stays_closed(
        smtp_server, context, client_context, monkeypatch):
    """The idle sweep or make_room may close a session between the handshake's
    end and the moment its task resumes: it must not come back to life."""
    server, smtps = smtp_server(tls=context, implicit=True)
    start_tls = IOStream.start_tls

    def closed_on_completion(stream, *args, **kwargs):
        handshake = start_tls(stream, *args, **kwargs)
        handshake.add_done_callback(
            lambda _: [state.expire(replies.TIMEOUT) for state in list(server.sessions)])
        return handshake

    monkeypatch.setattr(IOStream, "start_tls", closed_on_completion)

    def session():
        with socket.create_connection((HOST, smtps), timeout=10) as raw:
            with client_context.wrap_socket(raw, server_hostname=HOST) as sock:
                return sock.recv(100)

    assert await in_thread(session) == b""
    assert not server.sessions
