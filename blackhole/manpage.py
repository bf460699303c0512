"""blackhole.1, the manual page, made from the tables that --help prints so the two never drift.

Regenerate with ``python -m blackhole.manpage > blackhole.1``; a test checks the committed file.
"""

from blackhole import __version__, cli, daemon, options, process

PROSE = {
    "DESCRIPTION": """\
blackhole speaks SMTP to any sender, answers every message the way it is
told to (accept, bounce, be unavailable, be slow) and throws the message
away as it arrives, without touching the disk. It is a rebirth of
blackhole 1.x, with the same command line, option names and config file.""",
    "CONFIG FILE": """\
--conf names a file of name=value lines, as in 1.x: each value is one Python
literal (a quoted string, an integer, True or False, None where an option has
no default), with no spaces around =, and # starts a comment after a space.
blackhole reads the lines and never runs them. Its values override the
command line, with a warning line for each option they override. As root,
blackhole refuses a config file that another account owns or may write, or
that lies in such a directory (a sticky one such as /tmp excepted).""",
    "SIGNALS": f"""\
SIGTERM or SIGINT to the master stops accepting, gives sessions in flight
up to {process.GRACE} seconds, ends every worker, removes the pid file
and exits 0; stop sends SIGTERM and SIGKILL after {daemon.STOP_TIMEOUT}
seconds. SIGHUP reopens the log file, for logrotate, and re-reads mode,
delay, rules and the listeners' own settings from --conf (reload sends it);
a config with an error keeps the running values and logs one line.""",
    "CONTROL": """With --metrics_port, GET /rules shows the running mode, delay and rules as
JSON; PUT /rules changes any of them in every worker, for open connections
too, and DELETE /rules restores those blackhole started with. Writes come
from --admin_from, or with Authorization: Bearer and --admin_token. GET
/stats shows the counters summed over every worker, as stats and watch do.""",
    "EXIT STATUS": """\
0 on success, stop included when nothing runs; 1 on a bad option, value or
config file, a TLS, bind or account error, or start while running; 2 on a
missing or unknown action. status exits 0 when running, 3 when not, and 1
when it removed a stale pid file.""",
}
FILES = (
    ("/etc/blackhole.conf", "the config file of the init script and the systemd unit"),
    (options.START_LOG, "start's log file (--log)"),
    (dict((name, default) for _, name, _, default, _ in options.OPTIONS)["pid"],
     "the daemon's pid file (--pid)"),
    ("/etc/mailname", "the name to greet with; else the host's FQDN"),
)


def _text(text):
    """Plain text as roff: backslashes and hyphens escaped, no line read as a request."""
    lines = text.replace("\\", "\\e").replace("-", "\\-").splitlines()
    return "\n".join("\\&" + line if line.startswith((".", "'")) else line for line in lines)


def _item(term, text):
    return f".TP\n{term}\n{_text(text)}"


def render():
    """The whole page, in man(7) macros."""
    kinds = {str: "TEXT", int: "N", bool: "BOOL"}
    out = [f'.TH BLACKHOLE 1 "" "blackhole {__version__}" "User Commands"',
           ".SH NAME", "blackhole \\- an SMTP sink: it answers every message and keeps none",
           ".SH SYNOPSIS",
           ".B blackhole", "[\\fB\\-\\-\\fIoption\\fB=\\fIvalue\\fR ...]",
           f"\\fB{'|'.join(cli.ACTIONS)}\\fR",
           ".br", ".B blackhole \\-\\-help", ".br", ".B blackhole \\-\\-version",
           ".SH DESCRIPTION", _text(PROSE["DESCRIPTION"]),
           ".SH ACTIONS"]
    out += [_item(f".B {name}", text) for name, (_, text) in cli.ACTIONS.items()]
    out += [".SH OPTIONS", _text(
        "Options are --name=value. A boolean takes true/false, t/f, 1/0, yes/no "
        "or on/off, in any case; a bare --debug means true.")]
    for group in dict.fromkeys(group for group, *_ in options.OPTIONS):
        out.append(f".SS {group}")
        for option_group, name, kind, default, text in options.OPTIONS:
            if option_group == group:
                shown = options.shown_default(name, default)
                text += "" if shown is None else f" (default: {shown})"
                term = f"\\fB\\-\\-{_text(name)}\\fR=\\fI{kinds[kind]}\\fR"
                out.append(_item(term, text))
    for section in ("CONFIG FILE", "SIGNALS", "CONTROL", "EXIT STATUS"):
        out += [f".SH {section}", _text(PROSE[section])]
    out.append(".SH FILES")
    out += [_item(f".I {_text(path)}", text) for path, text in FILES]
    out += [".SH SEE ALSO", _text("README.rst and CHANGELOG.rst, shipped with blackhole.")]
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    print(render(), end="")
