"""The actions that talk to a running server: ``stats``, ``watch`` and ``reload``.

``stats`` and ``watch`` read GET /stats from the metrics port named by the
same options and config file as the daemon's; ``reload`` sends SIGHUP to the
daemon named by ``--pid``.
"""

import json
import os
import signal
import sys
import time
import urllib.error
import urllib.request

from blackhole import daemon, server
from blackhole.errors import BlackholeError

TIMEOUT = 5  # seconds a request to the metrics port may take
_ANY = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}  # where "every address" answers


def fetch(values, path="/stats"):
    """GET ``path`` on the metrics port as JSON; one BlackholeError line if nothing answers."""
    if not values.metrics_port:
        raise BlackholeError("no metrics port to ask: set --metrics_port (as the daemon has it, "
                             "or in its --conf)")
    host = _ANY.get(values.metrics_host, values.metrics_host)
    url = f"http://{server.address(host, values.metrics_port)}{path}"
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT) as response:
            return json.load(response)
    except (OSError, ValueError) as error:  # URLError and HTTPError are OSErrors
        reason = getattr(error, "reason", error)
        raise BlackholeError(f"nothing answers on {url} ({reason}): is blackhole running "
                             f"with --metrics_port={values.metrics_port}?") from None


def flat(value, prefix=""):
    """``name value`` pairs, nested keys (and list positions) joined by dots."""
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, list):
        items = enumerate(value)
    else:
        yield prefix, value
        return
    for key, inner in items:
        yield from flat(inner, f"{prefix}.{key}" if prefix else str(key))


def stats(values, settings, policy):
    """Print the running server's GET /stats as ``name value`` lines."""
    for name, value in flat(fetch(values)):
        print(f"{name} {value}")
    return 0


def _classes(replies):
    counts = {"2xx": 0, "4xx": 0, "5xx": 0}
    for code, count in replies.items():
        if code[0] in "245":
            counts[f"{code[0]}xx"] += count
    return counts


def line(before, after, seconds):
    """One dashboard line from two GET /stats taken ``seconds`` apart."""
    def rate(total_of):
        return (total_of(after) - total_of(before)) / seconds

    def messages(stats):
        return sum(stats["messages"].values())

    def faults(stats):
        return sum(stats["faults"].values())

    classes = [(name, (count - _classes(before["replies"])[name]) / seconds)
               for name, count in _classes(after["replies"]).items()]
    return (f"{rate(messages):.0f} msg/s  {after['connections_open']} open  "
            + "  ".join(f"{name} {value:.0f}/s" for name, value in classes)
            + f"  faults {rate(faults):.0f}/s  |  total {messages(after)} msgs, "
            f"{after['connections_opened']} sessions, {faults(after)} faults")


def watch(values, settings, policy):
    """Print one line a second until interrupted: redrawn in place on a terminal."""
    terminal = sys.stdout.isatty()
    before, taken = fetch(values), time.monotonic()
    try:
        while True:
            time.sleep(max(0.0, taken + 1 - time.monotonic()))
            after, now = fetch(values), time.monotonic()
            text = line(before, after, now - taken)
            if terminal:
                sys.stdout.write(f"\r\x1b[K{text}")
            else:
                sys.stdout.write(f"{text}\n")
            sys.stdout.flush()
            before, taken = after, now
    except KeyboardInterrupt:
        if terminal:
            sys.stdout.write("\n")
        return 0


def reload(values, settings, policy):
    """SIGHUP the daemon of ``--pid``: it re-reads --conf and reopens its log."""
    pid = daemon.running_pid(values.pid)
    if pid is None:
        raise BlackholeError(f"not running (no live blackhole in pidfile {values.pid})")
    try:
        os.kill(pid, signal.SIGHUP)
    except PermissionError:
        raise BlackholeError(f"Permission denied, could not signal pid {pid}") from None
    print(f"Reloading pid {pid}")
    return 0
