"""scripts/soak end to end on a small number, and its reconciliation (the soak itself is not a test)."""

import importlib.util
import subprocess
import sys
from importlib.machinery import SourceFileLoader
from pathlib import Path

SOAK = Path(__file__).resolve().parent.parent / "scripts" / "soak"
ROWS = ("messages answered 250", "recipients", "message octets", "connections",
        "summary: sessions", "summary: accepted", "summary: octets")


def soak_module():
    loader = SourceFileLoader("soak", str(SOAK))
    module = importlib.util.module_from_spec(importlib.util.spec_from_loader("soak", loader))
    loader.exec_module(module)
    return module


def test_soak_counts_equal_on_both_sides_with_two_workers():
    result = subprocess.run([sys.executable, str(SOAK), "--messages=2000", "--workers=2",
                             "--connections=10", "--per-session=50"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    for what in ROWS:
        row = next(line for line in lines if line.startswith(what))
        client, server, verdict = row[len(what):].split()
        assert client == server and verdict == "equal", row
    assert next(line for line in lines if line.startswith(ROWS[0])).split()[3] == "2,000"
    assert lines[-1].startswith("soak: OK: 2,000 messages")
    assert "worker RSS" in result.stdout


def test_a_message_the_server_did_not_count_is_a_difference():
    soak = soak_module()
    load = soak.Load(messages=0, per_session=1, size=100)
    octets = 3 * len(load.content)
    load.codes["250"], load.recipients, load.octets, load.connections = 3, 3, octets, 1
    server = {'blackhole_messages_total{code="250"}': 2.0, "blackhole_recipients_total": 3.0,
              "blackhole_message_bytes_total": float(octets),
              "blackhole_connections_opened_total": 1.0}
    summary = f"Summary: 1 sessions, 2 messages accepted, refused by code: none, {octets} bytes"
    rows = soak.reconcile(load, {}, server, summary)
    assert [what for what, client, server in rows if client != server] == [
        "messages answered 250", "summary: accepted"]
