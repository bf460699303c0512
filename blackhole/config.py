"""What a running server knows, fixed once at startup and shared by every session."""

import dataclasses
import socket

from blackhole import __version__, replies
from blackhole.commands import ehlo_keywords

MAILNAME_FILE = "/etc/mailname"


def mailname(path=MAILNAME_FILE):
    """The name to greet with: /etc/mailname's first line, else the FQDN (as 1.x)."""
    try:
        with open(path, encoding="utf-8") as lines:
            name = lines.readline().strip()
    except (OSError, UnicodeDecodeError):
        name = ""
    return name or socket.getfqdn()


@dataclasses.dataclass(frozen=True)
class Settings:
    """Limits and names every session reads; the replies derived from them."""

    mailname: str = dataclasses.field(default_factory=mailname)
    message_size_limit: int = 512000  # octets; 0 means no limit (RFC 1870)
    max_recipients: int = 1000
    timeout: float = 60  # idle seconds before 421 4.4.2
    debug: bool = False
    dynamic_switch: bool = True  # X-Blackhole-Mode/-Delay headers steer a message

    greeting: replies.Reply = dataclasses.field(init=False, repr=False)
    helo: replies.Reply = dataclasses.field(init=False, repr=False)
    ehlo: replies.Reply = dataclasses.field(init=False, repr=False)
    ehlo_starttls: replies.Reply = dataclasses.field(init=False, repr=False)

    def __post_init__(self):
        derived = {
            "greeting": replies.greeting(self.mailname, __version__),
            "helo": replies.Reply(250, self.mailname),
            "ehlo": replies.Reply(250, self.mailname, *ehlo_keywords(self, False)),
            "ehlo_starttls": replies.Reply(250, self.mailname, *ehlo_keywords(self, True)),
        }
        for name, value in derived.items():
            object.__setattr__(self, name, value)
