"""Rendering like LXD's client: box tables, csv, json, yaml, sizes and dates."""

from __future__ import annotations

import io
import sys
from collections.abc import Sequence

TYPE_CHECKING = False  # importing typing costs 2-4 ms of start-up
if TYPE_CHECKING:
    from datetime import datetime
    from typing import Any


FORMATS = ("table", "csv", "json", "yaml", "compact")


def _pad_center(text: str, width: int) -> str:
    gap = width - len(text)
    left = gap // 2
    return " " * left + text + " " * (gap - left)


def render_table(headers: Sequence[str], rows: Sequence[Sequence[str]],
                 compact: bool = False) -> str:
    """A table as ``lxc list`` prints it: ``+---+`` borders, centred headers, a line between
    rows, cells left aligned; a cell with newlines spans several lines."""
    split_rows = [[str(c).split("\n") for c in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in split_rows:
        for i, lines in enumerate(row):
            widths[i] = max(widths[i], *(len(line) for line in lines))
    if compact:
        out = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
        for row in split_rows:
            for n in range(max((len(c) for c in row), default=1)):
                cells = [c[n] if n < len(c) else "" for c in row]
                out.append("  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True))
                           .rstrip())
        return "\n".join(out) + "\n"
    sep = "+" + "+".join("-" * (w + 2) for w in widths) + "+"
    out = [sep, "|" + "|".join(f" {_pad_center(h, w)} " for h, w in
                               zip(headers, widths, strict=True)) + "|", sep]
    for row in split_rows:
        height = max((len(c) for c in row), default=1)
        for n in range(height):
            cells = [c[n] if n < len(c) else "" for c in row]
            out.append("|" + "|".join(f" {c.ljust(w)} " for c, w in
                                      zip(cells, widths, strict=True)) + "|")
        out.append(sep)
    return "\n".join(out) + "\n"


def render_csv(rows: Sequence[Sequence[str]]) -> str:
    """Rows as CSV (no header, like ``lxc list --format csv``)."""
    buf = io.StringIO()
    import csv  # noqa: PLC0415 - the CLI imports only what a command needs

    writer = csv.writer(buf, lineterminator="\n")
    for row in rows:
        writer.writerow(row)
    return buf.getvalue()


def render_json(data: Any) -> str:
    """Compact JSON on one line, as the LXD client prints it."""
    import json  # noqa: PLC0415

    return json.dumps(data, separators=(",", ":")) + "\n"


def render_yaml(data: Any) -> str:
    """YAML, keys in insertion order."""
    import yaml  # noqa: PLC0415 - 15 ms to import: only when yaml is shown

    return yaml.safe_dump(data, sort_keys=False, default_flow_style=False, allow_unicode=True)


def emit(fmt: str, headers: Sequence[str], rows: Sequence[Sequence[str]], data: Any) -> None:
    """Print ``rows`` as a table/csv, or ``data`` as json/yaml."""
    if fmt == "json":
        text = render_json(data)
    elif fmt == "yaml":
        text = render_yaml(data)
    elif fmt == "csv":
        text = render_csv(rows)
    else:
        text = render_table(headers, rows, compact=fmt == "compact")
    sys.stdout.write(text)


def size_iec(n: int | str, precision: int = 2) -> str:
    """A byte count like LXD's ``GetByteSizeStringIEC``: ``512B``, ``1.23MiB``."""
    try:
        value = float(n)
    except (TypeError, ValueError):
        return str(n)
    if value < 1024:
        return f"{int(value)}B"
    for unit in ("KiB", "MiB", "GiB", "TiB", "PiB", "EiB"):
        value /= 1024
        if value < 1024 or unit == "EiB":
            return f"{value:.{precision}f}{unit}"
    return f"{value:.{precision}f}EiB"  # pragma: no cover


def parse_time(text: str) -> datetime | None:
    """Parse an RFC 3339 timestamp (any fraction length); None when empty or invalid."""
    import re  # noqa: PLC0415 - re and datetime: 7 ms of start-up, only for dates
    from datetime import UTC, datetime  # noqa: PLC0415

    text = text.strip()
    if not text:
        return None
    text = re.sub(r"\.(\d+)", lambda m: "." + m.group(1)[:6].ljust(6, "0"), text, count=1)
    if text.endswith("Z"):
        text = text[:-1] + "+00:00"
    try:
        dt = datetime.fromisoformat(text)
    except ValueError:
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.astimezone(UTC)


def fmt_time(text: str) -> str:
    """``2026/11/23 10:49 UTC`` as ``lxc info`` prints times (empty when unknown)."""
    dt = parse_time(text)
    if dt is None or dt.year <= 1970:
        return ""
    return dt.strftime("%Y/%m/%d %H:%M UTC")


def fmt_upload_date(text: str) -> str:
    """``Nov 23, 2026 at 10:49am (UTC)`` as ``lxc image list`` prints dates."""
    dt = parse_time(text)
    if dt is None:
        return ""
    hour = dt.hour % 12 or 12
    ampm = "am" if dt.hour < 12 else "pm"
    return f"{dt.strftime('%b')} {dt.day}, {dt.year} at {hour}:{dt.minute:02d}{ampm} (UTC)"


def natural_key(text: str) -> list[Any]:
    """Sort key putting ``c2`` before ``c10`` (runs of digits compare as numbers; split by
    hand: ``re`` is 5 ms of the start of ``lxfs list``)."""
    parts = []
    start = 0
    for i in range(1, len(text) + 1):
        if i == len(text) or text[i].isdecimal() != text[start].isdecimal():
            parts.append(text[start:i])
            start = i
    return [(0, int(p), "") if p.isdigit() else (1, 0, p) for p in parts if p]
