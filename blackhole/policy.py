"""The response policy: how a message is answered, apart from how SMTP is spoken.

A mode is a row of end-of-data reply codes (one is drawn at random); a delay
is how long to wait before a reply, fixed or drawn from a range. A listener
may have its own policy; a message may switch mode and delay for itself with
X-Blackhole-Mode and X-Blackhole-Delay headers.
"""

import random

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
MAX_SWITCHED_DELAY = 60  # seconds a message may ask for


def delay_range(text, separator="-"):
    """``"N"`` or ``"MIN<separator>MAX"`` in seconds, as (min, max); ValueError if not."""
    low, _, high = text.partition(separator)
    low = float(low)
    high = float(high) if high.strip() else low
    if not 0 <= low <= high < float("inf"):
        raise ValueError(text)
    return low, high


class Policy:
    """What to answer at the end of data, and how long to wait before replies."""

    __slots__ = ("mode", "delay", "_replies")

    def __init__(self, mode="accept", delay=0):
        """``delay``: seconds, or a (min, max) range to draw from for each reply."""
        if mode not in MODES:
            raise ValueError(
                f"Unknown mode '{mode}': choose one of {', '.join(MODES)}"
            )
        self.mode = mode
        self.delay = delay if delay != (0, 0) else 0  # falsy when there is none
        self._replies = tuple(END_OF_DATA[code] for code in MODES[mode])

    def pause(self):
        """Seconds to wait before the next reply."""
        delay = self.delay
        return random.uniform(*delay) if isinstance(delay, tuple) else delay

    def end_of_data(self, switches=None):
        """The reply to a complete message, and the pause before it.

        ``switches`` are the message's own X-Blackhole-Mode and -Delay, or None.
        """
        replies, pause = self._replies, None
        if switches:
            mode, delay = switches.get("mode"), switches.get("delay")
            if mode:
                replies = tuple(END_OF_DATA[code] for code in MODES[mode])
            if delay:
                pause = random.uniform(*delay)
        reply = replies[0] if len(replies) == 1 else random.choice(replies)
        return reply, self.pause() if pause is None else pause


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
        switches["delay"] = (min(low, MAX_SWITCHED_DELAY), min(high, MAX_SWITCHED_DELAY))
