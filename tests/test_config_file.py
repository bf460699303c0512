"""The config file: 1.x name=value lines, read and never run; refused as root when another
account could write it; a warning for each command-line option it overrides."""

import os
import pwd
import shutil
from pathlib import Path

import pytest

from blackhole import options
from blackhole.errors import BlackholeError
from tests.conftest import blackhole

TOP = Path(__file__).resolve().parent.parent
ROOT = os.geteuid() == 0


def write_conf(directory, text, mode=0o644):
    """A config file as an administrator leaves it: only its owner may write to it."""
    path = directory / "blackhole.conf"
    path.write_text(text)
    path.chmod(mode)
    return path


def status(conf, *more):
    """``status`` reads the config file like any action, and needs no port or certificate."""
    return blackhole(f"--conf={conf}", f"--pid={conf.parent / 'blackhole.pid'}", *more, "status")


def one_line(result):
    assert "Traceback" not in result.stderr
    assert result.returncode == 1 and len(result.stderr.splitlines()) == 1, result
    return result.stderr.rstrip("\n")


@pytest.mark.parametrize("line", [
    '__import__("pathlib").Path("{marker}").touch()',
    'port=__import__("pathlib").Path("{marker}").touch() or 25',
    'mode=open("{marker}", "w").name',
    'import os; os.system("touch {marker}")',
])
def test_the_config_file_is_never_run(tmp_path, line):
    marker = tmp_path / "ran"
    conf = write_conf(tmp_path, "port=25\n" + line.format(marker=marker) + "\n")
    assert one_line(status(conf)).startswith(f"blackhole: {conf}, line 2: ")
    assert not marker.exists()


def test_1x_lines_are_read_as_python_literals(tmp_path):
    conf = write_conf(tmp_path, """\
# A 1.x file: comments, blank lines, quoted strings, integers, True/False.

host="127.0.0.1"          # a comment after a value
port=2525
mode='bounce'
ssl=False
debug=True
delay=0
pid="/var/run/a # b.pid"  # a '#' inside quotes is part of the string
  user="nobody"
ssl_cert=None
""")
    _, values, warnings = options.parse([f"--conf={conf}"])
    assert (values.host, values.port, values.mode, values.ssl, values.debug) == (
        "127.0.0.1", 2525, "bounce", False, True)
    assert (values.pid, values.user, values.ssl_cert, warnings) == (
        "/var/run/a # b.pid", "nobody", None, [])


def test_the_shipped_example_is_valid(tmp_path):
    shutil.copy(TOP / "blackhole.conf-dist", tmp_path / "blackhole.conf")
    conf = tmp_path / "blackhole.conf"
    conf.chmod(0o644)
    _, values, _ = options.parse([f"--conf={conf}"])
    assert (values.port, values.ssl, values.pid) == (25, False, "/var/run/blackhole.pid")
    # Its commented certificate lines are valid once uncommented (1.x's were not quoted).
    text = conf.read_text().replace("#ssl_cert=", "ssl_cert=").replace("#ssl_key=", "ssl_key=")
    conf.write_text(text)
    _, values, _ = options.parse([f"--conf={conf}"])
    assert values.ssl_cert == "/etc/ssl/blackhole/chain.pem"


@pytest.mark.parametrize("text, message", [
    ('host="127.0.0.1"\nport=25\nmode=bounce\n',
     'line 3: mode: strings must be quoted: mode="bounce"'),
    ("pid=/var/run/blackhole.pid\n",
     'line 1: pid: strings must be quoted: pid="/var/run/blackhole.pid"'),
    ("host=0.0.0.0  # all\n", 'line 1: host: strings must be quoted: host="0.0.0.0"'),
    ('mode="accept\n', 'line 1: mode: strings must be quoted: mode="accept"'),
    ("port=25\nbogus=1\n", "line 2: unknown option 'bogus'"),
    ('port="25"\n', 'line 1: port: must be an integer, not "25"'),
    ("port=25.5\n", "line 1: port: must be an integer, not 25.5"),
    ("port=None\n", "line 1: port: must be an integer, not None"),
    ("port=True\n", "line 1: port: must be an integer, not True"),
    ("mode=None\n", "line 1: mode: must be a string, not None"),
    ("ssl=1\n", "line 1: ssl: must be True or False, not 1"),
    ("ssl=true\n", "line 1: ssl: must be True or False, not true"),
    ('ssl="False"\n', 'line 1: ssl: must be True or False, not "False"'),
    ("port = 25\n", "line 1: port: no spaces around '=' (the init script's shell cannot "
                    "read them): port=25"),
    ("port= 25\n", "line 1: port: no spaces around '=' (the init script's shell cannot "
                   "read them): port=25"),
    ("port=25#plain\n", "line 1: port: put a space before the '#' of a comment"),
    ('mode="a" "b"\n', 'line 1: mode: must be a string, not "a" "b"'),
    ('conf="/etc/other.conf"\n', "line 1: conf: a config file cannot name another"),
    ("if True: port=25\n", "line 1: expected name=value, not: if True: port=25"),
    # Python and the init script's shell must read a string alike.
    ('pid=r"/x"\n', "line 1: pid: write a plain quoted string, which the init script's "
                    'shell reads alike (no prefix, escape or $): pid=r"/x"'),
    ('pid="/run/\\t.pid"\n', "line 1: pid: write a plain quoted string, which the init "
                            "script's shell reads alike (no prefix, escape or $): "
                            'pid="/run/\\t.pid"'),
    ('pid="$HOME/b.pid"\n', "line 1: pid: write a plain quoted string, which the init "
                           "script's shell reads alike (no prefix, escape or $): "
                           'pid="$HOME/b.pid"'),
    ('pid="""/x"""\n', "line 1: pid: write a plain quoted string, which the init script's "
                      'shell reads alike (no prefix, escape or $): pid="""/x"""'),
])
def test_a_bad_line_is_one_line_in_the_files_terms(tmp_path, text, message):
    conf = write_conf(tmp_path, text)
    assert one_line(status(conf)) == f"blackhole: {conf}, {message}"


def test_a_fifo_is_refused_without_waiting_for_a_writer(tmp_path):
    os.mkfifo(tmp_path / "fifo.conf")
    assert one_line(status(tmp_path / "fifo.conf")) == (
        f"blackhole: Config file '{tmp_path / 'fifo.conf'}' is not a file")


def test_a_missing_config_file_is_an_error(tmp_path):
    assert one_line(status(tmp_path / "none.conf")) == (
        f"blackhole: Config file '{tmp_path / 'none.conf'}' does not exist")


def refused(conf):
    """As root: refused with one line. Anyone else may read what they can write."""
    result = status(conf)
    if not ROOT:
        assert (result.returncode, result.stderr) == (3, "")
        return None
    return one_line(result)


def test_root_refuses_a_config_file_others_can_write(tmp_path):
    conf = write_conf(tmp_path, "port=25\n", mode=0o666)
    assert refused(conf) in (None, (
        f"blackhole: Refusing config file '{conf}' as root: it is writable by group or "
        f"others (chmod go-w {conf})"))
    conf.chmod(0o664)
    message = refused(conf)
    assert message is None or "it is writable by group or others" in message
    conf.chmod(0o644)
    assert status(conf).returncode == 3  # not running: read and accepted


def test_root_refuses_a_config_file_in_a_directory_others_can_write(tmp_path):
    loose = tmp_path / "loose"
    loose.mkdir()
    conf = write_conf(loose, "port=25\n")
    loose.chmod(0o777)
    assert refused(conf) in (None, (
        f"blackhole: Refusing config file '{conf}' as root: its directory {loose} is "
        f"writable by group or others (chmod go-w {loose})"))
    link = write_conf(tmp_path, "")  # a link from a safe place to the loose one
    link.unlink()
    link.symlink_to(conf)
    message = refused(link)
    assert message is None or f"its directory {loose} is writable" in message
    loose.chmod(0o1777)  # sticky, as /tmp: others cannot replace root's file
    assert status(conf).returncode == 3


def test_root_refuses_a_config_file_another_account_owns(tmp_path):
    conf = write_conf(tmp_path, "port=25\n")
    if ROOT:
        nobody = pwd.getpwnam("nobody").pw_uid
        os.chown(conf, nobody, -1)
        assert refused(conf) == (
            f"blackhole: Refusing config file '{conf}' as root: it belongs to uid {nobody}, "
            f"not root (chown root {conf})")
    else:
        assert refused(conf) is None


def test_each_command_line_option_the_file_overrides_gets_a_warning(tmp_path):
    conf = write_conf(tmp_path, 'port=2525\nmode="bounce"\nssl=False\ndebug=False\n')
    result = status(conf, "--port=2600", "--mode=bounce", "--ssl=no", "--debug")
    assert (result.returncode, result.stdout) == (3, "not running\n")
    assert result.stderr.splitlines() == [  # --mode and --ssl said what the file says
        f"blackhole: warning: --port=2600 is overridden by port=2525 in {conf}",
        f"blackhole: warning: --debug is overridden by debug=False in {conf}",
    ]


@pytest.mark.parametrize("args, conf, warnings", [
    (["--listen=:2525", "--port=2600", "--ssl=False", "--host=10.0.0.1"], "", [
        "--host=10.0.0.1 is ignored: --listen=:2525 takes its place",
        "--port=2600 is ignored: --listen=:2525 takes its place"]),
    (["--listen=:2525", "--port=2600", "--host=10.0.0.1"], "", [  # host: still SMTPS's
        "--port=2600 is ignored: --listen=:2525 takes its place"]),
    (["--listen=:2525", "--ssl_listen=:4650", "--host=10.0.0.1", "--ssl_port=4651"], "", [
        "--host=10.0.0.1 is ignored: --listen=:2525 and --ssl_listen=:4650 take its place",
        "--ssl_port=4651 is ignored: --ssl_listen=:4650 takes its place"]),
    (["--listen=:2525"], "port=25\n", ["port=25 in {conf} is ignored: --listen=:2525 takes "
                                       "its place"]),
    (["--port=2600"], 'listen=":2525"\n', ['--port=2600 is ignored: listen=":2525" in {conf} '
                                           "takes its place"]),
    (["--listen=:2525", "--ssl=False"], "", []),
])
def test_listen_replacing_host_and_port_gets_a_warning(tmp_path, args, conf, warnings):
    path = write_conf(tmp_path, conf)
    _, _, said = options.parse([f"--conf={path}", *args])
    assert said == [warning.format(conf=path) for warning in warnings]


def test_warnings_are_one_line_each_on_stderr(tmp_path):
    conf = write_conf(tmp_path, "")
    result = status(conf, "--listen=:2525", "--port=2600")
    assert (result.returncode, result.stdout, result.stderr) == (
        3, "not running\n",
        "blackhole: warning: --port=2600 is ignored: --listen=:2525 takes its place\n")


def test_an_unreadable_config_file_is_one_line(tmp_path):
    conf = write_conf(tmp_path, "port=25\n")
    conf.write_bytes(b"mode=\"\xff\"\n")
    with pytest.raises(BlackholeError) as error:
        options.read_config(str(conf))
    assert str(error.value).startswith(f"Cannot read config file '{conf}': ")
