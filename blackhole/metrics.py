"""Counters that add up over every worker, exactly, and their Prometheus exposition.

Each process counts into its own file of 64-bit slots, mapped into memory:
an increment is one store, and the count is in the file the moment it is
made, so a worker that dies (even by SIGKILL) leaves its counts behind. A
scrape, and the master's summary at exit, add up every file.
"""

import glob
import mmap
import os
import time
from array import array

from tornado.web import Application, RequestHandler

from blackhole.commands import COMMANDS
from blackhole.policy import STAGE_NAMES

# Slots: every counter and histogram bucket has a fixed place.
VERBS = (*sorted(COMMANDS), "other")
TLS_VERSIONS = ("TLSv1", "TLSv1.1", "TLSv1.2", "TLSv1.3", "other")
DURATION_BUCKETS = (0.01, 0.1, 0.5, 1, 5, 10, 30, 60, 300)  # seconds, then +Inf
FAULT_ACTIONS = (*range(400, 600), "drop", "hang", "ok")  # what a rule, tag or limit can do

OPENED, CLOSED, MESSAGE_BYTES, RECIPIENTS, DELAYS, DELAY_US, TLS_FAILED, DURATION_US = range(8)
COMMAND = 8  # + index in VERBS
REPLY = COMMAND + len(VERBS)  # + code - 200
MESSAGE = REPLY + 400  # + code - 200: messages by their end-of-data reply
TLS = MESSAGE + 400  # + index in TLS_VERSIONS
DURATION = TLS + len(TLS_VERSIONS)  # + bucket index, the last one +Inf
FAULTS = DURATION + len(DURATION_BUCKETS) + 1  # + stage * len(FAULT_ACTIONS) + action index
SLOTS = FAULTS + len(STAGE_NAMES) * len(FAULT_ACTIONS)

VERB_SLOTS = {verb: COMMAND + index for index, verb in enumerate(VERBS)}
OTHER_VERB = VERB_SLOTS["other"]
_FAULT_INDEX = {action: index for index, action in enumerate(FAULT_ACTIONS)}

counts = memoryview(bytearray(SLOTS * 8)).cast("Q")  # this process's; see open_file
_mapped = None  # keeps the mapping of open_file alive
STARTED = time.time()  # when the master started; inherited by the workers


def open_file(directory):
    """Count into ``directory/<pid>-<time>.counts`` from now on (once per process).

    The name never repeats, so a new worker that gets the pid of a dead one
    cannot overwrite its counts.
    """
    global counts, _mapped
    path = os.path.join(directory, f"{os.getpid()}-{time.time_ns()}.counts")
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        os.ftruncate(fd, SLOTS * 8)
        _mapped = mmap.mmap(fd, SLOTS * 8)
    finally:
        os.close(fd)
    counts = memoryview(_mapped).cast("Q")


def replied(reply):
    """Count a reply given outside the session (last words, a connection refused)."""
    counts[REPLY - 200 + reply.code] += 1


def fault(stage, action):
    """Count a rule, tag or limit that decided a reply at ``stage``."""
    counts[FAULTS + stage * len(FAULT_ACTIONS) + _FAULT_INDEX[action]] += 1


def session_ended(seconds):
    counts[CLOSED] += 1
    counts[DURATION_US] += int(seconds * 1e6)
    for index, bound in enumerate(DURATION_BUCKETS):
        if seconds <= bound:
            counts[DURATION + index] += 1
            return
    counts[DURATION + len(DURATION_BUCKETS)] += 1


def tls_started(version):
    index = TLS_VERSIONS.index(version) if version in TLS_VERSIONS else -1
    counts[TLS + index % len(TLS_VERSIONS)] += 1


def delayed(seconds):
    counts[DELAYS] += 1
    counts[DELAY_US] += round(seconds * 1e6)


def total(directory):
    """Every process's counts added up; active connections from live ones only."""
    summed = array("Q", bytes(SLOTS * 8))
    active = 0
    for path in glob.glob(os.path.join(directory, "*.counts")):
        # Mapped and read as 64-bit words, each load whole: never half a count.
        with open(path, "rb") as counts_file:
            if os.fstat(counts_file.fileno()).st_size < SLOTS * 8:
                continue  # a worker that has only just created it: nothing counted yet
            with mmap.mmap(counts_file.fileno(), SLOTS * 8, access=mmap.ACCESS_READ) as mapped:
                values = memoryview(mapped).cast("Q").tolist()
        for slot in range(SLOTS):
            summed[slot] += values[slot]
        pid = int(os.path.basename(path).partition("-")[0])
        if _alive(pid):
            active += values[OPENED] - values[CLOSED]
    return summed, active


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def summary(directory):
    """The master's last word: sessions, messages accepted and refused, bytes."""
    values, _ = total(directory)
    refused = {code: values[MESSAGE + code - 200] for code in range(200, 600)
               if values[MESSAGE + code - 200] and code != 250}
    refusals = ", ".join(f"{code}: {n}" for code, n in sorted(refused.items())) or "none"
    return (f"Summary: {values[OPENED]} sessions, {values[MESSAGE + 50]} messages accepted, "
            f"refused by code: {refusals}, {values[MESSAGE_BYTES]} bytes")


def exposition(directory, healthy=True):
    """The Prometheus text format (0.0.4) for every counter of every worker."""
    values, active = total(directory)
    out = []

    def family(name, kind, text, samples):
        out.append(f"# HELP blackhole_{name} {text}")
        out.append(f"# TYPE blackhole_{name} {kind}")
        for labels, value in samples:
            out.append(f"blackhole_{name}{labels} {value}")

    def by_code(base, label="code"):
        return [(f'{{{label}="{code}"}}', values[base + code - 200])
                for code in range(200, 600) if values[base + code - 200]]

    family("connections_opened_total", "counter", "SMTP connections accepted.",
           [("", values[OPENED])])
    family("connections_active", "gauge", "SMTP connections open now.", [("", active)])
    family("messages_total", "counter", "Messages received, by the code of their end-of-data reply.",
           by_code(MESSAGE))
    family("message_bytes_total", "counter", "Octets of message content (dot-stuffing undone).",
           [("", values[MESSAGE_BYTES])])
    family("recipients_total", "counter", "Recipients accepted.", [("", values[RECIPIENTS])])
    family("commands_total", "counter", "Commands received, by verb.",
           [(f'{{verb="{verb}"}}', values[COMMAND + i]) for i, verb in enumerate(VERBS)
            if values[COMMAND + i]])
    family("replies_total", "counter", "Replies given, by code (greetings included).",
           by_code(REPLY))
    family("tls_handshakes_total", "counter", "TLS handshakes completed, by protocol version.",
           [(f'{{version="{version}"}}', values[TLS + i]) for i, version in enumerate(TLS_VERSIONS)
            if values[TLS + i]])
    family("tls_handshake_failures_total", "counter", "TLS handshakes that failed.",
           [("", values[TLS_FAILED])])
    family("faults_total", "counter",
           "Replies decided by a rule, an address tag or a limit, by stage and action.",
           [(f'{{stage="{name}",action="{action}"}}',
             values[FAULTS + stage * len(FAULT_ACTIONS) + index])
            for stage, name in enumerate(STAGE_NAMES)
            for index, action in enumerate(FAULT_ACTIONS)
            if values[FAULTS + stage * len(FAULT_ACTIONS) + index]])
    family("delays_total", "counter", "Delays applied before replies.", [("", values[DELAYS])])
    family("delay_seconds_total", "counter", "Seconds of delay applied.",
           [("", values[DELAY_US] / 1e6)])
    cumulative, buckets = 0, []
    for index, bound in enumerate((*DURATION_BUCKETS, "+Inf")):
        cumulative += values[DURATION + index]
        buckets.append((f'_bucket{{le="{bound}"}}', cumulative))
    # _count is the +Inf bucket: a scrape between two stores stays consistent.
    family("session_duration_seconds", "histogram", "How long SMTP sessions lasted.",
           [*buckets, ("_sum", values[DURATION_US] / 1e6), ("_count", cumulative)])
    family("uptime_seconds", "gauge", "Seconds since blackhole started.",
           [("", round(time.time() - STARTED, 3))])
    family("up", "gauge", "1 while the server accepts mail.", [("", int(healthy))])
    return "\n".join(out) + "\n"


class _Metrics(RequestHandler):
    def initialize(self, directory, healthy):
        self.directory, self.healthy = directory, healthy

    def get(self):
        self.set_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
        self.write(exposition(self.directory, self.healthy()))


class _Health(RequestHandler):
    def initialize(self, directory, healthy):
        self.healthy = healthy

    def get(self):
        if not self.healthy():
            self.set_status(503)
        self.write("OK\n" if self.healthy() else "stopping\n")


def application(directory, healthy):
    """GET /metrics and GET /healthz; ``healthy()`` is true while mail is accepted."""
    routes = {"directory": directory, "healthy": healthy}
    return Application([("/metrics", _Metrics, routes), ("/healthz", _Health, routes)])
