"""Options from the command line and the config file, with the 1.x names and types.

Parsed by tornado.options; every failure becomes one BlackholeError line.
"""

import os
import random

from tornado.options import Error as TornadoOptionError
from tornado.options import OptionParser

from blackhole.config import Settings
from blackhole.errors import BlackholeError
from blackhole.policy import MODES, Policy, parse_rules

# group, name, type, default, help: the help output is printed from this table.
OPTIONS = (
    ("Network", "host", str, "0.0.0.0", "address to listen on"),
    ("Network", "port", int, 25, "plain SMTP port"),
    ("Network", "timeout", int, 60,
     "seconds a client may stay idle before 421 and close"),
    ("Network", "listen", str, None,
     "plain listeners instead of host:port: '[host]:port [mode=M] [delay=N|MIN-MAX], ...'"),
    ("Network", "ssl_listen", str, None,
     "implicit-TLS listeners instead of host:ssl_port, in the same form"),
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
     "worker processes (default: all cores but two, at least one)"),
    ("Logging", "log", str, "/tmp/blackhole.log", "log file, appended to"),
    ("Logging", "metrics_port", int, 0,
     "serve Prometheus /metrics and /healthz on this port (0: off)"),
    ("Logging", "metrics_host", str, "127.0.0.1", "address of the metrics port"),
    ("Logging", "debug", bool, False, "log every line received and sent"),
)
_METAVARS = {str: "TEXT", int: "N", bool: "BOOL"}
_KINDS = {str: "a string", int: "an integer", bool: "True or False"}
TYPES = {name: kind for _, name, kind, _, _ in OPTIONS}
_PATHS = ("pid", "log", "ssl_cert", "ssl_key")
_OPTIONAL = {name for _, name, _, default, _ in OPTIONS if default is None}
_RANGES = {
    "port": (1, 65535), "ssl_port": (1, 65535), "timeout": (1, None),
    "delay": (0, None), "message_size_limit": (0, None),
    "max_recipients": (1, None), "workers": (1, None), "metrics_port": (0, 65535),
}


def _parser():
    parser = OptionParser()
    for group, name, kind, default, text in OPTIONS:
        parser.define(name, default=default, type=kind, help=text, group=group)
    return parser


def _set(parser, name, text, source):
    """Set option ``name`` from its text form, as tornado.options parses it."""
    try:
        parser.parse_command_line(["blackhole", f"--{name}={text}"], final=False)
    except (TornadoOptionError, ValueError):
        raise BlackholeError(
            f"Invalid value for {name}{source}: '{text}' is not {_KINDS[TYPES[name]]}"
        ) from None


def _apply_flag(parser, flag):
    name, equals, text = flag.lstrip("-").partition("=")
    name = name.replace("-", "_")
    if name not in TYPES:
        raise BlackholeError(f"Unknown option '{flag.partition('=')[0]}' (see --help)")
    if not equals:
        if TYPES[name] is not bool:
            raise BlackholeError(f"Option --{name} needs a value: --{name}=...")
        text = "true"
    _set(parser, name, text, "")


def apply_config(parser, path):
    """Run the legacy Python/shell config file; its names override the command line."""
    if not os.path.isfile(path):
        raise BlackholeError(f"Config file '{path}' does not exist")
    namespace = {"__file__": path}
    try:
        with open(path, encoding="utf-8") as conf:
            exec(compile(conf.read(), path, "exec"), namespace)  # noqa: S102 - 1.x contract
    except OSError as error:
        raise BlackholeError(f"Cannot read config file '{path}': {error.strerror}") from None
    except SyntaxError as error:
        raise BlackholeError(f"Config file {path}, line {error.lineno}: {error.msg}") from None
    except Exception as error:
        raise BlackholeError(f"Config file '{path}' failed: {error}") from None
    source = f" in config file '{path}'"
    for name, value in namespace.items():
        if name.startswith("__"):
            continue
        if name not in TYPES:
            raise BlackholeError(f"Unknown option '{name}'{source}")
        kind = TYPES[name]
        if isinstance(value, str) and kind is not str:
            _set(parser, name, value, source)
        elif (value is None and name in _OPTIONAL) or (
            isinstance(value, kind) and (kind is bool or not isinstance(value, bool))
        ):
            setattr(parser, name, value)
        else:
            raise BlackholeError(f"Option {name}{source} must be {_KINDS[kind]}, not {value!r}")


def _validate(parser):
    for name, (low, high) in _RANGES.items():
        value = parser[name]
        if value < low or (high is not None and value > high):
            bounds = f"between {low} and {high}" if high else f"at least {low}"
            raise BlackholeError(f"Option {name} must be {bounds}, not {value}")


def parse(args):
    """Split ``args`` into actions and options; apply --conf; check the values."""
    parser = _parser()
    actions = []
    for arg in args:
        if arg.startswith("-"):
            _apply_flag(parser, arg)
        else:
            actions.append(arg)
    if parser.conf:
        apply_config(parser, parser.conf)
    _validate(parser)
    for name in _PATHS:  # the daemon works from /, so relative paths would move
        if parser[name]:
            setattr(parser, name, os.path.abspath(parser[name]))
    return actions, parser


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


def help_text(usage):
    """Grouped help, printed from OPTIONS."""
    lines = [usage, "", "An SMTP sink: it answers every message and keeps none of them.",
             "", "  -h, --help       show this help and exit",
             "  -v, --version    show the version and exit"]
    for group in dict.fromkeys(group for group, *_ in OPTIONS):
        lines += ["", f"{group}:"]
        for option_group, name, kind, default, text in OPTIONS:
            if option_group == group:
                flag = f"--{name}={_METAVARS[kind]}"
                lines.append(f"  {flag:<28} {text}"
                             + ("" if default is None else f" [{default}]"))
    return "\n".join(lines)
