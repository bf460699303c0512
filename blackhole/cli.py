"""The blackhole command: ``blackhole [--option=value ...] ACTION``."""

import os
import sys

from blackhole import __version__, daemon, options, process
from blackhole.errors import BlackholeError, UsageError

# action -> function(values, settings, policy) returning the exit code.
ACTIONS = {
    "start": daemon.start,
    "stop": daemon.stop,
    "status": daemon.status,
    "restart": daemon.restart,
    "run": process.run,
}
USAGE = f"usage: blackhole [--option=value ...] ({'|'.join(ACTIONS)})"


def _action(actions):
    if not actions:
        raise UsageError("missing action")
    if len(actions) > 1:
        raise UsageError(f"one action expected, got: {' '.join(actions)}")
    if actions[0] not in ACTIONS:
        raise UsageError(f"unknown action '{actions[0]}'")
    return ACTIONS[actions[0]]


def main(args=None):
    """Run the command; return its exit code (0 ok, 1 failure, 2 bad action)."""
    args = sys.argv[1:] if args is None else args
    for fd in (0, 1, 2):  # closed stdio would hand its numbers to our sockets
        try:
            os.fstat(fd)
        except OSError:
            os.open(os.devnull, os.O_RDWR)
    if "-h" in args or "--help" in args:
        print(options.help_text(USAGE))
        return 0
    if "-v" in args or "--version" in args:
        print(f"blackhole {__version__}")
        return 0
    try:
        actions, values = options.parse(args)
        action = _action(actions)
        if values.ssl_ca_certs_dir:
            print("Deprecated option: ssl_ca_certs_dir", file=sys.stderr)
        return action(values, *options.settings(values))
    except BlackholeError as error:
        if isinstance(error, UsageError):
            print(USAGE, file=sys.stderr)
        print(f"blackhole: {error}", file=sys.stderr)
        return error.exit_code
