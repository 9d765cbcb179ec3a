"""Rows to a fixed-width text table (what a benchmark prints and writes) or a Markdown one (the docs)."""

from __future__ import annotations


def table(
    head: tuple[str, ...], rows: list[tuple[str, ...]], *, markdown: bool = False, align: str | None = None
) -> str:
    """align: "l" or "r" per column (default: the first left, the others right, as figures are)."""
    align = align or "l" + "r" * (len(head) - 1)
    if markdown:
        rule = "|" + "|".join("---" if a == "l" else "---:" for a in align) + "|"
        return "\n".join([f"| {' | '.join(head)} |", rule, *(f"| {' | '.join(row)} |" for row in rows)])
    widths = [max(len(row[i]) for row in (head, *rows)) for i in range(len(head))]
    line = "  ".join(f"{{:<{w}}}" if a == "l" else f"{{:>{w}}}" for a, w in zip(align, widths))
    body = [line.format(*row).rstrip() for row in (head, *rows)]
    return "\n".join([body[0], "-" * max(map(len, body)), *body[1:]])


def span(pair: list[float] | tuple[float, float], digits: int) -> str:
    """A range as "low–high", or one figure when both ends print the same."""
    low, high = (f"{v:.{digits}f}" for v in pair)
    return low if low == high else f"{low}–{high}"
