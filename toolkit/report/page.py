"""The offline report: one self-contained HTML file (PNGs inlined) plus the PNGs beside it.

Self-contained so it can be mailed, attached to a ticket or opened from a laptop
without the sweep directory. The page checks its own images on load and records
broken ones and script errors on <body> (data-broken-images / data-js-errors),
which is how a headless browser test tells a page that renders from one that does not.
"""

from __future__ import annotations

import base64
import html
import statistics
from pathlib import Path
from typing import Any

from toolkit.report.figures import best_per_size_bars, cost_panels, metric_vs_size
from toolkit.report.collect import best_per_size

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:1100px;color:#1d1d1f}
h1{font-size:1.6rem;margin-bottom:.2rem}h2{font-size:1.2rem;margin-top:2rem;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:.85rem;margin:.5rem 0}th,td{border:1px solid #ddd;padding:.25rem .5rem;
text-align:right}th{background:#f4f4f6}td:first-child,th:first-child{text-align:left}.muted{color:#666}
img{max-width:100%;border:1px solid #eee;margin:.4rem 0}.grid{display:grid;grid-template-columns:1fr 1fr;gap:.5rem}
"""
_CHECK = """
window.addEventListener('error',function(){var b=document.body;b.dataset.jsErrors=(+b.dataset.jsErrors||0)+1;});
window.addEventListener('load',function(){var n=0;for(var i of document.images){if(!i.complete||i.naturalWidth===0)n++;}
document.body.dataset.brokenImages=n;document.body.dataset.images=document.images.length;});
"""


def _fmt(v: Any, digits: int = 3) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:.{digits}f}" if abs(v) < 1e4 else f"{v:.3g}"
    return html.escape(str(v))


def _table(rows: list[dict[str, Any]], cols: list[tuple[str, str]]) -> str:
    head = "".join(f"<th>{html.escape(t)}</th>" for _, t in cols)
    body = "".join("<tr>" + "".join(f"<td>{_fmt(r.get(k))}</td>" for k, _ in cols) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def per_model(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Speed, memory and cost per model: medians over its trials, device-hours summed."""
    out = []
    for m in sorted({str(r["model"]) for r in rows}):
        mine = [r for r in rows if str(r["model"]) == m]

        def med(key: str) -> float | None:
            vals = [r[key] for r in mine if r.get(key) is not None]
            return statistics.median(vals) if vals else None

        hours = [r["device_hours"] for r in mine if r.get("device_hours") is not None]
        out.append({"model": m, "trials": len(mine), "step_seconds": med("step_seconds"),
                    "tokens_per_s": med("tokens_per_s"), "peak_memory_gb": med("peak_memory_gb"),
                    "fit_seconds": med("fit_seconds"), "device_hours": sum(hours) if hours else None,
                    "device_kind": next((r["device_kind"] for r in mine if r.get("device_kind")), None)})
    return out


def write_report(rows: list[dict[str, Any]], facts: dict[str, Any], out: Path, *,
                 price_per_device_hour: float | None = None) -> Path:
    """Write the PNGs and report.html into `out` (an existing, empty directory); returns the HTML path."""
    best = best_per_size(rows, facts["metric"], facts.get("mode", "max"))
    models = per_model(rows)
    if price_per_device_hour is not None:
        for m in models:
            m["cost"] = m["device_hours"] * price_per_device_hour if m["device_hours"] is not None else None
    pngs = [metric_vs_size(rows, best, "test_f1", out / "f1_vs_train_size.png"),
            metric_vs_size(rows, best, "test_roc_auc", out / "roc_auc_vs_train_size.png"),
            best_per_size_bars(best, "test_f1", out / "best_f1_per_size.png"),
            best_per_size_bars(best, "test_roc_auc", out / "best_roc_auc_per_size.png"),
            cost_panels(models, out / "speed_memory_cost.png")]
    img = {p.name: base64.b64encode(p.read_bytes()).decode() for p in pngs}

    def image(name: str, alt: str) -> str:
        return f'<img src="data:image/png;base64,{img[name]}" alt="{html.escape(alt)}">'

    for r in rows:
        r["swept"] = ", ".join(f"{k.split('.')[-1]}={v}" for k, v in r["params"].items()) or "-"
    metric_cols = [("test_f1", "test F1"), ("test_roc_auc", "ROC-AUC"), ("test_pr_auc", "PR-AUC"),
                   ("test_balanced_accuracy", "bal. acc."), ("test_share_predicted_positive", "share pos.")]
    cost_cols = [("model", "model"), ("trials", "trials"), ("step_seconds", "s / step"),
                 ("tokens_per_s", "tokens / s"), ("peak_memory_gb", "peak memory GB"),
                 ("fit_seconds", "fit s (median)"), ("device_hours", "device-hours"), ("device_kind", "device")]
    if price_per_device_hour is not None:
        cost_cols.append(("cost", f"cost @ {price_per_device_hour}/device-hour"))
    sizes = sorted({r["train_size"] for r in rows if r["train_size"] is not None})
    title = f"Model-size comparison: {facts['name']}"
    body = f"""
<h1>{html.escape(title)}</h1>
<p class="muted">{len(rows)} trials of {len(models)} model(s) ({html.escape(', '.join(m['model'] for m in models))})
at training sizes {html.escape(', '.join(map(str, sizes)))}. Source: {html.escape(facts['source'])}.
Each size's best trial is chosen on the validation metric <b>{html.escape(facts['metric'])}</b>;
its test metrics are reported, never used to choose.</p>
<h2>Quality against training-set size</h2>
<div class="grid">{image('f1_vs_train_size.png', 'test F1 against training-set size')}
{image('roc_auc_vs_train_size.png', 'test ROC-AUC against training-set size')}</div>
<h2>Best per model and size</h2>
<div class="grid">{image('best_f1_per_size.png', 'best test F1 per training size')}
{image('best_roc_auc_per_size.png', 'best test ROC-AUC per training size')}</div>
{_table(best, [("model", "model"), ("train_size", "train size"), ("trial", "trial"), ("swept", "swept values"),
               ("select_value", facts['metric']), *metric_cols])}
<h2>Speed, memory and cost</h2>
{image('speed_memory_cost.png', 'seconds per step, tokens per second, peak memory and device-hours per model')}
{_table(models, cost_cols)}
<p class="muted">Seconds per step and tokens/s are medians over epochs after the first (which compiles);
device-hours are fit time x devices, summed over the model's trials.</p>
<h2>All trials</h2>
{_table(rows, [("trial", "trial"), ("model", "model"), ("train_size", "train size"), ("swept", "swept values"),
               ("status", "status"), ("select_value", facts['metric']), *metric_cols,
               ("step_seconds", "s / step"), ("peak_memory_gb", "peak GB")])}
"""
    page = (f"<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{_CSS}</style><script>{_CHECK}</script></head><body>{body}</body></html>")
    path = out / "report.html"
    path.write_text(page, encoding="utf-8")
    return path
