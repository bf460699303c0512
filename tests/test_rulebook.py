"""The rulebook's parts without a server: a change checked as the options are,
and a policy changed in place under a session that is already open."""

import pytest

from blackhole.config import Settings
from blackhole.policy import Policy, parse_rules
from blackhole.protocol import Session
from blackhole.rulebook import delay_text, effective, listener_key, revised

START = {"mode": "accept", "delay": "0", "rules": ["mail:451:10%"],
         "listeners": {"127.0.0.1:2526": {"mode": "bounce"}}}
RUNNING = ["0.0.0.0:2525", "127.0.0.1:2526"]


def test_keys_left_out_keep_their_values_and_rules_given_replace_the_list():
    assert revised(START, {}, RUNNING) == START
    assert revised(START, {"delay": "1-3"}, RUNNING) == {**START, "delay": "1-3"}
    assert revised(START, {"rules": "rcpt:550:5%,  eod:451"}, RUNNING)["rules"] == [
        "rcpt:550:5%", "eod:451"]
    assert revised(START, {"rules": []}, RUNNING)["rules"] == []
    assert revised(START, {"rules": ""}, RUNNING)["rules"] == []
    assert revised(START, {"delay": 2}, RUNNING)["delay"] == "2"
    assert revised(START, {"delay": "0.5-0.50"}, RUNNING)["delay"] == "0.5"


def test_a_listener_named_gets_exactly_the_settings_given():
    assert revised(START, {"listeners": {":2525": {"rules": ["mail:421"]}}}, RUNNING)[
        "listeners"] == {"0.0.0.0:2525": {"rules": ["mail:421"]},
                         "127.0.0.1:2526": {"mode": "bounce"}}
    assert revised(START, {"listeners": {"127.0.0.1:2526": {}}}, RUNNING)["listeners"] == {}
    assert START["listeners"] == {"127.0.0.1:2526": {"mode": "bounce"}}  # never changed in place


@pytest.mark.parametrize("change, reason", [
    ({"listeners": []}, "listeners: an object of listener address -> its own settings"),
    ({"listeners": {"127.0.0.1:2526": "bounce"}},
     "listeners.127.0.0.1:2526: an object with mode, delay or rules"),
    ({"listeners": {"127.0.0.1:2526": {"port": 1}}},
     'listeners.127.0.0.1:2526: unknown key "port": one of mode, delay, rules'),
    ({"listeners": {"127.0.0.1:2526": {"delay": "x"}}},
     'listeners.127.0.0.1:2526.delay: "x" is not a string of N or MIN-MAX seconds, MIN <= MAX'),
    ({"listeners": {"127.0.0.1:2526": {"rules": "mail:999"}}},
     "listeners.127.0.0.1:2526.rules: Invalid rule 'mail:999': the code must be 4xx or 5xx"),
    ({"delay": "nan"}, 'delay: "nan" is not a string of N or MIN-MAX seconds, MIN <= MAX'),
    ({"delay": None}, "delay: null is not a string"),
    ({"mode": None}, "mode: null is not one of accept"),
])
def test_a_bad_change_names_its_key(change, reason):
    with pytest.raises(ValueError) as refused:
        revised(START, change, RUNNING)
    assert str(refused.value).startswith(reason)


def test_delays_and_addresses_as_the_options_write_them():
    assert [delay_text(d) for d in (0, 2, 1.5, (1, 3), (2.0, 2.0))] == ["0", "2", "1.5", "1-3",
                                                                         "2"]
    assert [listener_key(a) for a in (":25", "[::1]:25", "127.0.0.1:25")] == [
        "0.0.0.0:25", "[::1]:25", "127.0.0.1:25"]


def test_effective_settings_are_the_listeners_own_over_the_global_ones():
    chosen = effective(revised(START, {"listeners": {":2525": {"delay": "1-2"}}}, RUNNING))
    assert chosen[None][:2] == ("accept", (0.0, 0.0))
    assert chosen["127.0.0.1:2526"][:2] == ("bounce", (0.0, 0.0))
    assert chosen["0.0.0.0:2525"][:2] == ("accept", (1.0, 2.0))
    assert [rule.token for rule in chosen["0.0.0.0:2525"][2]] == ["mail:451:10%"]


def test_an_open_session_answers_by_the_policy_as_changed_in_place():
    policy = Policy("accept", 0, parse_rules(""))
    session = Session(Settings(mailname="test.example"), policy)
    session.connected()
    assert [r.code for r in session.receive(b"EHLO c\r\nMAIL FROM:<a@example.com>\r\n")] == [
        250, 250]
    policy.update("offline", (0, 0), parse_rules("rcpt:550"))
    replies = session.receive(b"RCPT TO:<b@example.com>\r\n")
    assert [r.code for r in replies] == [550]
    policy.update("offline", 0, ())
    replies = session.receive(b"RCPT TO:<b@example.com>\r\nDATA\r\nx\r\n.\r\n")
    assert [r.code for r in replies] == [250, 354, 521]
