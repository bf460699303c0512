"""--listen and --ssl_listen through the real command: own modes and delays, IPv6, errors."""

import smtplib
import socket
import time

import pytest

from tests.conftest import HOST, blackhole, free_port, insecure_context


def end_of_data(smtp):
    smtp.ehlo()
    smtp.mail("a@example.com")
    smtp.rcpt("b@example.com")
    return smtp.data(b"Subject: listener\r\n\r\nhi")[0]


def test_two_listeners_answer_with_their_own_modes(daemon):
    accept, offline = free_port(), free_port()
    daemon(f"--listen={HOST}:{accept}, {HOST}:{offline} mode=offline", "--mode=accept",
           port=accept)
    with smtplib.SMTP(HOST, accept) as smtp:
        assert end_of_data(smtp) == 250
    with smtplib.SMTP(HOST, offline) as smtp:
        assert end_of_data(smtp) == 521


def test_a_listener_delay_applies_to_that_listener_only(daemon):
    quick, slow = free_port(), free_port()
    daemon(f"--listen={HOST}:{quick}, {HOST}:{slow} delay=1-1.5", port=quick)
    for port, low, high in ((quick, 0, 0.5), (slow, 1, 2.5)):
        with smtplib.SMTP(HOST, port) as smtp:
            started = time.monotonic()
            assert smtp.noop()[0] == 250
            assert low <= time.monotonic() - started < high


def test_listen_replaces_host_and_port(daemon):
    legacy, listen = free_port(), free_port()
    daemon(f"--port={legacy}", f"--listen={HOST}:{listen}", port=listen)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((HOST, legacy), timeout=5)


def test_an_ipv6_listener(daemon):
    port = free_port()
    process, _ = daemon(f"--listen=[::1]:{port} mode=offline, {HOST}:{port}", port=port)
    with socket.create_connection(("::1", port), timeout=5) as sock:
        assert sock.family == socket.AF_INET6
        assert sock.makefile("rb").readline().startswith(b"220 ")
    with smtplib.SMTP("::1", port) as smtp:
        assert end_of_data(smtp) == 521


def test_ssl_listeners_have_modes_too(daemon):
    port, smtps = free_port(), free_port()
    daemon(f"--ssl_listen={HOST}:{smtps} mode=offline", port=port)
    insecure = insecure_context()
    with smtplib.SMTP_SSL(HOST, smtps, context=insecure) as smtp:
        assert end_of_data(smtp) == 521


@pytest.mark.parametrize("option, message", [
    ("--listen={h}:{p}, {h}:{p}", "Duplicate listener {h}:{p}"),
    ("--listen={h}:{p} mode=weird", "Invalid listener '{h}:{p} mode=weird': unknown mode"),
    ("--listen={h}:{p} delay=2-1", "Invalid listener '{h}:{p} delay=2-1': bad delay"),
    ("--listen={h}:{p} colour=red", "Invalid listener '{h}:{p} colour=red': unknown setting "
                                    "'colour=red'"),
    ("--listen={h}", "Invalid listener '{h}': expected [host]:port or unix:/path"),
    ("--listen=192.0.2.1:{p}", "Address not available, could not bind to 192.0.2.1:{p}"),
    ("--ssl=False --ssl_listen={h}:{p}", "--ssl_listen needs --ssl=True"),
    ("--listen={h}:{p} proxy=maybe", "Invalid listener '{h}:{p} proxy=maybe': proxy is on or "
                                     "off"),
    ("--listen={h}:{p} lmtp lmtp", "Invalid listener '{h}:{p} lmtp lmtp': unknown setting "
                                   "'lmtp'"),
    ("--listen=unix:", "Invalid listener 'unix:': expected [host]:port or unix:/path"),
    ("--listen={h}:{p} proxy=on --proxy_from=10.0.0.0/33",
     "Invalid value for proxy_from: '10.0.0.0/33' does not appear to be an IPv4 or IPv6 network"),
])
def test_bad_listeners_get_one_line(tmp_path, option, message):
    port = free_port()
    args = option.format(h=HOST, p=port).split(" --")
    args = [args[0]] + ["--" + arg for arg in args[1:]]
    result = blackhole(*args, f"--log={tmp_path}/log", f"--ssl_port={free_port()}", "run")
    assert (result.returncode, result.stderr) == (
        1, f"blackhole: {message.format(h=HOST, p=port)}\n")
