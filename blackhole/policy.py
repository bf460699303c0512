"""The response policy: what to answer at every stage, apart from how SMTP is spoken.

Every reply's decision passes ``Policy.decide``: the capacity limits come
first (blackhole.capacity), then the message's own request (an address tag)
wins over the rules, and the rules over the defaults: the mode at the end of
data, the delay before every reply but the greeting.
A mode is a row of end-of-data reply codes (one is drawn at random); a delay
is how long to wait before a reply, fixed or drawn from a range. A listener
may have its own policy; a message may switch mode and delay for itself with
X-Blackhole-Mode and X-Blackhole-Delay headers.

Every draw (a mode's code, a rule's odds, a delay in a range) comes from one
``random.Random``, seeded by ``--seed`` for runs that repeat exactly, and
a draw is taken only where something left to chance is consulted.
"""

import functools
import random
import re
from typing import NamedTuple

from blackhole import replies
from blackhole.actions import DROP, HANG
from blackhole.replies import END_OF_DATA

_ACCEPT = (250,)
_BOUNCE = (421, 431, 450, 451, 452, 454, 458, 459,
           521, 534, 550, 551, 552, 553, 554, 571)

MODES = {
    "accept": _ACCEPT,
    "bounce": _BOUNCE,
    "random": _ACCEPT + _BOUNCE,
    "unavailable": (421,),
    "offline": (521,),
}
_MODE_REPLIES = {mode: tuple(END_OF_DATA[code] for code in codes)
                 for mode, codes in MODES.items()}
MAX_SWITCHED_DELAY = 60.0  # seconds a message may ask for
_NUMBER = re.compile(r"(\d+(\.\d*)?|\.\d+)")  # seconds or percent: whole or decimal


# The replies a rule can decide (issue 13, section 1): connect is the
# greeting, auth the final reply of an exchange, data the reply to DATA
# itself, bdat a chunk that is not LAST, eod the end of the message.
STAGE_NAMES = ("connect", "helo", "ehlo", "starttls", "auth", "mail", "rcpt", "data", "bdat",
               "eod", "rset", "noop", "vrfy", "expn", "etrn", "help", "quit")
STAGES = {name: stage for stage, name in enumerate(STAGE_NAMES)}


class Stage:
    """The stages, as small ints that index per-stage tables. Plain attributes:
    an IntEnum member takes four times as long to look up, once per command."""

    (CONNECT, HELO, EHLO, STARTTLS, AUTH, MAIL, RCPT, DATA, BDAT, EOD,
     RSET, NOOP, VRFY, EXPN, ETRN, HELP, QUIT) = range(len(STAGE_NAMES))


# Where an address's tag applies besides its own command (MAIL, RCPT): a
# sender's to every recipient and the data, a recipient's to the data.
TRANSACTION_STAGES = frozenset((Stage.DATA, Stage.BDAT, Stage.EOD))
SENDER_STAGES = TRANSACTION_STAGES | {Stage.RCPT}


class Rule(NamedTuple):
    """One failure to rehearse: from --rules, a listener's ``rule=``, an address
    tag, or a capacity limit's refusal."""

    stage: int  # a Stage
    action: object  # a 4xx or 5xx code, "drop", "hang" or "ok"
    odds: float  # the chance that it fires, above 0 and at most 1
    delay: object  # seconds or a (min, max) range before the answer; None: the policy's
    token: str  # as written, for the log
    tag: bool  # an address tag rather than a configured rule
    answer: object  # the Reply for a code, DROP, HANG, or None (the normal reply)
    limit: bool = False  # a capacity limit's refusal (blackhole.capacity)


_NAMED = {"drop": DROP, "hang": HANG, "ok": None}  # the actions that are no code


def _answer(stage, action):
    """What an action answers with: a Reply for a code, DROP, HANG, or None (ok)."""
    return _NAMED[action] if action in _NAMED else replies.refusal(STAGE_NAMES[stage], action)


def _action(text):
    """A rule's or tag's action: an int code, "drop", "hang" or "ok"; ValueError if not."""
    word = text.lower()
    if word in _NAMED:
        return word
    if text.isascii() and text.isdigit():
        if len(text) != 3 or text[0] not in "45":
            raise ValueError("the code must be 4xx or 5xx")
        return int(text)
    raise ValueError(f"unknown action '{text}': a 4xx or 5xx code, drop, hang or ok")


def _seconds(delay):
    """A (min, max) range as one number when there is nothing to draw."""
    if isinstance(delay, tuple) and delay[0] == delay[1]:
        return delay[0]
    return delay


def delay_range(text, separator="-"):
    """``"N"`` or ``"MIN<separator>MAX"`` in seconds, as (min, max); ValueError if not."""
    low, _, high = text.partition(separator)
    low = float(low)
    high = float(high) if high.strip() else low
    if not 0 <= low <= high < float("inf"):
        raise ValueError(text)
    return low, high


def parse_rule(token):
    """``STAGE:ACTION[:N%][:delay=N|MIN-MAX]``, modifiers in any order.

    Raises ValueError with one line naming the rule and what is wrong.
    """
    stage_name, _, rest = token.partition(":")
    action_text, *modifiers = rest.split(":")
    odds = delay = None
    try:
        if not action_text:
            raise ValueError("expected STAGE:ACTION[:N%][:delay=N|MIN-MAX]")
        stage = STAGES.get(stage_name.lower())
        if stage is None:
            raise ValueError(f"unknown stage '{stage_name}': one of {', '.join(STAGES)}")
        action = _action(action_text)
        for modifier in modifiers:
            name, equals, value = modifier.partition("=")
            if modifier.endswith("%"):
                if odds is not None:
                    raise ValueError("the odds are given twice")
                if not _NUMBER.fullmatch(modifier[:-1]) or not 0 < float(modifier[:-1]) <= 100:
                    raise ValueError("the odds must be above 0% and at most 100%")
                odds = float(modifier[:-1]) / 100
            elif equals and name.lower() == "delay":
                if delay is not None:
                    raise ValueError("the delay is given twice")
                try:
                    delay = _seconds(delay_range(value))
                except ValueError:
                    raise ValueError(f"bad delay '{value}': N or MIN-MAX seconds, "
                                     "MIN <= MAX") from None
            else:
                raise ValueError(f"unknown modifier '{modifier}': N% or delay=N|MIN-MAX")
    except ValueError as error:
        raise ValueError(f"Invalid rule '{token}': {error}") from None
    return Rule(stage, action, 1.0 if odds is None else odds, delay, token, False,
                _answer(stage, action))


def parse_rules(text):
    """Comma-separated rules (spaces after the commas allowed); ``""`` is none."""
    return tuple(parse_rule(token.strip()) for token in text.split(",") if token.strip())


def tag(address):
    """The tag an envelope address carries, or None (issue 13, section 3).

    The local part is the tag, or ends in ``+TAG``; a tag is
    ``STAGE-ACTION[-delayN]``, in any case. Anything else is an ordinary address.
    """
    local, at, _ = address.rpartition("@")
    text = (local if at else address).rpartition("+")[2]
    return _tag(text) if "-" in text else None


@functools.lru_cache(maxsize=1024)  # built once per tag, not per recipient
def _tag(text):
    stage_name, action_text, *more = text.lower().split("-")
    stage = STAGES.get(stage_name)
    if stage is None or len(more) > 1:
        return None
    try:
        action = _action(action_text)
    except ValueError:
        return None
    delay = None
    if more:
        seconds = more[0].removeprefix("delay")
        if seconds == more[0] or not _NUMBER.fullmatch(seconds):
            return None
        delay = min(float(seconds), MAX_SWITCHED_DELAY)
    return Rule(stage, action, 1.0, delay, text, True, _answer(stage, action))


class Policy:
    """What to answer at each stage, and how long to wait before replies."""

    __slots__ = ("mode", "delay", "rules", "stage_rules", "draws", "limits", "asks",
                 "_replies")

    def __init__(self, mode="accept", delay=0, rules=(), draws=None, limits=None):
        """``delay``: seconds, or a (min, max) range to draw from for each reply.

        ``rules``: parsed Rules; ``draws``: the random.Random of every draw;
        ``limits``: the capacity.Limits shared by every listener, or None.
        """
        if mode not in MODES:
            raise ValueError(
                f"Unknown mode '{mode}': choose one of {', '.join(MODES)}"
            )
        # Per stage, its rules in the order given: an empty tuple is the common case.
        self.stage_rules = [()] * len(STAGE_NAMES)
        # Per stage, whether there is anything to decide: a rule or a limit.
        self.asks = [False] * len(STAGE_NAMES)
        self.limits = limits
        self.update(mode, delay, rules)
        self.draws = draws if draws is not None else random.Random()

    def update(self, mode, delay, rules):
        """Answer with a checked mode, delay and rules from now on, in place:
        sessions keep references to ``stage_rules`` and ``asks``, so open
        connections see the change at their next reply without a lookup of their own."""
        self.mode = mode
        self.delay = _seconds(delay)  # falsy when there is none
        self.rules = tuple(rules)
        self.stage_rules[:] = [tuple(rule for rule in self.rules if rule.stage == stage)
                               for stage in range(len(STAGE_NAMES))]
        limits = self.limits
        self.asks[:] = [bool(rules) or (limits is not None and stage in limits.stages)
                        for stage, rules in enumerate(self.stage_rules)]
        self._replies = _MODE_REPLIES[mode]

    def decide(self, stage, requested=None, session=None, address=None):
        """The limit, tag or rule that decides this reply, or None for the normal reply.

        Capacity limits come first (issue 13, section 4): no tag or rule lets
        a client past them; they read the ``session`` (its client, its
        sender) and the command's ``address``. ``requested`` is the message's
        own tag for ``stage``: it wins over the rules. Rules are tried in
        order, each drawing its odds; the first that fires decides.
        """
        limits = self.limits
        if limits is not None:
            refusal = limits.check(stage, session, address)
            if refusal is not None:
                return refusal
        fault = requested
        if fault is None:
            draw = self.draws.random
            for rule in self.stage_rules[stage]:
                if rule.odds >= 1 or draw() < rule.odds:
                    fault = rule
                    break
        if limits is not None and (fault is None or fault.answer is None):
            limits.passed(stage)  # no refusal: the command goes through
        return fault

    def pause(self, delay=None):
        """Seconds to wait before a reply: ``delay`` (drawn if a range), or the policy's."""
        if delay is None:
            delay = self.delay
        return self.draws.uniform(*delay) if isinstance(delay, tuple) else delay

    def end_of_data(self, switches=None):
        """The mode's reply to a complete message, and the pause before it.

        ``switches`` are the message's own X-Blackhole-Mode and -Delay, or
        None; the pause is None where the policy's delay applies.
        """
        choices, pause = self._replies, None
        if switches:
            mode, delay = switches.get("mode"), switches.get("delay")
            if mode:
                choices = _MODE_REPLIES[mode]
            if delay is not None:
                pause = self.pause(delay)
        return (choices[0] if len(choices) == 1 else self.draws.choice(choices)), pause


def switch(name, value, switches):
    """Record one X-Blackhole-* header in ``switches``; invalid values are ignored."""
    value = value.strip()
    if name == "mode":
        if value.lower() in MODES:
            switches["mode"] = value.lower()
    elif name == "delay":
        try:
            low, high = delay_range(value, ",")
        except ValueError:
            return
        switches["delay"] = _seconds((min(low, MAX_SWITCHED_DELAY), min(high, MAX_SWITCHED_DELAY)))
