"""Unix-domain listeners through the real command: the socket file's life and rights."""

import os
import signal
import smtplib
import socket
import stat
import tempfile

import pytest

from tests.conftest import HOST, blackhole, free_port
from tests.test_fleet import logged

NOBODY, NOGROUP = 65534, 65534


def greeting(path):
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(10)
        sock.connect(str(path))
        return sock.makefile("rb").readline()


def test_created_with_its_mode_served_with_several_workers_and_removed_on_stop(daemon, tmp_path):
    port, path, private = free_port(), tmp_path / "smtp.sock", tmp_path / "private.sock"
    # The socket file is bound first: the fixture waits for the TCP port only.
    process, _ = daemon(f"--listen=unix:{path}, {HOST}:{port}", "--workers=2", port=port)
    assert stat.S_ISSOCK(path.stat().st_mode) and stat.S_IMODE(path.stat().st_mode) == 0o666
    for _ in range(10):
        assert greeting(path).startswith(b"220 ")
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=20)
    assert f"Listening on unix:{path}, mode accept" in stderr
    assert not path.exists()
    daemon(f"--listen=unix:{private}, {HOST}:{port}", "--socket_mode=0600", port=port)
    assert stat.S_IMODE(private.stat().st_mode) == 0o600


def test_a_stale_socket_file_is_replaced_and_a_live_one_left_alone(daemon, tmp_path):
    path = tmp_path / "smtp.sock"
    with socket.socket(socket.AF_UNIX) as left_behind:  # bound, never removed: stale
        left_behind.bind(str(path))
    port = free_port()
    daemon(f"--listen=unix:{path}, {HOST}:{port}", port=port)
    assert greeting(path).startswith(b"220 ")
    second = blackhole(f"--listen=unix:{path}", "--ssl=False", "run")  # no port to race for
    assert (second.returncode, second.stderr) == (
        1, f"blackhole: Address already in use, could not bind to unix:{path}\n")
    assert greeting(path).startswith(b"220 ")  # still the first one's


@pytest.mark.parametrize("where, message", [
    ("{tmp}/missing/smtp.sock", "No such file or directory, could not bind to unix:{where}"),
    ("{tmp}/file", "A file that is not a socket is in the way, could not bind to unix:{where}"),
    ("{tmp}/" + "x" * 120, "AF_UNIX path too long, could not bind to unix:{where}"),
])
def test_a_path_that_cannot_be_bound_is_one_line(tmp_path, where, message):
    (tmp_path / "file").write_text("mine\n")
    where = where.format(tmp=tmp_path)
    # The listener bound before the failing one leaves no socket file behind.
    result = blackhole(f"--listen=unix:{tmp_path}/first.sock, unix:{where}", "--ssl=False",
                       "run")
    assert (result.returncode, result.stderr) == (1, f"blackhole: {message.format(where=where)}\n")
    assert sorted(os.listdir(tmp_path)) == ["file"]
    assert (tmp_path / "file").read_text() == "mine\n"


@pytest.mark.parametrize("option, message", [
    ("--socket_mode=0999", "Invalid value for socket_mode: '0999' is not an octal mode such "
                           "as 0666"),
    ("--socket_mode=1777", "Invalid value for socket_mode: '1777' is not an octal mode such "
                           "as 0666"),
])
def test_a_bad_socket_mode_is_one_line(tmp_path, option, message):
    result = blackhole(f"--listen=unix:{tmp_path}/smtp.sock", "--ssl=False", option, "run")
    assert (result.returncode, result.stderr) == (1, f"blackhole: {message}\n")


def test_owned_by_and_usable_by_the_workers_account(daemon):
    """The master binds as root (as CI and the developers run); the file belongs
    to the account the workers switch to, and a client of another account may
    use it (mode 0666)."""
    with tempfile.TemporaryDirectory() as directory:
        os.chmod(directory, 0o755)  # pytest's tmp_path is root's alone
        path, port = os.path.join(directory, "lmtp.sock"), free_port()
        daemon(f"--listen=unix:{path} lmtp, {HOST}:{port}", "--user=nobody",
               "--group=nogroup", port=port)
        info = os.stat(path)
        assert (info.st_uid, info.st_gid) == (NOBODY, NOGROUP)
        # A forked client: this Python's files may be out of nobody's reach.
        reader, writer = os.pipe()
        child = os.fork()
        if child == 0:
            code = 1
            try:
                os.setgid(NOGROUP)
                os.setuid(NOBODY)
                with smtplib.LMTP(path, timeout=10) as lmtp:
                    refused = lmtp.sendmail("a@example.com", ["b@example.com"], "Subject: x\n\nx")
                os.write(writer, f"{os.getuid()} {refused}".encode())
                code = 0
            finally:
                os._exit(code)
        os.close(writer)
        with os.fdopen(reader) as said:
            answer = said.read()
        assert os.waitpid(child, 0)[1] == 0
        assert answer == f"{NOBODY} {{}}"


def test_a_proxy_header_over_a_unix_socket(daemon, tmp_path):
    """A balancer on the same machine may deliver through the socket file:
    whoever may open it may send the header, whatever --proxy_from says."""
    port, path, log = free_port(), tmp_path / "smtp.sock", tmp_path / "debug.log"
    daemon(f"--listen=unix:{path} proxy=on, {HOST}:{port}", "--proxy_from=192.0.2.0/24",
           "--debug", f"--log={log}", port=port)
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(10)
        sock.connect(str(path))
        sock.sendall(b"PROXY TCP6 2001:db8::5 2001:db8::1 4444 25\r\nQUIT\r\n")
        lines = sock.makefile("rb")
        assert lines.readline().startswith(b"220 ")
        assert lines.readline().startswith(b"221 ")
    assert logged(log, "2001:db8::5"), log.read_text()
