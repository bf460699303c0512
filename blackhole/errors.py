"""The errors that end the blackhole command with one line on stderr."""


class BlackholeError(Exception):
    """A reason blackhole cannot do what it was asked; the message is for humans."""

    exit_code = 1


class UsageError(BlackholeError):
    """A missing or unknown action: usage is printed with the message."""

    exit_code = 2
