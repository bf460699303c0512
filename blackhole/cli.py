"""The blackhole command: ``blackhole [--option=value ...] ACTION``."""

import os
import sys

from blackhole import __version__, console, daemon, options, process
from blackhole.errors import BlackholeError, UsageError

# action -> (function(values, settings, policy) returning the exit code, what it does).
ACTIONS = {
    "start": (daemon.start, "daemonize and return once listening; print where, the log "
                            "file and the pid"),
    "stop": (daemon.stop, "SIGTERM the daemon and wait until it and its workers are gone "
                          f"(SIGKILL after {daemon.STOP_TIMEOUT} s)"),
    "status": (daemon.status, "print running (exit 0) or not running (exit 3, or 1 if it "
                              "removed a stale pid file)"),
    "restart": (daemon.restart, "stop, then start"),
    "run": (process.run, "serve in the foreground, logging to stderr (and to --log if "
                         "given)"),
    "reload": (console.reload, "SIGHUP the daemon: re-read mode, delay and rules from --conf, "
                               "reopen the log"),
    "stats": (console.stats, "print the running server's counters (GET /stats on "
                             "--metrics_port) as name value lines"),
    "watch": (console.watch, "print messages per second, sessions, replies and faults once "
                             "a second until interrupted"),
}
USAGE = f"usage: blackhole [--option=value ...] ({'|'.join(ACTIONS)})"


def _action(actions):
    if not actions:
        raise UsageError("missing action")
    if len(actions) > 1:
        raise UsageError(f"one action expected, got: {' '.join(actions)}")
    if actions[0] not in ACTIONS:
        raise UsageError(f"unknown action '{actions[0]}'")
    return ACTIONS[actions[0]][0]


def main(args=None):
    """Run the command; return its exit code (0 ok, 1 failure, 2 bad action)."""
    args = sys.argv[1:] if args is None else args
    for fd in (0, 1, 2):  # closed stdio would hand its numbers to our sockets
        try:
            os.fstat(fd)
        except OSError:
            os.open(os.devnull, os.O_RDWR)
    if "-h" in args or "--help" in args:
        print(options.help_text(USAGE, [(name, text) for name, (_, text) in ACTIONS.items()]))
        return 0
    if "-v" in args or "--version" in args:
        print(f"blackhole {__version__}")
        return 0
    try:
        actions, values, warnings = options.parse(args)
        action = _action(actions)
        for warning in warnings:
            print(f"blackhole: warning: {warning}", file=sys.stderr)
        if values.ssl_ca_certs_dir:
            print("Deprecated option: ssl_ca_certs_dir", file=sys.stderr)
        return action(values, *options.settings(values))
    except BlackholeError as error:
        if isinstance(error, UsageError):
            print(USAGE, file=sys.stderr)
        print(f"blackhole: {error}", file=sys.stderr)
        return error.exit_code
