"""The blackhole command as a real process: help, version, exit codes, bad input, run."""

import signal
import smtplib
import socket

import pytest

from blackhole import __version__, cli
from tests.conftest import HOST, blackhole, free_port


def one_clear_line(result):
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    return result.stderr.strip()


@pytest.mark.parametrize("flag", ["-v", "--version"])
def test_version(flag):
    result = blackhole(flag)
    assert (result.returncode, result.stdout) == (0, f"blackhole {__version__}\n")


@pytest.mark.parametrize("flag", ["-h", "--help"])
def test_help_is_grouped(flag):
    result = blackhole(flag)
    assert result.returncode == 0
    assert result.stdout.startswith("usage: blackhole [--option=value ...] (start|stop|status|restart|run)")
    for group in ("Network:", "Mail:", "TLS:", "Process:", "Logging:"):
        assert f"\n{group}\n" in result.stdout
    for option in ("--port=N", "--ssl_port=N", "--mode=TEXT", "--delay=N", "--conf=TEXT",
                   "--timeout=N", "--debug=BOOL"):
        assert option in result.stdout


@pytest.mark.parametrize("args, message", [
    ([], "blackhole: missing action"),
    (["bogus"], "blackhole: unknown action 'bogus'"),
    (["run", "run"], "blackhole: one action expected, got: run run"),
    (["--debug", "run", "extra"], "blackhole: one action expected, got: run extra"),
])
def test_missing_or_unknown_action_prints_usage_and_exits_2(args, message):
    result = blackhole(*args)
    assert result.returncode == 2
    assert result.stderr.splitlines() == ["usage: blackhole [--option=value ...] (start|stop|status|restart|run)", message]


@pytest.mark.parametrize("args, message", [
    (["--bogus=1"], "blackhole: Unknown option '--bogus' (see --help)"),
    (["--port=abc"], "blackhole: Invalid value for port: 'abc' is not an integer"),
    ([f"--host={'a' * 70}"], f"blackhole: Cannot resolve host '{'a' * 70}'"),
    (["--port"], "blackhole: Option --port needs a value: --port=..."),
    (["--port", "2525"], "blackhole: Option --port needs a value: --port=..."),
    (["--port=70000"], "blackhole: Option port must be between 1 and 65535, not 70000"),
    (["--delay=-1"], "blackhole: Option delay must be at least 0, not -1"),
    (["--mode=nonsense"],
     "blackhole: Unknown mode 'nonsense': choose one of accept, bounce, random, unavailable, offline"),
    (["--conf=/nonexistent/blackhole.conf"],
     "blackhole: Config file '/nonexistent/blackhole.conf' does not exist"),
    (["--log=/nonexistent/dir/blackhole.log"],
     "blackhole: Cannot open log file '/nonexistent/dir/blackhole.log': No such file or directory"),
])
def test_bad_options_get_one_line_and_exit_1(args, message):
    result = blackhole(f"--host={HOST}", f"--port={free_port()}", f"--ssl_port={free_port()}",
                       *args, "run")
    assert result.returncode == 1
    assert one_clear_line(result) == message


def test_port_in_use_is_one_line(tmp_path):
    with socket.socket() as taken:
        taken.bind((HOST, 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = blackhole(f"--host={HOST}", f"--port={port}", f"--log={tmp_path}/log", "run")
    assert result.returncode == 1
    assert one_clear_line(result) == (
        f"blackhole: Address already in use, could not bind to {HOST}:{port}")


# tornado's bind_sockets leaves the socket whose bind() failed to the garbage collector.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_permission_denied_on_bind_is_one_line(monkeypatch, capsys):
    """A failing bind() is the one thing mocked: as root the kernel never refuses."""

    def refuse(sock, address):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(socket.socket, "bind", refuse)
    assert cli.main([f"--host={HOST}", "--port=25", "run"]) == 1
    assert capsys.readouterr().err == (
        f"blackhole: Permission denied, could not bind to {HOST}:25\n")


@pytest.mark.parametrize("conf, message", [
    ("port=25\nbogus=1\n", "Unknown option 'bogus' in config file '{path}'"),
    ("port='abc'\n", "Invalid value for port in config file '{path}': 'abc' is not an integer"),
    ("port=25.5\n", "Option port in config file '{path}' must be an integer, not 25.5"),
    ("port=None\n", "Option port in config file '{path}' must be an integer, not None"),
    ("log=None\n", "Option log in config file '{path}' must be a string, not None"),
    ("ssl=1\n", "Option ssl in config file '{path}' must be True or False, not 1"),
    ("port = = 1\n", "Config file {path}, line 1: invalid syntax"),
])
def test_bad_config_files_get_one_line(tmp_path, conf, message):
    path = tmp_path / "blackhole.conf"
    path.write_text(conf)
    result = blackhole(f"--conf={path}", "run")
    assert result.returncode == 1
    assert one_clear_line(result) == "blackhole: " + message.format(path=path)


def test_deprecated_ssl_ca_certs_dir_is_announced(daemon):
    process, _ = daemon("--ssl_ca_certs_dir=/etc/ssl/certs")
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=10)
    assert stderr.splitlines()[0] == "Deprecated option: ssl_ca_certs_dir"


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT])
def test_run_serves_until_a_signal(daemon, stop, tmp_path):
    process, port = daemon()
    with smtplib.SMTP(HOST, port) as smtp:
        assert smtp.sendmail("a@example.com", ["b@example.com"], "Subject: x\r\n\r\nhi") == {}
    process.send_signal(stop)
    _, stderr = process.communicate(timeout=10)
    assert process.returncode == 0
    assert "Traceback" not in stderr
    assert f"Listening on {HOST}:{port}, mode accept" in stderr
    log = (tmp_path / "blackhole.log").read_text()
    assert "Listening on" in log and "Stopping" in log


def test_config_file_overrides_the_command_line(daemon, tmp_path):
    """The 1.x contract: the file is Python, and its values win."""
    port = free_port()
    conf = tmp_path / "blackhole.conf"
    conf.write_text(f'# legacy style\nport={port}\nmode="offline"\nssl=False\n')
    process, _ = daemon(f"--conf={conf}", "--mode=accept", port=port)
    with smtplib.SMTP(HOST, port) as smtp:
        smtp.ehlo()
        smtp.mail("a@example.com")
        smtp.rcpt("b@example.com")
        assert smtp.data(b"Subject: x\r\n\r\nhi")[0] == 521
