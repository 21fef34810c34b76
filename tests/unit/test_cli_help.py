"""Every operator command explains itself: an example in its --help, and --json on every command that reads."""

from __future__ import annotations

import typer

from edgefleet.cli import app

READ_COMMANDS = {"list", "show", "status", "evidence", "explain", "latency", "health", "events"}


def _leaves(command, path=()):
    subcommands = getattr(command, "commands", None)
    if subcommands:
        for name, sub in subcommands.items():
            yield from _leaves(sub, (*path, name))
    else:
        yield " ".join(path), command


def test_every_command_has_an_example_in_its_help() -> None:
    leaves = dict(_leaves(typer.main.get_command(app)))
    assert len(leaves) > 30
    assert sorted(name for name, c in leaves.items() if "Example" not in (c.help or "")) == []


def test_every_read_command_takes_json() -> None:
    leaves = dict(_leaves(typer.main.get_command(app)))
    reads = {name: c for name, c in leaves.items() if name.split()[-1] in READ_COMMANDS}
    assert len(reads) >= 12
    without = sorted(name for name, c in reads.items() if not any("--json" in p.opts for p in c.params))
    assert without == []
