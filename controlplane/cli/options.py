"""Options shared by the operator commands, and small parsers for their values."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated

import typer

from controlplane.cli.errors import CliError

ServerOpt = Annotated[
    str | None, typer.Option("--server", help="Control plane API address HOST:PORT [env EDGEFLEET_SERVER]")
]
TokenOpt = Annotated[str | None, typer.Option("--token", help="Operator token [env EDGEFLEET_TOKEN]")]
CaOpt = Annotated[
    Path | None, typer.Option("--ca", help="The control plane's CA certificate (ca.crt) [env EDGEFLEET_CA]")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for machines instead of a table")]

_DURATION = re.compile(r"^\s*(\d+)\s*(s|m|h|d)?\s*$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}


def parse_duration(text: str) -> int:
    """'90s', '15m', '1h', '2d' or plain seconds → seconds. Raises CliError."""
    match = _DURATION.match(text)
    if not match:
        raise CliError(f"duration {text!r} is not understood: use e.g. 90s, 15m, 1h or 2d")
    return int(match.group(1)) * _UNIT_SECONDS[match.group(2)]


def parse_labels(text: str | None) -> dict[str, str]:
    """'k=v,k2=v2' → dict. Raises CliError on a malformed pair."""
    labels: dict[str, str] = {}
    if not text:
        return labels
    for pair in text.split(","):
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise CliError(f"label {pair!r} is not key=value")
        labels[key.strip()] = value.strip()
    return labels
