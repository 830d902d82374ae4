"""The HTML report of a ``run_all.py`` run: notebooks, their figures and key numbers on one page."""

from __future__ import annotations

import html
import json
import os
from pathlib import Path

from nki_moe.paths import out_dir

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 72em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
td, th { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; font-size: 0.92em; }
th { background: #f2f2f2; } .ok { color: #1a7f37; } .failed { color: #cf222e; font-weight: bold; }
img { max-width: 100%; border: 1px solid #ddd; margin: 0.3em 0 1em; } code { font-size: 0.9em; }
"""


def _flatten(values: dict, prefix: str = "") -> list[tuple[str, object]]:
    """Nested result dicts as (dotted key, value) rows."""
    rows: list[tuple[str, object]] = []
    for key, value in values.items():
        name = f"{prefix}{key}"
        rows += _flatten(value, name + ".") if isinstance(value, dict) else [(name, value)]
    return rows


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return html.escape(json.dumps(value) if isinstance(value, list) else str(value))


def _notebook_html(executed: Path, target: Path) -> bool:
    """Render an executed notebook to HTML; False when it cannot be rendered."""
    try:
        import nbformat
        from nbconvert import HTMLExporter

        body, _ = HTMLExporter().from_notebook_node(nbformat.read(executed, as_version=4))
    except Exception:  # a broken notebook must not break the report of the others
        return False
    target.write_text(body)
    return True


def _ops_table() -> list[str]:
    """The op registry as a table: op, kernel versions, reference, notebook (linked), figures, tests."""
    from nki_moe.ops import OPS

    rows = [
        "<h2>Ops</h2><table><tr><th>op</th><th>kernels</th><th>reference</th><th>notebook</th>"
        "<th>figures</th><th>tests</th></tr>"
    ]
    for op in OPS.values():
        nb = Path(op.notebook).stem
        rows.append(
            f"<tr><td>{html.escape(op.name)}</td><td><code>{html.escape(op.module)}</code> "
            f"{', '.join(html.escape(v.name) for v in op.versions)}</td>"
            f"<td><code>{html.escape(op.reference.__module__)}.{html.escape(op.reference.__name__)}</code></td>"
            f"<td><a href='#{nb}'>{html.escape(nb)}</a></td><td>{html.escape(', '.join(op.figures))}</td>"
            f"<td>{html.escape(', '.join(op.tests))}</td></tr>"
        )
    return rows + ["</table>"]


def write_report(build: Path, run: dict) -> Path:
    """Write ``build/report.html`` for ``run`` (the dict of run_summary.json) and return its path."""
    figures, results = out_dir("figures"), out_dir("results")
    html_dir = build / "html"
    html_dir.mkdir(parents=True, exist_ok=True)
    mode = "smoke" if run.get("smoke") else "full"
    parts = [
        f"<html><head><meta charset='utf-8'><title>nki-moe report</title><style>{_STYLE}</style>"
        "</head><body><h1>nki-moe workbook report</h1>",
        f"<p>Run: {mode} size, backend <code>{html.escape(run.get('backend') or 'sim')}</code>, target "
        f"<code>{html.escape(run.get('target') or 'each notebook default')}</code>. Trainium times in "
        "this workbook are cost-model <b>estimates</b> unless a notebook says measured.</p>",
        "<h2>Notebooks</h2><table><tr><th>notebook</th><th>status</th><th>seconds</th>"
        "<th>executed</th><th>failing cell</th></tr>",
    ]
    for o in run["outcomes"]:
        executed = Path(o["executed"])
        page = html_dir / f"{o['notebook']}.html"
        link = (
            f"<a href='{os.path.relpath(page, build)}'>html</a>"
            if executed.exists() and _notebook_html(executed, page)
            else ""
        )
        parts.append(
            f"<tr><td><a href='#{o['notebook']}'>{o['notebook']}</a></td>"
            f"<td class='{o['status']}'>{o['status']}</td><td>{o['seconds']:.1f}</td>"
            f"<td>{link}</td><td>{html.escape(o.get('failed_cell', ''))}</td></tr>"
        )
    parts.append("</table>")
    parts += _ops_table()
    for name in run.get("skipped", []):
        parts.append(f"<p>not run: {html.escape(name)}</p>")
    for o in run["outcomes"]:
        number = o["notebook"][:2]
        parts.append(f"<h2 id='{o['notebook']}'>{html.escape(o['notebook'])}</h2>")
        for res in sorted(results.glob(f"{number}_*.json")):
            rows = _flatten(json.loads(res.read_text()))
            parts.append(
                f"<h3>Key numbers <code>{res.name}</code></h3><table>"
                + "".join(f"<tr><td>{html.escape(k)}</td><td>{_fmt(v)}</td></tr>" for k, v in rows)
                + "</table>"
            )
        for fig in sorted(figures.glob(f"{number}_*.png")):
            parts.append(f"<h3>{html.escape(fig.stem)}</h3><img src='{os.path.relpath(fig, build)}'>")
    parts.append("</body></html>")
    path = build / "report.html"
    path.write_text("\n".join(parts))
    return path
