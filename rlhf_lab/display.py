"""Tables of samples for the notebooks. Model text is always escaped: it is data, never markup."""

from __future__ import annotations

import html
from numbers import Real


def _cell(value, float_format: str, max_chars: int) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, Real) and not isinstance(value, int):
        return float_format.format(value)
    text = str(value)
    if len(text) > max_chars:
        text = text[: max_chars - 1] + "…"
    return html.escape(text).replace("\n", "<br>")


def html_table(rows: list[dict], columns: list[str] | None = None, float_format: str = "{:+.2f}",
               max_chars: int = 400, caption: str | None = None) -> str:
    """An HTML table of dicts; every cell is escaped, so a sample holding <script> shows as text."""
    columns = columns or list(rows[0].keys()) if rows else []
    head = "".join(f"<th style='text-align:left'>{html.escape(str(c))}</th>" for c in columns)
    body = "".join(
        "<tr>" + "".join(f"<td style='text-align:left;vertical-align:top'>{_cell(r.get(c, ''), float_format, max_chars)}</td>"
                         for c in columns) + "</tr>"
        for r in rows)
    cap = f"<caption style='text-align:left'>{html.escape(caption)}</caption>" if caption else ""
    return f"<table>{cap}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def show_table(rows: list[dict], columns: list[str] | None = None, **kwargs) -> None:
    """Display `html_table` in a notebook (prints plain text outside one)."""
    try:
        from IPython import get_ipython
        from IPython.display import HTML, display
        if get_ipython() is not None:
            display(HTML(html_table(rows, columns, **kwargs)))
            return
    except ImportError:
        pass
    columns = columns or (list(rows[0].keys()) if rows else [])
    for r in rows:
        print(" | ".join(str(r.get(c, "")) for c in columns))
