"""README.rst opens with the commands that work; CI runs the very same test command."""

from pathlib import Path

TOP = Path(__file__).resolve().parent.parent


def readme_commands():
    lines = (TOP / "README.rst").read_text().splitlines()
    return [line.strip() for line in lines[:12] if line.startswith("    ")]


def test_readme_opens_with_install_and_test_commands():
    run, test = readme_commands()
    assert "pip install '.[uvloop]'" in run and run.endswith("blackhole --port=2525 --ssl_port=4650 run")
    assert "pip install '.[test]'" in test and test.endswith("python -m pytest")


def test_ci_runs_the_readme_test_command():
    _, test = readme_commands()
    assert test in (TOP / ".ci" / "run").read_text().splitlines()
