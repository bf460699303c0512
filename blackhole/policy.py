"""The response policy: how a message is answered, apart from how SMTP is spoken.

A mode is a row of end-of-data reply codes (one is drawn at random); the
delay is how long to wait before every reply.
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


class Policy:
    """What to answer at the end of data, and how long to wait before replies."""

    __slots__ = ("mode", "delay", "_replies")

    def __init__(self, mode="accept", delay=0):
        if mode not in MODES:
            raise ValueError(
                f"Unknown mode '{mode}': choose one of {', '.join(MODES)}"
            )
        self.mode = mode
        self.delay = delay
        self._replies = tuple(END_OF_DATA[code] for code in MODES[mode])

    def end_of_data(self):
        """The reply to a complete message."""
        replies = self._replies
        return replies[0] if len(replies) == 1 else random.choice(replies)
