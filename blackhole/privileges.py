"""Which account the workers run as, and the switch to it after binding."""

import grp
import os
import pwd
from typing import NamedTuple

from blackhole.errors import BlackholeError

DEFAULT = "blackhole"  # the 1.x default for --user and --group


class Account(NamedTuple):
    user: str
    uid: int
    gid: int


def resolve(user, group):
    """The account to switch to, or None to stay as we are.

    A name that does not exist is an error, except the 1.x default: without
    a ``blackhole`` account blackhole keeps running as the current user.
    """
    try:
        gid = grp.getgrnam(group).gr_gid
    except KeyError:
        if group != DEFAULT:
            raise BlackholeError(f"Group '{group}' does not exist") from None
        gid = None
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        if user != DEFAULT:
            raise BlackholeError(f"User '{user}' does not exist") from None
        return None
    if gid is None:
        gid = entry.pw_gid  # --user without a --group: the user's own group
    if os.geteuid() != 0:
        if (entry.pw_uid, gid) == (os.geteuid(), os.getegid()):
            return None
        raise BlackholeError(f"Cannot switch to user '{user}': not running as root")
    return Account(user, entry.pw_uid, gid)


def drop(account):
    """Supplementary groups, then the group, then the user: the other way fails."""
    os.initgroups(account.user, account.gid)
    os.setgid(account.gid)
    os.setuid(account.uid)
