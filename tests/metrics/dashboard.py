"""deploy/grafana/vaeserve-dashboard.json read as Grafana would: its panels and their PromQL."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "vaeserve-dashboard.json"

# What Grafana substitutes before sending a query: $instance's "All" value and a rate window that holds
# several samples at the test's 1 s scrape interval.
GRAFANA_VARIABLES = {"$instance": ".*", "$__rate_interval": "30s"}
METRIC_NAME = re.compile(r"\b((?:vaeserve|process|python)_[a-zA-Z0-9_]+)\b")


def load() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel that queries (rows hold none)."""
    return [p for p in dashboard["panels"] if p["type"] != "row"]


def expressions(dashboard: dict[str, Any]) -> dict[str, str]:
    """'panel title / refId' -> the PromQL Prometheus receives, Grafana variables substituted."""
    exprs = {}
    for panel in panels(dashboard):
        for target in panel["targets"]:
            expr = target["expr"]
            for variable, substitute in GRAFANA_VARIABLES.items():
                expr = expr.replace(variable, substitute)
            exprs[f"{panel['title']} / {target['refId']}"] = expr
    return exprs


def metric_names(expr: str) -> set[str]:
    return set(METRIC_NAME.findall(expr))
