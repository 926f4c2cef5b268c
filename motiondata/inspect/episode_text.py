"""``motiondata inspect STORE --episode ID`` for people: rich tables on a terminal, plain text when piped."""

from __future__ import annotations

from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table

ATTRS = ("source", "language", "fps", "length", "file", "cameras", "tasks", "anchors", "window_starts")


def _short(value: Any, limit: int = 120) -> str:
    text = ", ".join(map(str, value)) if isinstance(value, list) else str(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def print_episode(detail: dict[str, Any], console: Console) -> None:
    """The episode's attributes and fields; ``box=None`` (plain columns) when stdout is not a terminal."""
    style = box.SIMPLE if console.is_terminal else None
    head = Table(title=f"episode {detail['id']}", box=style, show_header=False)
    head.add_column("attr", style="bold")
    head.add_column("value")
    for key in ATTRS:
        if detail.get(key) is not None:
            head.add_row(key, _short(detail[key]))
    console.print(head)
    fields = Table(title="fields", box=style)
    for column in ("field", "axis", "dtype", "shape", "values"):
        fields.add_column(column)
    for name, desc in detail["fields"].items():
        fields.add_row(name, desc["axis"], desc["dtype"], str(tuple(desc["shape"])), desc["preview"])
    console.print(fields)
