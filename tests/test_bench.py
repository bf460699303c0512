"""scripts/bench runs end to end on tiny numbers (the benchmark itself is not a test)."""

import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "scripts" / "bench"


def test_bench_runs_end_to_end_with_its_own_client():
    result = subprocess.run([sys.executable, str(BENCH), "--quick", "--client=builtin"],
                            capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr
    assert "load generator: built-in asyncio client" in result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split()[:2] == ["scenario", "server"]
    for scenario in ("1 KiB, one per connection", "1 KiB, many per session",
                     "100 KiB, many per session", "idle connections"):
        row = next(line for line in lines if line.startswith(scenario))
        assert "blackhole" in row
    assert "100 held" in result.stdout
