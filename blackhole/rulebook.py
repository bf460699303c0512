"""The running mode, delay and rules: one copy for the master and every worker.

GET /rules shows them, PUT and DELETE /rules change them, SIGHUP re-reads
them from --conf. A change is written once, as the JSON text of GET /rules
with a generation number, into memory the master maps before it forks (a
memfd: nothing on disk). Each worker applies the newest text to its
policies in place and records, in its own slot, the generation it has
applied, so the writer can tell when every worker has the change. A POSIX
record lock on the memfd makes changes one at a time; the kernel drops it
with the process that held it, even one killed by SIGKILL.
"""

import asyncio
import fcntl
import json
import logging
import mmap
import os
import signal

from blackhole.policy import MODES, delay_range, parse_rule, parse_rules

log = logging.getLogger("blackhole")

KEYS = ("mode", "delay", "rules", "listeners")
TEXT = 1024 * 1024  # octets of JSON text at most; a PUT body is at most 64 KiB
SETTLE = 2.0  # seconds a change waits for every live worker before 503
POLL = 0.01  # seconds between looks at the workers' slots, or at a lock held elsewhere
_HEAD = 2  # 64-bit slots before the workers': the generation, the text's length


def delay_text(delay):
    """A delay as GET /rules shows it: ``"0"``, ``"2"``, ``"1-3"``."""
    low, high = delay if isinstance(delay, tuple) else (delay, delay)
    return f"{low:g}" if low == high else f"{low:g}-{high:g}"


def listener_key(text):
    """A listener's address as ``--listen`` writes it: ``:2525`` is ``0.0.0.0:2525``."""
    host, _, port = text.rpartition(":")
    host = host.strip("[]") or "0.0.0.0"
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def started(mode, delay, rules, listeners):
    """The settings of GET /rules from options and parsed ``server.Listener``s."""
    own = {}
    for listener in listeners:
        mine = {}
        if listener.mode is not None:
            mine["mode"] = listener.mode
        if listener.delay is not None:
            mine["delay"] = delay_text(listener.delay)
        if listener.rules is not None:
            mine["rules"] = [rule.token for rule in listener.rules]
        if mine:
            own[str(listener)] = mine
    return {"mode": mode, "delay": delay_text(delay),
            "rules": [rule.token for rule in rules], "listeners": own}


def _checked(where, key, value):
    """One value of a change, as the options would take it; ValueError names it."""
    if key == "mode":
        if not isinstance(value, str) or value not in MODES:
            raise ValueError(f"{where}mode: {json.dumps(value)} is not one of {', '.join(MODES)}")
        return value
    if key == "delay":
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = f"{value:g}"
        try:
            return delay_text(delay_range(value))
        except (ValueError, TypeError, AttributeError):
            raise ValueError(f"{where}delay: {json.dumps(value)} is not a string of N or MIN-MAX "
                             "seconds, MIN <= MAX") from None
    # rules: a list of tokens, or the text --rules takes
    try:
        if isinstance(value, str):
            return [rule.token for rule in parse_rules(value)]
        if isinstance(value, list) and all(isinstance(token, str) for token in value):
            return [parse_rule(token.strip()).token for token in value]
    except ValueError as error:
        raise ValueError(f"{where}rules: {error}") from None
    raise ValueError(f"{where}rules: a list of rule tokens or the --rules text, "
                     f"not {json.dumps(value)[:80]}")


def revised(current, change, running):
    """``current`` settings with a PUT's ``change`` (a parsed JSON object).

    Keys left out keep their values; a listener named gets exactly the own
    settings given (``{}``: none). ``running``: the addresses that may be
    named. ValueError, one line naming the bad key or value, if anything is wrong.
    """
    if not isinstance(change, dict):
        raise ValueError("the body must be a JSON object with mode, delay, rules or listeners")
    new = json.loads(json.dumps(current))  # a deep copy: nothing changes until all is checked
    for key, value in change.items():
        if key not in KEYS:
            raise ValueError(f"unknown key {json.dumps(key)[:80]}: one of {', '.join(KEYS)}")
        if key != "listeners":
            new[key] = _checked("", key, value)
            continue
        if not isinstance(value, dict):
            raise ValueError("listeners: an object of listener address -> its own settings")
        for where, own in value.items():
            address = listener_key(where)
            if address not in running:
                raise ValueError(f"listeners: {json.dumps(where)[:80]} is not a running "
                                 f"listener: one of {', '.join(running)}")
            if not isinstance(own, dict):
                raise ValueError(f"listeners.{address}: an object with mode, delay or rules")
            mine = {}
            for name, setting in own.items():
                if name not in KEYS[:3]:
                    raise ValueError(f"listeners.{address}: unknown key "
                                     f"{json.dumps(name)[:80]}: one of mode, delay, rules")
                mine[name] = _checked(f"listeners.{address}.", name, setting)
            if mine:
                new["listeners"][address] = mine
            else:
                new["listeners"].pop(address, None)
    return new


class Rulebook:
    """The shared copy: made by the master before it forks, used by all."""

    def __init__(self, workers, settings, running):
        """``settings``: those blackhole started with (DELETE /rules restores
        them); ``running``: the listeners' addresses, in order."""
        self.started, self.running = settings, list(running)
        self._fd = os.memfd_create("blackhole-rules", os.MFD_CLOEXEC)
        size = (_HEAD + 2 * workers) * 8 + TEXT
        os.ftruncate(self._fd, size)
        self._map = mmap.mmap(self._fd, size)
        self._slots = memoryview(self._map)[:(_HEAD + 2 * workers) * 8].cast("Q")
        self._text = (_HEAD + 2 * workers) * 8
        self._write(settings, 0)

    # The lock, held only between two awaits: never across one.

    def try_lock(self):
        """Take the lock if no other process holds it; False if one does."""
        try:
            fcntl.lockf(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except (BlockingIOError, PermissionError):
            return False
        return True

    def lock(self):
        """Wait for the lock (the master, which has no event loop to keep going)."""
        fcntl.lockf(self._fd, fcntl.LOCK_EX)

    def unlock(self):
        fcntl.lockf(self._fd, fcntl.LOCK_UN)

    async def locked(self, deadline):
        """Take the lock, retrying every POLL seconds without blocking; False at ``deadline``."""
        loop = asyncio.get_running_loop()
        while not self.try_lock():
            if loop.time() >= deadline:
                return False
            await asyncio.sleep(POLL)
        return True

    # With the lock held.

    def current(self):
        """(generation, settings) as last written."""
        text = bytes(self._map[self._text:self._text + self._slots[1]])
        return self._slots[0], json.loads(text)

    def publish(self, settings):
        """Write ``settings`` as the next generation; return it. ValueError if too large."""
        generation = self._slots[0] + 1
        self._write(settings, generation)
        return generation

    def _write(self, settings, generation):
        text = json.dumps(settings, separators=(",", ":")).encode()
        if len(text) > TEXT:
            raise ValueError(f"the settings would take {len(text)} octets, more than {TEXT}")
        self._map[self._text:self._text + len(text)] = text
        self._slots[1] = len(text)
        self._slots[0] = generation

    # The workers' slots: (pid, generation applied) by task.

    def applied(self, task, pid, generation):
        self._slots[_HEAD + 2 * task + 1] = generation
        self._slots[_HEAD + 2 * task] = pid

    def workers(self):
        """{pid: generation applied} of every worker that has applied one."""
        values = self._slots[_HEAD:].tolist()
        return {pid: generation for pid, generation in zip(values[::2], values[1::2]) if pid}


def effective(settings):
    """{listener address: (mode, delay, parsed rules)}: its own settings over the global ones."""
    rules = parse_rules(",".join(settings["rules"]))
    result = {}
    for address, own in settings["listeners"].items():
        result[address] = (own.get("mode", settings["mode"]),
                           delay_range(own.get("delay", settings["delay"])),
                           parse_rules(",".join(own["rules"])) if "rules" in own else rules)
    result[None] = (settings["mode"], delay_range(settings["delay"]), rules)
    return result


class Follower:
    """A worker's side: apply every generation to its policies, and say so."""

    def __init__(self, book, task, served, live):
        """``served``: (listener address, Policy) of each listener this worker
        serves; ``live()``: the pids of every live worker."""
        self.book, self.task, self.served, self.live = book, task, served, live
        self.generation = -1
        self._retry = None

    def catch_up(self):
        """Apply the newest settings, unless another process is writing them:
        then look again in POLL seconds (SIGUSR1 and SIGHUP call this)."""
        if not self.book.try_lock():
            if self._retry is None:
                self._retry = asyncio.get_running_loop().call_later(POLL, self._again)
            return
        try:
            self._apply(*self.book.current())
        finally:
            self.book.unlock()

    def _again(self):
        self._retry = None
        self.catch_up()

    def _apply(self, generation, settings):
        if generation != self.generation:
            chosen = effective(settings)
            for address, policy in self.served:
                policy.update(*chosen.get(address, chosen[None]))
            if generation:  # not the settings it started with
                log.info("Worker %d applied settings generation %d", os.getpid(), generation)
            self.generation = generation
        self.book.applied(self.task, os.getpid(), generation)

    async def show(self):
        """The GET /rules object, or None if the lock stays taken for SETTLE seconds."""
        if not await self.book.locked(asyncio.get_running_loop().time() + SETTLE):
            return None
        try:
            generation, settings = self.book.current()
        finally:
            self.book.unlock()
        return {**settings, "generation": generation}

    async def change(self, revise):
        """Write ``revise(current settings)`` for every worker, all or nothing.

        Returns (status, the GET /rules object, or a one-line reason): 200 once
        every live worker has applied it, 503 if some have not after SETTLE
        seconds (or the lock stayed taken), 400 if ``revise`` raised
        ValueError, in which case nothing was written.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + SETTLE
        if not await self.book.locked(deadline):
            return 503, "another change is being made: try again"
        try:
            generation, current = self.book.current()
            try:
                new = revise(current)
                generation = self.book.publish(new)  # written whole, or not at all
            except ValueError as error:
                return 400, str(error)
            self._apply(generation, new)
        finally:
            self.book.unlock()
        siblings = [pid for pid in self.live() if pid != os.getpid()]
        for pid in siblings:
            try:
                os.kill(pid, signal.SIGUSR1)
            except ProcessLookupError:
                pass  # gone: its replacement reads the settings as it starts
        while True:
            behind = self.behind(generation)
            if not behind:
                return 200, {**new, "generation": generation}
            if loop.time() >= deadline:
                return 503, ("not applied after {:g} s by worker{} {}".format(
                    SETTLE, "s" * (len(behind) > 1), ", ".join(map(str, behind))))
            await asyncio.sleep(POLL)

    def behind(self, generation):
        """The live workers that have not applied ``generation`` (or a later one)."""
        applied = self.book.workers()
        return [pid for pid in self.live() if applied.get(pid, -1) < generation]
