"""scripts/churn for 30 s: rules changed every second under 20 senders, every reply reconciled."""

import re
import subprocess
import sys
from pathlib import Path

CHURN = Path(__file__).resolve().parent.parent / "scripts" / "churn"


def test_rules_changed_every_second_under_20_senders_lose_nothing():
    result = subprocess.run([sys.executable, str(CHURN), "--seconds=30", "--senders=20",
                             "--workers=2"], capture_output=True, text=True, timeout=180)
    assert (result.returncode, result.stderr) == (0, ""), result.stdout
    last = result.stdout.splitlines()[-1]
    counted = re.fullmatch(r"churn: OK: (\d+) changes, ([\d,]+) connections, ([\d,]+) messages, "
                           r"([\d,]+) refusals and ([\d,]+) drops, all counted alike on both "
                           r"sides", last)
    assert counted, result.stdout
    changes, *rest = (int(group.replace(",", "")) for group in counted.groups())
    assert changes == 30 and all(rest), last  # every kind of outcome happened
