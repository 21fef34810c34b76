"""Rendering for people (rich tables, local times with units) and machines (JSON)."""

from __future__ import annotations

import datetime as dt
import json
import sys
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp
from rich.console import Console
from rich.table import Table

# Piped output is not squeezed into 80 columns: tables stay one row per device.
_PIPE_WIDTH = 200


def stdout() -> Console:
    return Console(soft_wrap=True, width=None if sys.stdout.isatty() else _PIPE_WIDTH)


def stderr() -> Console:
    return Console(stderr=True, soft_wrap=True, width=None if sys.stderr.isatty() else _PIPE_WIDTH)


def emit_json(value: Any) -> None:
    if isinstance(value, Message):
        value = json_format.MessageToDict(value, preserving_proto_field_name=True)
    sys.stdout.write(json.dumps(value, indent=2, sort_keys=True) + "\n")


def message_dict(message: Message) -> dict:
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


def local_time(ts: Timestamp | None, has: bool = True) -> str:
    """A timestamp in the operator's local time zone, e.g. '2026-11-29 21:03:04 CET'."""
    if ts is None or not has:
        return "-"
    value = ts.ToDatetime(tzinfo=dt.UTC).astimezone()
    return value.strftime("%Y-%m-%d %H:%M:%S %Z")


def ago(ts: Timestamp, has: bool, now: dt.datetime | None = None) -> str:
    """'3 s ago', '5 min ago', '2 h ago', '4 d ago', or '-'."""
    if not has:
        return "-"
    now = now or dt.datetime.now(dt.UTC)
    seconds = max(0, int((now - ts.ToDatetime(tzinfo=dt.UTC)).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds // size} {unit} ago"
    return f"{seconds} s ago"


def gib(value: int) -> str:
    return f"{value / 2**30:.1f} GiB" if value else "-"


def table(title: str | None, columns: list[str], rows: list[list[str]]) -> Table:
    result = Table(title=title, header_style="bold")
    for column in columns:
        result.add_column(column)
    for row in rows:
        result.add_row(*row)
    return result


def human_size(value: int) -> str:
    """Bytes for people: '512 B', '3.2 KiB', '12.0 MiB', '1.5 GiB'."""
    if value < 1024:
        return f"{value} B"
    for unit, size in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if value >= size:
            return f"{value / size:.1f} {unit}"
    return f"{value} B"
