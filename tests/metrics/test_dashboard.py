"""The Grafana dashboard: the panels operators need, each querying series the server really exposes, valid PromQL."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest
from prometheus_client import generate_latest

from tests.metrics import dashboard
from tests.metrics.exposition import parse
from vaeserve.server.metrics import Metrics


def _exposed_sample_names() -> set[str]:
    """Sample names of a Metrics that saw one of everything (labelled histograms show nothing before that)."""
    metrics = Metrics()
    metrics.requests.labels("Encode", "OK").inc()
    metrics.request_duration.labels("Encode").observe(0.002)
    metrics.set_model_info("vae", [(1, "CPUExecutionProvider", "plain")])
    return {name for name, _ in parse(generate_latest(metrics.registry).decode())}


def test_dashboard_is_grafana_json_with_unique_panel_ids():
    board = dashboard.load()
    assert board["uid"] == "vaeserve"
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard.panels(board):
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"], panel["title"]
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
    assert {v["name"] for v in board["templating"]["list"]} == {"datasource", "instance"}


def test_dashboard_has_the_panels_operators_need():
    exprs = dashboard.expressions(dashboard.load())
    joined = "\n".join(exprs.values())
    assert "sum by (method, code) (rate(vaeserve_requests_total" in joined  # RPS by method and code
    for q in ("0.5", "0.95", "0.99"):  # latency and queue wait quantiles from the histogram buckets
        assert f"histogram_quantile({q}, sum by (le, method) (rate(vaeserve_request_duration_seconds_bucket" in joined
        assert f"histogram_quantile({q}, sum by (le, graph) (rate(vaeserve_queue_wait_seconds_bucket" in joined
    assert "vaeserve_batch_size_bucket" in joined
    assert "vaeserve_inflight_requests" in joined


def test_every_query_names_an_exposed_series():
    exposed = _exposed_sample_names()
    for panel, expr in dashboard.expressions(dashboard.load()).items():
        names = dashboard.metric_names(expr)
        assert names, f"{panel}: no metric in {expr}"
        assert names <= exposed, f"{panel}: {names - exposed} not exposed"


def test_every_query_parses_as_promql(tmp_path):
    """`promtool check rules` parses each expression as a recording rule: bad PromQL fails here, offline."""
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (Debian package prometheus; `make system-deps` installs it)")
    exprs = dashboard.expressions(dashboard.load())
    rules = [{"record": f"vaeserve_dashboard:query{i}", "expr": expr} for i, expr in enumerate(exprs.values())]
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(json.dumps({"groups": [{"name": "dashboard", "rules": rules}]}))  # JSON is YAML
    result = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules)} rules found" in result.stdout
