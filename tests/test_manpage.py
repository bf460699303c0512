"""blackhole.1: made from the tables --help prints, committed as made, installed where man finds it."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

from blackhole import cli, daemon, options

TOP = Path(__file__).resolve().parent.parent
PAGE = TOP / "blackhole.1"


def test_the_committed_page_is_what_the_tables_make_now():
    made = subprocess.run([sys.executable, "-m", "blackhole.manpage"], cwd=TOP,
                          capture_output=True, text=True, check=True).stdout
    assert PAGE.read_text() == made, "run: python -m blackhole.manpage > blackhole.1"


def test_man_shows_every_action_and_option():
    shown = subprocess.run(["man", "-l", str(PAGE)], capture_output=True, text=True, check=True,
                           env=dict(os.environ, MANWIDTH="300", LC_ALL="C")).stdout
    lines = [" ".join(line.split()) for line in shown.splitlines()]
    for name, (_, text) in cli.ACTIONS.items():
        assert f"{name} {text}" in lines or (name in lines and text in lines), name
    for _, name, kind, _, _ in options.OPTIONS:
        assert f"--{name}={options._METAVARS[kind]}" in lines, name
    assert f"(SIGKILL after {daemon.STOP_TIMEOUT} s)" in shown


def test_setuptools_installs_it_where_man_finds_it(tmp_path):
    """The install step pip runs for data_files, into a prefix of our own."""
    source = tmp_path / "source"
    (source / "blackhole").mkdir(parents=True)
    for name in ("setup.py", "setup.cfg", "pyproject.toml", "README.rst", "blackhole.1",
                 "blackhole/__init__.py"):
        shutil.copy(TOP / name, source / name)
    prefix = tmp_path / "prefix"
    (prefix / "bin").mkdir(parents=True)  # man looks beside the bin directories on PATH
    subprocess.run([sys.executable, "-W", "ignore", "setup.py", "-q", "install_data",
                    f"--install-dir={prefix}"], cwd=source, capture_output=True, check=True)
    env = {key: value for key, value in os.environ.items() if key != "MANPATH"}
    found = subprocess.run(["man", "-w", "blackhole"], capture_output=True, text=True,
                           env=dict(env, PATH=f"{prefix / 'bin'}:/usr/bin:/bin"))
    assert found.stdout.strip() == str(prefix / "share" / "man" / "man1" / "blackhole.1")
    assert (prefix / "share" / "man" / "man1" / "blackhole.1").read_text() == PAGE.read_text()
