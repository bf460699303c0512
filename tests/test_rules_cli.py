"""Rules through the blackhole command as a real process: options, listeners, seed, log, metrics."""

import os
import re
import signal
import smtplib
import socket
import time

import pytest

from blackhole.process import workers_of
from tests.conftest import HOST, blackhole, free_port, wait_for_port
from tests.test_cli import one_clear_line
from tests.test_logging import LINE, stopped_log
from tests.test_metrics import diff, quiet_scrape, scrape


@pytest.mark.parametrize("args, message", [
    (["--rules=rcpt:650"], "Invalid rule 'rcpt:650': the code must be 4xx or 5xx"),
    (["--rules=rcpt:550:10%, lunch:550"],
     "Invalid rule 'lunch:550': unknown stage 'lunch': one of connect, helo, ehlo, starttls, "
     "auth, mail, rcpt, data, bdat, eod, rset, noop, vrfy, expn, etrn, help, quit"),
    (["--rules=eod:451:delay=5-1"],
     "Invalid rule 'eod:451:delay=5-1': bad delay '5-1': N or MIN-MAX seconds, MIN <= MAX"),
    (["--rules=data:drop:0%"],
     "Invalid rule 'data:drop:0%': the odds must be above 0% and at most 100%"),
    (["--rules=mail:451:1%:2%"], "Invalid rule 'mail:451:1%:2%': the odds are given twice"),
    (["--listen={h}:{p} rule=quit:drop rule=quit:bounce"],
     "Invalid rule 'quit:bounce': unknown action 'bounce': a 4xx or 5xx code, drop, hang or ok"),
    (["--seed=abc"], "Invalid value for seed: 'abc' is not an integer"),
])
def test_bad_rules_get_one_line_and_exit_1(tmp_path, args, message):
    port = free_port()
    args = [arg.format(h=HOST, p=port) for arg in args]
    where = [] if args[0].startswith("--listen") else [f"--host={HOST}", f"--port={port}"]
    result = blackhole(*where, f"--ssl_port={free_port()}", f"--log={tmp_path}/log", *args,
                       "run")
    assert result.returncode == 1
    assert one_clear_line(result) == f"blackhole: {message}"


def test_a_bad_rule_in_the_config_file_is_one_line(tmp_path):
    conf = tmp_path / "blackhole.conf"
    conf.write_text('rules="rcpt:550, rcpt:hang:delay=x"\n')
    result = blackhole(f"--conf={conf}", "run")
    assert result.returncode == 1
    assert one_clear_line(result) == (
        "blackhole: Invalid rule 'rcpt:hang:delay=x': bad delay 'x': N or MIN-MAX seconds, "
        "MIN <= MAX")


def send(port):
    with smtplib.SMTP(HOST, port, timeout=10) as smtp:
        smtp.sendmail("a@example.com", ["b@example.com"], b"Subject: x\r\n\r\nbody\r\n")


def test_rules_in_the_config_file_override_the_command_line(daemon, tmp_path):
    port = free_port()
    conf = tmp_path / "blackhole.conf"
    conf.write_text(f'port={port}\nssl=False\nrules="mail:451"\n')
    daemon(f"--conf={conf}", "--rules=rcpt:550", port=port)
    with pytest.raises(smtplib.SMTPSenderRefused):
        send(port)


def test_an_empty_rule_text_is_no_rules(daemon):
    _, port = daemon("--rules=")
    send(port)


def test_a_listener_with_rules_uses_only_its_own(daemon):
    plain, own = free_port(), free_port()
    process, _ = daemon("--rules=rcpt:550", f"--listen={HOST}:{plain}, "
                        f"{HOST}:{own} mode=offline rule=rcpt:ok rule=eod:452:delay=0.1",
                        port=plain)
    with pytest.raises(smtplib.SMTPRecipientsRefused):
        send(plain)
    with pytest.raises(smtplib.SMTPDataError) as refused:
        send(own)
    assert refused.value.smtp_code == 452  # the rule, over the listener's mode
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=20)
    assert f"Listening on {HOST}:{plain}, mode accept, rules rcpt:550\n" in stderr
    assert (f"Listening on {HOST}:{own}, mode offline, rules rcpt:ok eod:452:delay=0.1\n"
            in stderr)


def answers(port, count=40):
    """The codes of ``count`` RCPTs in one session, pipelined."""
    with socket.create_connection((HOST, port), timeout=10) as sock:
        sock.sendall(b"EHLO c.example\r\nMAIL FROM:<a@example.com>\r\n"
                     + b"RCPT TO:<b@example.com>\r\n" * count + b"QUIT\r\n")
        with sock.makefile("rb") as replies:
            lines = [line for line in replies if line[3:4] == b" "]
    return [int(line[:3]) for line in lines[3:-1]]


def test_a_seed_repeats_a_run_exactly(daemon):
    runs = []
    for seed in (7, 7, 8):
        process, port = daemon(f"--seed={seed}", "--workers=1", "--mode=random",
                               "--rules=rcpt:550:50%, rcpt:451:delay=0-0.01:50%")
        # The fixture's readiness probe drew nothing: a greeting is no draw.
        runs.append(answers(port))
        with smtplib.SMTP(HOST, port, timeout=10) as smtp:
            smtp.ehlo()
            smtp.mail("a@example.com")
            smtp.rcpt("rcpt-ok@example.com")
            runs[-1].append(smtp.data(b"Subject: x\r\n\r\nbody\r\n")[0])
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=20)
    assert {250, 451, 550} <= set(runs[0])
    assert runs[0] == runs[1]
    assert runs[0] != runs[2]


def test_the_log_names_the_rule_or_tag_that_decided(daemon, tmp_path):
    process, port = daemon("--debug", "--rules=rcpt:553")
    with smtplib.SMTP(HOST, port, timeout=10) as smtp:
        smtp.ehlo()
        smtp.mail("a@example.com")
        smtp.rcpt("b@example.com")
        smtp.rcpt("rcpt-550@example.com")
    messages = [LINE.match(line).group(1) for line in stopped_log(process, tmp_path)]
    text = "\n".join(messages)
    for recv, decided, sent in (
        ("rcpt TO:<b@example.com>", "RULE: rcpt:553",
         "SEND: 553 5.1.3 Requested action not taken: mailbox name not allowed"),
        ("rcpt TO:<rcpt-550@example.com>", "TAG: rcpt-550",
         "SEND: 550 5.1.1 Recipient address rejected: mailbox unavailable"),
    ):
        assert re.search(rf"^\[(\w+)\] RECV: {re.escape(recv)}\n\[\1\] {decided}\n"
                         rf"\[\1\] {sent}$", text, re.MULTILINE), recv


def test_faults_are_counted_by_stage_and_action(daemon):
    metrics_port = free_port()
    process, port = daemon(f"--metrics_port={metrics_port}",
                           "--rules=rcpt:550, noop:ok:delay=0, data:drop")
    wait_for_port(metrics_port, process)
    before = quiet_scrape(metrics_port)
    with smtplib.SMTP(HOST, port, timeout=10) as smtp:
        smtp.ehlo()
        smtp.noop()
        smtp.noop()
        smtp.mail("a@example.com")
        smtp.rcpt("b@example.com")
        smtp.rcpt("c@example.com")
        smtp.rcpt("c+rcpt-ok@example.com")
        smtp.rcpt("d+rcpt-451@example.com")
        with pytest.raises(smtplib.SMTPServerDisconnected):
            smtp.data(b"Subject: x\r\n\r\nbody\r\n")
    time.sleep(0.2)
    after = scrape(metrics_port)
    counted = {labels: value - before.get((name, labels), 0)
               for (name, labels), value in after.items() if name == "blackhole_faults_total"}
    assert {dict(labels)["stage"] + ":" + dict(labels)["action"]: n
            for labels, n in counted.items() if n} == {
        "rcpt:550": 2, "rcpt:ok": 1, "rcpt:451": 1, "noop:ok": 2, "data:drop": 1}
    assert diff(before, after, "blackhole_replies_total", code="550") == 2


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


def test_a_hang_costs_no_cpu_and_ends_silently_after_the_timeout(daemon):
    process, port = daemon("--timeout=2", "--rules=noop:hang", "--workers=1")
    with socket.create_connection((HOST, port), timeout=10) as sock:
        sock.sendall(b"EHLO c.example\r\n")
        received = b""
        while not (b"\r\n250 " in received and received.endswith(b"\r\n")):  # EHLO's end
            received += sock.recv(4096)
        worker, = workers_of(process.pid)  # forked by now: it has answered
        sock.sendall(b"NOOP\r\n")
        hung = time.monotonic()
        cpu = cpu_seconds(worker)
        while time.monotonic() - hung < 1.5:  # read and thrown away
            sock.sendall(b"x" * 1000 + b"\r\n")
            time.sleep(0.01)
        assert cpu_seconds(worker) - cpu < 0.3
        assert sock.recv(100) == b""  # closed without a word: no 421
        assert 1.9 < time.monotonic() - hung < 3.5


def test_a_stop_ends_a_hang_at_once(daemon):
    process, port = daemon("--timeout=60", "--rules=noop:hang")
    with socket.create_connection((HOST, port), timeout=10) as sock:
        sock.recv(100)
        sock.sendall(b"NOOP\r\n")
        time.sleep(0.2)
        stopping = time.monotonic()
        process.send_signal(signal.SIGTERM)
        assert sock.recv(100) == b""
        process.communicate(timeout=20)
        assert time.monotonic() - stopping < 5  # not the ten seconds' grace
