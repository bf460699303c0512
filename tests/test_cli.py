"""The blackhole command as a real process: help, version, exit codes, bad input, run."""

import signal
import smtplib
import socket

import pytest

from blackhole import __version__, cli, daemon, options
from blackhole.errors import BlackholeError
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
    assert result.stdout.startswith("usage: blackhole [--option=value ...] (start|stop|status|restart|run|reload|stats|watch)")
    for group in ("Network:", "Mail:", "TLS:", "Process:", "Logging:"):
        assert f"\n{group}\n" in result.stdout
    for option in ("--port=N", "--ssl_port=N", "--mode=TEXT", "--delay=N", "--conf=TEXT",
                   "--timeout=N", "--debug=BOOL"):
        assert option in result.stdout


def test_help_says_what_each_action_does():
    lines = blackhole("--help").stdout.splitlines()
    listed = lines[lines.index("Actions:") + 1:lines.index("Actions:") + 1 + len(cli.ACTIONS)]
    assert [line.split()[0] for line in listed] == list(cli.ACTIONS)
    assert all(len(line.split()) > 3 for line in listed)  # a name and what it does
    assert "  stop     SIGTERM the daemon and wait until it and its workers are gone " \
           f"(SIGKILL after {daemon.STOP_TIMEOUT} s)" in lines


@pytest.mark.parametrize("args, message", [
    ([], "blackhole: missing action"),
    (["bogus"], "blackhole: unknown action 'bogus'"),
    (["run", "run"], "blackhole: one action expected, got: run run"),
    (["--debug", "run", "extra"], "blackhole: one action expected, got: run extra"),
])
def test_missing_or_unknown_action_prints_usage_and_exits_2(args, message):
    result = blackhole(*args)
    assert result.returncode == 2
    assert result.stderr.splitlines() == ["usage: blackhole [--option=value ...] (start|stop|status|restart|run|reload|stats|watch)", message]


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


@pytest.mark.parametrize("spellings, value", [
    (["true", "TRUE", "True", "t", "T", "1", "yes", "YES", "on", "On"], True),
    (["false", "FALSE", "False", "f", "F", "0", "no", "No", "off", "OFF"], False),
])
def test_booleans_take_the_usual_spellings(spellings, value):
    for text in spellings:
        _, values, _ = options.parse([f"--debug={text}", f"--ssl={text}"])
        assert (values.debug, values.ssl) == (value, value), text
    _, values, _ = options.parse(["--debug"])  # bare: true
    assert values.debug is True


@pytest.mark.parametrize("text", ["maybe", "2", "tru", "", "yess", "none", "-1"])
def test_booleans_refuse_anything_else(text):
    with pytest.raises(BlackholeError) as error:
        options.parse([f"--debug={text}"])
    assert str(error.value) == (f"Invalid value for debug: '{text}' is not a boolean: "
                                "true/false, t/f, 1/0, yes/no or on/off")


def test_a_loose_boolean_is_one_line_and_exit_1():
    result = blackhole("--debug=maybe", "run")
    assert result.returncode == 1
    assert one_clear_line(result) == ("blackhole: Invalid value for debug: 'maybe' is not a "
                                      "boolean: true/false, t/f, 1/0, yes/no or on/off")


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


def test_config_file_overrides_the_command_line_and_says_so(daemon, tmp_path):
    """The 1.x contract: the file's values win; each one that overrides is announced."""
    port = free_port()
    conf = tmp_path / "blackhole.conf"
    conf.write_text(f'# legacy style\nport={port}\nmode="offline"\nssl=False\n')
    conf.chmod(0o644)
    process, _ = daemon(f"--conf={conf}", "--mode=accept", port=port)
    with smtplib.SMTP(HOST, port) as smtp:
        smtp.ehlo()
        smtp.mail("a@example.com")
        smtp.rcpt("b@example.com")
        assert smtp.data(b"Subject: x\r\n\r\nhi")[0] == 521
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=20)
    warnings = [line for line in stderr.splitlines() if line.startswith("blackhole: warning:")]
    # --port had the file's value already: nothing to say about it.
    assert warnings == [
        f'blackhole: warning: --mode=accept is overridden by mode="offline" in {conf}']
