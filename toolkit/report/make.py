"""Collect a sweep's trials (local directory or W&B path) and write the comparison report."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from toolkit.io_utils import atomic_dir
from toolkit.report.collect import ReportError, from_sweep_dir, from_wandb
from toolkit.report.page import write_report


def make_report(sweep: str | Path, out: str | Path | None = None, *, price_per_device_hour: float | None = None,
                wandb_report: bool | None = None) -> dict[str, Any]:
    """Write the offline report (always) and, for a W&B path or on request, a W&B Report.

    `sweep` is a sweep directory or `entity/project[/group]`. `out` defaults to
    `<sweep>/report` (or `reports/<group>` for a W&B path); it is replaced atomically.
    Returns {"html": path, "wandb_url": url or None, "trials": n}.
    """
    local = Path(sweep).is_dir()
    if local:
        rows, facts = from_sweep_dir(sweep)
    elif Path(sweep).exists():
        raise ReportError(f"--sweep {sweep} is a file; pass the sweep directory or a W&B path")
    elif str(sweep).startswith((".", "/")) or str(sweep).count("/") not in (1, 2):
        raise ReportError(f"--sweep {sweep}: no such directory (and not a W&B path entity/project[/group])")
    else:
        rows, facts = from_wandb(str(sweep))
    target = Path(out) if out is not None else (Path(sweep) / "report" if local else Path("reports") / facts["name"])
    with atomic_dir(target) as tmp:
        write_report(rows, facts, tmp, price_per_device_hour=price_per_device_hour)
    url = None
    if wandb_report if wandb_report is not None else not local:
        url = _save_wandb_report(sweep, facts, local)
    return {"html": target / "report.html", "wandb_url": url, "trials": len(rows)}


def _save_wandb_report(sweep: str | Path, facts: dict[str, Any], local: bool) -> str:
    """Build and save the W&B Report (needs network and an API key)."""
    from toolkit.report.wandb_report import build_report

    if local:  # the sweep's trials logged to the project in its config, grouped by the sweep's name
        import yaml

        cfg = yaml.safe_load((Path(sweep) / "sweep.yaml").read_text())
        tracking = cfg.get("tracking") or {}
        entity, project = tracking.get("entity"), tracking.get("project", "agile-toolkit")
        group = tracking.get("group") or cfg.get("name")
        if not entity:
            raise ReportError(f"{sweep}/sweep.yaml: tracking.entity is not set, so the W&B report has no home; "
                              "pass the W&B path entity/project/group instead")
    else:
        entity, project, *rest = str(sweep).strip("/").split("/")
        group = rest[0] if rest else None
    try:
        report = build_report(entity, project, group)
        report.save()
    except Exception as e:  # network, auth or permission: the offline report is already written
        raise ReportError(f"the W&B report for {entity}/{project} could not be saved ({e}); "
                          "the offline HTML report was written") from e
    return report.url
