"""Options from the command line and the config file, with the 1.x names and types.

tornado.options parses every command-line value. The config file is read as
``name=value`` lines of Python literals and never run. Every failure becomes
one BlackholeError line; what is merely surprising becomes a warning.
"""

import ast
import io
import os
import random
import re
import stat
import tokenize
import weakref

from tornado.options import Error as TornadoOptionError
from tornado.options import OptionParser

from blackhole.config import Settings
from blackhole.errors import BlackholeError
from blackhole.policy import MODES, Policy, parse_rules

START_LOG = "/tmp/blackhole.log"  # start's log file, as in 1.x; run logs to stderr only

# group, name, type, default, help: the help output is printed from this table.
OPTIONS = (
    ("Network", "host", str, "0.0.0.0", "address to listen on"),
    ("Network", "port", int, 25, "plain SMTP port"),
    ("Network", "timeout", int, 60,
     "seconds a client may stay idle before 421 and close"),
    ("Network", "listen", str, None,
     "plain listeners instead of host:port: '[host]:port|unix:/path [lmtp] [proxy=on] "
     "[mode=M] [delay=N|MIN-MAX] [rule=R ...], ...'"),
    ("Network", "ssl_listen", str, None,
     "implicit-TLS listeners instead of host:ssl_port, in the same form"),
    ("Network", "proxy_from", str, "127.0.0.0/8,::1",
     "load balancers that may send a PROXY header to a proxy=on listener: CIDR, ..."),
    ("Network", "socket_mode", str, "0666",
     "permissions of a unix:/path listener's socket file, in octal"),
    ("Mail", "mode", str, "accept",
     "the end-of-data answer: " + ", ".join(MODES)),
    ("Mail", "delay", int, 0,
     "seconds to wait before every reply (other clients never wait)"),
    ("Mail", "message_size_limit", int, 512000,
     "largest message in octets, advertised in EHLO SIZE (0: no limit)"),
    ("Mail", "max_recipients", int, 1000,
     "recipients per message; more get 452"),
    ("Mail", "dynamic_switch", bool, True,
     "let X-Blackhole-* headers and address tags steer each message"),
    ("Mail", "rules", str, None,
     "failures to rehearse: 'STAGE:ACTION[:N%][:delay=N|MIN-MAX], ...'"),
    ("Mail", "seed", int, None,
     "seed every random draw (modes, odds, delay ranges) to repeat a run exactly"),
    ("Limits", "max_connections", int, 0,
     "connections open at once, over all workers; more get 421 (0: no limit)"),
    ("Limits", "max_rate", int, 0,
     "messages a second, over all workers; more MAILs get 450 (0: no limit)"),
    ("Limits", "greylist", int, 0,
     "seconds a new (client, sender, recipient) gets 451 at RCPT (0: off)"),
    ("TLS", "ssl", bool, True, "open the implicit-TLS port and offer STARTTLS"),
    ("TLS", "ssl_port", int, 465, "implicit-TLS (SMTPS) port"),
    ("TLS", "ssl_cert", str, None, "PEM certificate (chain)"),
    ("TLS", "ssl_key", str, None, "PEM private key"),
    ("TLS", "tls_min_version", str, "1.2",
     "oldest TLS version accepted: 1.0, 1.1, 1.2 or 1.3"),
    ("TLS", "ssl_ca_certs_dir", str, None, "deprecated since 1.6, ignored"),
    ("Process", "conf", str, None,
     "config file of name=value lines; its values override the command line"),
    ("Process", "pid", str, "/tmp/blackhole.pid", "pid file"),
    ("Process", "user", str, "blackhole", "user to run as after binding"),
    ("Process", "group", str, "blackhole", "group to run as after binding"),
    ("Process", "workers", int, max(1, (os.cpu_count() or 1) - 2),
     "worker processes"),
    ("Logging", "log", str, None,
     f"log file, appended to (start: {START_LOG}; run: only stderr unless given)"),
    ("Logging", "metrics_port", int, 0,
     "serve Prometheus /metrics and /healthz on this port (0: off)"),
    ("Logging", "metrics_host", str, "127.0.0.1", "address of the metrics port"),
    ("Logging", "admin_from", str, "127.0.0.0/8,::1",
     "clients allowed to change the rules on the metrics port: comma-separated CIDRs"),
    ("Logging", "admin_token", str, None,
     "or those sending 'Authorization: Bearer TOKEN' with this token"),
    ("Logging", "debug", bool, False, "log every line received and sent"),
)
_METAVARS = {str: "TEXT", int: "N", bool: "BOOL"}
_KINDS = {str: "a string", int: "an integer", bool: "True or False"}
TYPES = {name: kind for _, name, kind, _, _ in OPTIONS}
# Defaults that depend on the machine, as help and the man page show them.
SHOWN_DEFAULTS = {"workers": "cores - 2, at least 1"}
# Command-line booleans, in any case (1.x took anything but false, 0 and f as true).
BOOLEANS = {"true": True, "t": True, "1": True, "yes": True, "on": True,
            "false": False, "f": False, "0": False, "no": False, "off": False}
_PATHS = ("pid", "log", "ssl_cert", "ssl_key")
RELOADED = ("mode", "delay", "rules", "listen", "ssl_listen")  # what SIGHUP re-reads
_command_line = weakref.WeakKeyDictionary()  # parsed options -> RELOADED before --conf
_OPTIONAL = {name for _, name, _, default, _ in OPTIONS if default is None}
_RANGES = {
    "port": (1, 65535), "ssl_port": (1, 65535), "timeout": (1, None),
    "delay": (0, None), "message_size_limit": (0, None),
    "max_recipients": (1, None), "workers": (1, None), "metrics_port": (0, 65535),
    "max_connections": (0, None), "max_rate": (0, None), "greylist": (0, None),
}


def _parser():
    parser = OptionParser()
    for group, name, kind, default, text in OPTIONS:
        parser.define(name, default=default, type=kind, help=text, group=group)
    return parser


def _set(parser, name, text):
    """Set option ``name`` from its command-line text, as tornado.options parses it."""
    if TYPES[name] is bool:
        if text.lower() not in BOOLEANS:
            raise BlackholeError(f"Invalid value for {name}: '{text}' is not a boolean: "
                                 "true/false, t/f, 1/0, yes/no or on/off")
        text = "true" if BOOLEANS[text.lower()] else "false"
    try:
        parser.parse_command_line(["blackhole", f"--{name}={text}"], final=False)
    except (TornadoOptionError, ValueError):
        raise BlackholeError(
            f"Invalid value for {name}: '{text}' is not {_KINDS[TYPES[name]]}") from None


def _apply_flag(parser, flag):
    """Apply one ``--name=value`` and return the option's name."""
    name, equals, text = flag.lstrip("-").partition("=")
    name = name.replace("-", "_")
    if name not in TYPES:
        raise BlackholeError(f"Unknown option '{flag.partition('=')[0]}' (see --help)")
    if not equals:
        if TYPES[name] is not bool:
            raise BlackholeError(f"Option --{name} needs a value: --{name}=...")
        text = "true"
    _set(parser, name, text)
    return name


_ASSIGNMENT = re.compile(r"([A-Za-z_]\w*)(\s*)=(\s*)(.*)")
_PLAIN_STRING = re.compile(r'"[^"\\$`]*"|\'[^\'\\]*\'')  # read alike by Python and sh
_NOT_VALUE = (tokenize.COMMENT, tokenize.NEWLINE, tokenize.NL, tokenize.ENDMARKER)
_UNSET = object()


def read_config(path):
    """The settings of a 1.x config file: {name: (value, "name=value" as written)}.

    Each line is ``name=value`` with one Python literal, as both Python and
    the init script's shell read it; nothing in the file is ever run.
    """
    try:
        # O_NONBLOCK: a FIFO would block the open; it is refused below.
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        raise BlackholeError(f"Config file '{path}' does not exist") from None
    except OSError as error:
        raise BlackholeError(f"Cannot read config file '{path}': {error.strerror}") from None
    with open(fd, encoding="utf-8") as conf:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise BlackholeError(f"Config file '{path}' is not a file")
        _check_owner(path, os.fstat(fd))
        try:
            lines = conf.read().splitlines()
        except (OSError, UnicodeDecodeError) as error:
            raise BlackholeError(f"Cannot read config file '{path}': {error}") from None
    settings = {}
    for number, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        where = f"{path}, line {number}"
        match = _ASSIGNMENT.fullmatch(line)
        if not match:
            raise BlackholeError(f"{where}: expected name=value, not: {line}")
        name, before, after, text = match.groups()
        if before or after:
            raise BlackholeError(f"{where}: {name}: no spaces around '=' (the init script's "
                                 f"shell cannot read them): {name}={text.strip()}")
        if name == "conf":
            raise BlackholeError(f"{where}: conf: a config file cannot name another")
        if name not in TYPES:
            raise BlackholeError(f"{where}: unknown option '{name}'")
        value, written = _literal(where, name, text)
        settings[name] = (value, f"{name}={written}")
    return settings


def _literal(where, name, text):
    """The value of one literal (a comment may follow) and its text, checked against the option."""
    try:
        tokens = [token for token in tokenize.generate_tokens(io.StringIO(text).readline)
                  if token.type not in _NOT_VALUE]
    except (tokenize.TokenError, SyntaxError):  # a string left open
        tokens = []
    written = text[:tokens[-1].end[1]] if tokens else text.partition(" #")[0].strip()
    if text[len(written):len(written) + 1] == "#":  # the shell would read it as part of the value
        raise BlackholeError(f"{where}: {name}: put a space before the '#' of a comment")
    value = _UNSET
    if len(tokens) == 1 or (len(tokens) == 2 and tokens[0].string == "-"):
        try:
            value = ast.literal_eval(written)
        except (ValueError, SyntaxError):
            pass
    kind = TYPES[name]
    if value is None and name in _OPTIONAL:
        return value, written
    if isinstance(value, str) and not _PLAIN_STRING.fullmatch(written):
        raise BlackholeError(f"{where}: {name}: write a plain quoted string, which the init "
                             f"script's shell reads alike (no prefix, escape or $): {name}="
                             f"{written}")
    if isinstance(value, kind) and (kind is bool or not isinstance(value, bool)):
        return value, written
    quoted = any(token.type == tokenize.STRING for token in tokens)
    if kind is str and ((value is _UNSET and not quoted) or type(value) in (int, float)):
        bare = written.strip("\"'")
        raise BlackholeError(f'{where}: {name}: strings must be quoted: {name}="{bare}"')
    raise BlackholeError(f"{where}: {name}: must be {_KINDS[kind]}, not {written}")


def _check_owner(path, info):
    """As root, refuse a config file another account could have written, as sshd's
    StrictModes does: the file and every directory above it belong to root and
    only root may write to them (a sticky directory such as /tmp excepted)."""
    if os.geteuid() != 0:
        return
    places = {path: info}
    for start in (os.path.abspath(path), os.path.realpath(path)):
        directory = os.path.dirname(start)
        while directory not in places:
            places[directory] = os.stat(directory)
            directory = os.path.dirname(directory)
    for place, info in places.items():
        what = "it" if place == path else f"its directory {place}"
        if info.st_uid != 0:
            raise BlackholeError(
                f"Refusing config file '{path}' as root: {what} belongs to uid "
                f"{info.st_uid}, not root (chown root {place})")
        sticky = stat.S_ISDIR(info.st_mode) and info.st_mode & stat.S_ISVTX
        if info.st_mode & 0o022 and not sticky:
            raise BlackholeError(
                f"Refusing config file '{path}' as root: {what} is writable by group or "
                f"others (chmod go-w {place})")


def _ignored(values, given):
    """Options given but replaced by --listen or --ssl_listen, one line each."""
    takers = {"host": ["listen", "ssl_listen"] if values.ssl else ["listen"], "port": ["listen"]}
    if values.ssl:  # without it, --ssl_listen is an error of its own
        takers["ssl_port"] = ["ssl_listen"]
    lines = []
    for name, by in takers.items():
        if name in given and all(values[taker] for taker in by):
            lines.append(f"{given[name]} is ignored: {' and '.join(given[t] for t in by)} "
                         f"take{'s' if len(by) == 1 else ''} its place")
    return lines


def _validate(parser):
    for name, (low, high) in _RANGES.items():
        value = parser[name]
        if value < low or (high is not None and value > high):
            bounds = f"between {low} and {high}" if high else f"at least {low}"
            raise BlackholeError(f"Option {name} must be {bounds}, not {value}")


def parse(args):
    """Split ``args`` into actions and options; apply --conf; check the values.

    Returns (actions, values, warnings): a warning for each option given on
    the command line that the config file overrides (the 1.x contract), and
    for each that --listen or --ssl_listen replaces.
    """
    parser = _parser()
    actions = []
    given = {}  # option -> how it was given, for the warnings
    for arg in args:
        if arg.startswith("-"):
            given[_apply_flag(parser, arg)] = arg
        else:
            actions.append(arg)
    _command_line[parser] = {name: parser[name] for name in RELOADED}
    warnings = []
    if parser.conf:
        conf = parser.conf
        for name, (value, written) in read_config(conf).items():
            if name in given and parser[name] != value:
                warnings.append(f"{given[name]} is overridden by {written} in {conf}")
            setattr(parser, name, value)
            given[name] = f"{written} in {conf}"
    warnings += _ignored(parser, given)
    _validate(parser)
    for name in _PATHS:  # the daemon works from /, so relative paths would move
        if parser[name]:
            setattr(parser, name, os.path.abspath(parser[name]))
    return actions, parser, warnings


def reread(values):
    """RELOADED as the command line and ``--conf`` say now (SIGHUP): {name: value}.

    Raises BlackholeError, one line, if the file is wrong anywhere.
    """
    fresh = dict(_command_line[values])
    for name, (value, _) in read_config(values.conf).items():
        if name in fresh:
            fresh[name] = value
    if fresh["mode"] not in MODES:
        raise BlackholeError(f"Unknown mode '{fresh['mode']}': choose one of {', '.join(MODES)}")
    if fresh["delay"] < 0:
        raise BlackholeError(f"Option delay must be at least 0, not {fresh['delay']}")
    return fresh


def settings(values):
    """The Settings and Policy a server runs with, from parsed options."""
    try:
        policy = Policy(values.mode, values.delay, parse_rules(values.rules or ""),
                        random.Random(values.seed))
    except ValueError as error:
        raise BlackholeError(str(error)) from None
    return (
        Settings(
            message_size_limit=values.message_size_limit,
            max_recipients=values.max_recipients,
            timeout=values.timeout,
            debug=values.debug,
            dynamic_switch=values.dynamic_switch,
        ),
        policy,
    )


def shown_default(name, default):
    """The default as help and the man page show it, or None for none."""
    return SHOWN_DEFAULTS[name] if name in SHOWN_DEFAULTS else default


def help_text(usage, actions):
    """Grouped help, printed from OPTIONS and ``actions``: (name, what it does) pairs."""
    lines = [usage, "", "An SMTP sink: it answers every message and keeps none of them.",
             "", "Actions:"]
    lines += [f"  {name:<8} {text}" for name, text in actions]
    lines += ["", "  -h, --help       show this help and exit",
              "  -v, --version    show the version and exit"]
    for group in dict.fromkeys(group for group, *_ in OPTIONS):
        lines += ["", f"{group}:"]
        for option_group, name, kind, default, text in OPTIONS:
            if option_group == group:
                flag = f"--{name}={_METAVARS[kind]}"
                shown = shown_default(name, default)
                lines.append(f"  {flag:<28} {text}" + ("" if shown is None else f" [{shown}]"))
    return "\n".join(lines)
