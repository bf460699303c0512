"""SMTP AUTH mechanisms (RFC 4954) for testing senders: any credentials do.

A credential containing ``fail=`` is refused, any other accepted. Each
mechanism is a generator: it yields the challenges to send, is sent the
client's decoded responses, and returns the credentials to judge.
"""

import base64
import os
import time

from blackhole.replies import Reply


def plain(initial, mailname):
    """RFC 4616: "authzid NUL authcid NUL password", now or after an empty 334."""
    return initial if initial is not None else (yield b"")


def login(initial, mailname):
    """The LOGIN mechanism: user name, then password, each after its prompt."""
    user = initial if initial is not None else (yield b"Username:")
    password = yield b"Password:"
    return user + b"\0" + password


def cram_md5(initial, mailname):
    """RFC 2195: a challenge, then "user HMAC-MD5-hex" back (not checked)."""
    challenge = f"<{os.getpid()}.{time.time_ns()}.{os.urandom(4).hex()}@{mailname}>"
    response = yield challenge.encode()
    user, _, digest = response.rpartition(b" ")
    if not (user and len(digest) == 32 and set(digest.lower()) <= set(b"0123456789abcdef")):
        return b"fail=malformed"  # not a CRAM-MD5 answer: refuse it
    return response


MECHANISMS = {"PLAIN": plain, "LOGIN": login, "CRAM-MD5": cram_md5}


def initial_response(text):
    """RFC 4954 4: the optional initial response; "=" means an empty one."""
    if not text:
        return None
    return b"" if text == "=" else base64.b64decode(text, validate=True)


def challenge(text):
    """A 334 reply carrying ``text`` in base64."""
    return Reply(334, base64.b64encode(text).decode())


def verdict(credentials):
    """Accept anything but what asks to fail."""
    return b"fail=" not in credentials
