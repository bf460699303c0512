"""Counters that add up over every worker, exactly, and their Prometheus exposition.

Before forking, the master maps one block of 64-bit slots per worker into
anonymous memory that it shares with its workers: nothing is on disk. A
worker counts into its own block, an increment one store that is in the
shared memory the moment it is made, so a worker that dies (even by SIGKILL)
leaves its counts behind, and the worker that replaces it counts on in the
same block. A scrape, and the master's summary at exit, add up every block.
"""

import mmap
import time

from blackhole.commands import LMTP_COMMANDS
from blackhole.policy import STAGE_NAMES

# Slots: every counter and histogram bucket has a fixed place.
VERBS = (*sorted(LMTP_COMMANDS), "other")  # SMTP's verbs and LHLO
TLS_VERSIONS = ("TLSv1", "TLSv1.1", "TLSv1.2", "TLSv1.3", "other")
DURATION_BUCKETS = (0.01, 0.1, 0.5, 1, 5, 10, 30, 60, 300)  # seconds, then +Inf
FAULT_ACTIONS = (*range(400, 600), "drop", "hang", "ok")  # what a rule, tag or limit can do

(OPENED, CLOSED, LOST, MESSAGE_BYTES, RECIPIENTS, DELAYS, DELAY_US, TLS_FAILED,
 DURATION_US) = range(9)  # LOST: connections that died with their worker
COMMAND = 9  # + index in VERBS
REPLY = COMMAND + len(VERBS)  # + code - 200
MESSAGE = REPLY + 400  # + code - 200: messages by their end-of-data reply
TLS = MESSAGE + 400  # + index in TLS_VERSIONS
DURATION = TLS + len(TLS_VERSIONS)  # + bucket index, the last one +Inf
FAULTS = DURATION + len(DURATION_BUCKETS) + 1  # + stage * len(FAULT_ACTIONS) + action index
PROXY = FAULTS + len(STAGE_NAMES) * len(FAULT_ACTIONS)  # + index in PROXY_REASONS
SLOTS = PROXY + 3
PROXY_REASONS = ("untrusted", "malformed", "missing")  # a proxy=on connection refused:
PROXY_UNTRUSTED, PROXY_MALFORMED, PROXY_MISSING = range(PROXY, SLOTS)  # from whom, why

VERB_SLOTS = {verb: COMMAND + index for index, verb in enumerate(VERBS)}
OTHER_VERB = VERB_SLOTS["other"]
_FAULT_INDEX = {action: index for index, action in enumerate(FAULT_ACTIONS)}

counts = memoryview(bytearray(SLOTS * 8)).cast("Q")  # this process's; see count_in
STARTED = time.time()  # when the master started; inherited by the workers


def shared(workers):
    """A zeroed block of slots for each of ``workers`` workers, shared with the
    processes forked after (MAP_SHARED | MAP_ANONYMOUS), page-aligned."""
    return memoryview(mmap.mmap(-1, workers * SLOTS * 8)).cast("Q")


def count_in(blocks, task):
    """Count from now on into worker ``task``'s block, where the worker it
    replaces, if any, counted: the connections still open there died with it."""
    global counts
    counts = blocks[task * SLOTS:(task + 1) * SLOTS]
    counts[LOST] = counts[OPENED] - counts[CLOSED]


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


def total(blocks):
    """Every worker's counts added up, and the connections open now.

    Python integers: whatever a worker has written, the sum cannot overflow.
    """
    summed, active = [0] * SLOTS, 0
    for start in range(0, len(blocks), SLOTS):
        block = blocks[start:start + SLOTS]
        # Aligned 64-bit loads, each whole: never half a count. Closed before
        # opened, so a session that opens and closes meanwhile is not -1 active.
        gone = block[CLOSED] + block[LOST]
        values = block.tolist()
        active += values[OPENED] - gone
        summed = [a + b for a, b in zip(summed, values)]
    return summed, active


def summary(blocks):
    """The master's last word: sessions, messages accepted and refused, bytes."""
    values, _ = total(blocks)
    refused = {code: values[MESSAGE + code - 200] for code in range(200, 600)
               if values[MESSAGE + code - 200] and code != 250}
    refusals = ", ".join(f"{code}: {n}" for code, n in sorted(refused.items())) or "none"
    return (f"Summary: {values[OPENED]} sessions, {values[MESSAGE + 50]} messages accepted, "
            f"refused by code: {refusals}, {values[MESSAGE_BYTES]} bytes")


def stats(blocks):
    """GET /stats: the counters a tester reconciles a run with, summed over workers."""
    values, active = total(blocks)

    def by_code(base):
        return {str(code): values[base + code - 200] for code in range(200, 600)
                if values[base + code - 200]}

    return {
        "connections_opened": values[OPENED],
        "connections_open": active,
        "messages": by_code(MESSAGE),
        "replies": by_code(REPLY),
        "recipients": values[RECIPIENTS],
        "octets": values[MESSAGE_BYTES],
        "faults": {f"{name}:{action}": values[FAULTS + stage * len(FAULT_ACTIONS) + index]
                   for stage, name in enumerate(STAGE_NAMES)
                   for index, action in enumerate(FAULT_ACTIONS)
                   if values[FAULTS + stage * len(FAULT_ACTIONS) + index]},
        "tls_sessions": sum(values[TLS:TLS + len(TLS_VERSIONS)]),
        "uptime_seconds": round(time.time() - STARTED, 3),
    }


def exposition(blocks, healthy=True):
    """The Prometheus text format (0.0.4) for every counter of every worker."""
    values, active = total(blocks)
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
    family("proxy_refused_total", "counter",
           "Connections to a proxy=on listener closed before the greeting: from outside "
           "--proxy_from, with a malformed PROXY header, or with none in time.",
           [(f'{{reason="{reason}"}}', values[PROXY + i]) for i, reason in enumerate(PROXY_REASONS)
            if values[PROXY + i]])
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
