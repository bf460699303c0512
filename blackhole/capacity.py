"""Capacity limits, shared by every worker: connections, message rate, greylisting.

They model the server's state, not the message (issue 13, section 4), so the
policy checks them before any rule or tag. The master maps each limit that is
set into anonymous shared memory before the fork; nothing is mapped for a
limit that is off. No locks: a worker writes only its own slots, and readers
add up every worker's. The greylist table is written by every worker, one
aligned 64-bit word at a time, so a reader never sees half an entry.

What the races allow: two workers that claim the last connection place at
once may both refuse (one too many refused); two that pass the last MAIL of
the rate's window at once may both accept it (at most one too many per other
worker); a triplet seen by two workers at once may be greylisted twice.
"""

import math
import mmap
import time

from blackhole import replies
from blackhole.policy import Rule, Stage

TICKS = 10  # the rate's one-second window, in tenths of a second
DAY = 24 * 3600  # seconds a triplet stays accepted once its retry has passed
TRIPLETS = 1 << 20  # greylist entries (8 MiB); the oldest is forgotten first
WAYS = 8  # entries per set: one 64-octet cache line

# A greylist entry: a 27-bit fingerprint of the triplet, whether its retry
# has passed, and when it was first seen (or passed) in 1/100 s since the
# table was made, 36 bits: 21 years. An empty word is no entry.
_TIME_BITS = 36
_PASSED = 1 << _TIME_BITS
_FINGERPRINT_SHIFT = _TIME_BITS + 1
_TIME_MASK = _PASSED - 1
_HASH_MASK = (1 << 64) - 1
_FINGERPRINT_MASK = _HASH_MASK ^ (_PASSED | _TIME_MASK)


def _words(count):
    """``count`` zeroed 64-bit words in memory shared with the processes forked after."""
    return memoryview(mmap.mmap(-1, count * 8)).cast("Q")


def _refusal(stage, code, token, reply):
    return Rule(stage, code, 1.0, None, token, False, reply, True)


class Connections:
    """--max_connections: a place for each session open at once over all workers.

    Each worker's slot holds how many places it has taken. A worker claims
    a place before it adds up the slots, so two that race see each other's
    claim and both refuse: one refused too many rather than one admitted too
    many. (A CPU may hold a store in its write buffer past its own later
    loads, so in theory both could still miss the other's claim; that window
    is nanoseconds against the interpreter's microseconds between the two.)
    """

    def __init__(self, limit, workers):
        self.limit = limit
        self._slots = _words(workers)
        self._mine = 0
        self._held = set()  # this worker's sessions that hold a place

    def count_in(self, task):
        """Take worker ``task``'s slot; the places of a worker it replaces died with it."""
        self._mine = task
        self._slots[task] = 0
        self._held = set()

    def admit(self, session):
        """Take a place for ``session``; False if all are taken."""
        slots, held = self._slots, self._held
        slots[self._mine] = len(held) + 1
        if sum(slots) > self.limit:
            slots[self._mine] = len(held)
            return False
        held.add(session)
        return True

    def release(self, session):
        held = self._held
        if session in held:
            held.remove(session)
            self._slots[self._mine] = len(held)


class Rate:
    """--max_rate: MAILs accepted a second over all workers, in a sliding window.

    Each worker keeps, for the last TICKS tenths of a second, a (tick, count)
    pair per tenth; a MAIL is accepted while every worker's counts within the
    last second add up to less than the limit. Only accepted MAILs count.
    """

    def __init__(self, limit, workers, clock=time.monotonic):
        self.limit = limit
        self._slots = _words(workers * TICKS * 2)
        self._mine = 0
        self._clock = clock

    def count_in(self, task):
        """Count into worker ``task``'s pairs, where the worker it replaces counted."""
        self._mine = task * TICKS * 2

    def full(self):
        oldest = int(self._clock() * TICKS) - TICKS + 1
        values = self._slots.tolist()
        return sum(count for tick, count in zip(values[::2], values[1::2])
                   if tick >= oldest) >= self.limit

    def take(self):
        """Count one accepted MAIL in this worker's slot for this tenth."""
        tick = int(self._clock() * TICKS)
        slots, at = self._slots, self._mine + tick % TICKS * 2
        if slots[at] != tick:
            slots[at + 1] = 0  # before the tick, so that no reader adds a stale count
            slots[at] = tick
        slots[at + 1] += 1


class Greylist:
    """--greylist: a set-associative table of (client, sender, recipient) triplets.

    A triplet hashes to a set of WAYS words; a new one replaces the set's
    oldest entry. Python's string hash is seeded once per run, before the
    fork, so every worker hashes a triplet alike.
    """

    def __init__(self, seconds, triplets=TRIPLETS, clock=time.monotonic):
        self.seconds = seconds
        self._words = _words(triplets)
        self._sets = triplets // WAYS
        self._clock = clock
        self._since = clock()

    def wait(self, client, sender, recipient):
        """Seconds the triplet must still wait, rounded up; 0 if it may pass."""
        key = hash((client, sender.lower(), recipient.lower())) & _HASH_MASK
        fingerprint = (key >> _FINGERPRINT_SHIFT) << _FINGERPRINT_SHIFT
        start = key % self._sets * WAYS
        now = math.ceil((self._clock() - self._since) * 100)
        words, oldest, victim = self._words, None, start
        for index in range(start, start + WAYS):
            word = words[index]
            seen = word & _TIME_MASK
            if word and word & _FINGERPRINT_MASK == fingerprint:
                if word & _PASSED:
                    if now - seen < DAY * 100:
                        return 0
                    break  # a day has passed since: greylisted anew
                left = seen + self.seconds * 100 - now
                if left > 0:
                    return math.ceil(left / 100)  # an early retry: the clock runs on
                words[index] = fingerprint | _PASSED | now
                return 0
            age = seen if word else -1  # an empty word first
            if oldest is None or age < oldest:
                oldest, victim = age, index
        else:
            index = victim
        words[index] = fingerprint | now
        return self.seconds


class Limits:
    """The capacity limits set, checked first at the stages they guard."""

    def __init__(self, workers, max_connections=0, max_rate=0, greylist=0):
        self.connections = Connections(max_connections, workers) if max_connections else None
        self.rate = Rate(max_rate, workers) if max_rate else None
        self.greylist = Greylist(greylist) if greylist else None
        self.stages = frozenset(stage for stage, on in (
            (Stage.CONNECT, self.connections), (Stage.MAIL, self.rate),
            (Stage.RCPT, self.greylist)) if on is not None)

    def __str__(self):
        """As the master announces them."""
        parts = []
        if self.connections is not None:
            parts.append(f"{self.connections.limit} connections at once")
        if self.rate is not None:
            parts.append(f"{self.rate.limit} messages a second")
        if self.greylist is not None:
            parts.append(f"greylist {self.greylist.seconds}s")
        return ", ".join(parts)

    def count_in(self, task):
        """Worker ``task`` writes its own slots from now on."""
        for limit in (self.connections, self.rate):
            if limit is not None:
                limit.count_in(task)

    def check(self, stage, session, address):
        """The refusal of a limit at ``stage``, or None to go on to the rules."""
        if stage not in self.stages:
            return None
        if stage == Stage.CONNECT:
            if not self.connections.admit(session):
                return _TOO_MANY_CONNECTIONS
        elif stage == Stage.MAIL:
            if self.rate.full():
                return _TOO_MUCH_MAIL
        else:
            seconds = self.greylist.wait(session.peer, session.sender, address)
            if seconds:
                return _refusal(Stage.RCPT, 451, "greylist", replies.greylisted(seconds))
        return None

    def passed(self, stage):
        """The command at ``stage`` goes through: an accepted MAIL uses up the rate."""
        if stage == Stage.MAIL and self.rate is not None:
            self.rate.take()

    def release(self, session):
        """The session has ended: its place, if it held one, is free."""
        if self.connections is not None:
            self.connections.release(session)


_TOO_MANY_CONNECTIONS = _refusal(Stage.CONNECT, 421, "max_connections",
                                 replies.TOO_MANY_CONNECTIONS)
_TOO_MUCH_MAIL = _refusal(Stage.MAIL, 450, "max_rate", replies.TOO_MUCH_MAIL)


def shared(values):
    """The limits --max_connections, --max_rate and --greylist set, or None."""
    if not (values.max_connections or values.max_rate or values.greylist):
        return None
    return Limits(values.workers, values.max_connections, values.max_rate, values.greylist)

