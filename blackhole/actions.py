"""What a Session asks of the I/O layer, besides replies to send.

``Session.receive`` returns a list: Replies to send in order, a Pause before
the item after it, and, last and at most once, one of the actions below.
MailState acts on the list as it comes and never polls the session's flags.
"""


class Action:
    """An instruction to the I/O layer, known by identity."""

    __slots__ = ("name",)

    def __init__(self, name):
        self.name = name

    def __repr__(self):
        return f"<{self.name}>"


class Pause:
    """Wait ``seconds`` before what follows (a delay, a rule's or the policy's)."""

    __slots__ = ("seconds",)

    def __init__(self, seconds):
        self.seconds = seconds

    def __eq__(self, other):
        return other.__class__ is Pause and other.seconds == self.seconds

    def __repr__(self):
        return f"<pause {self.seconds:g}s>"


DROP = Action("drop")  # close the connection at once, with no reply
HANG = Action("hang")  # no reply; read and discard until --timeout, then close
CLOSE = Action("close")  # the replies before it end the session: send them, then close
START_TLS = Action("start TLS")  # send the replies, switch to TLS, then call tls_started()
MORE = Action("more")  # input is left over: send these, then receive(b"") before reading
