"""The Grafana dashboard in ``deploy/grafana/``: importable (uid, title, schema version, a ``datasource``
variable that every panel and query uses), every panel complete (unique id, place, title, description),
every query valid PromQL (``promtool check rules``, as recording rules) and naming only metrics and labels
the sidecar exports, and the metrics an operator needs all on it."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import yaml
from prometheus_client.metrics import MetricWrapperBase

from sidecar.cache import SingleFlightCache
from sidecar.metrics import Metrics
from tests.test_alerts import promtool

DASHBOARD = Path(__file__).resolve().parents[1] / "deploy" / "grafana" / "litellm-budget-sidecar.json"
DATASOURCE = "${datasource}"
# Labels Prometheus adds to every scraped sample: the dashboard's job and instance variables select on them.
TARGET_LABELS = {"job", "instance"}
# What Grafana puts in place of its own variables, for promtool (a query variable becomes "match all").
GRAFANA_VARIABLES = {"__rate_interval": "5m", "__range": "1h", "__interval": "1m"}

METRIC = re.compile(r"\bsidecar_[a-z_]+")
SELECTOR = re.compile(r"\b(sidecar_[a-z_]+)\{([^}]*)\}")
MATCHER = re.compile(r"(\w+)\s*(?:=~|!~|!=|=)")
GROUPING = re.compile(r"\b(?:by|without|on|ignoring)\s*\(([^)]*)\)")
# label_replace(v, "dst", "replacement", "src", "regex"): its last four arguments are string literals.
LABEL_REPLACE = re.compile(r'"(\w+)"\s*,\s*"[^"]*"\s*,\s*"(\w+)"\s*,\s*"[^"]*"\s*\)')
LEGEND = re.compile(r"\{\{\s*(\w+)\s*\}\}")
RANGE = re.compile(r"\[([^\]]*)\]")
VARIABLE = re.compile(r"\$(\w+)|\$\{(\w+)\}")
LABEL_VALUES = re.compile(r"^label_values\((.*),\s*\w+\)$")


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def panels(board: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel, the ones inside collapsed rows included."""
    found = []
    for panel in board["panels"]:
        found.append(panel)
        found.extend(panel.get("panels", []))
    return found


def targets(board: dict[str, Any]) -> list[dict[str, Any]]:
    return [target for panel in panels(board) for target in panel.get("targets", [])]


def variable_selectors(board: dict[str, Any]) -> list[str]:
    """The series selectors of the dashboard's query variables (``label_values(selector, label)``)."""
    selectors = []
    for variable in board["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]
            text = query["query"] if isinstance(query, dict) else query
            matched = LABEL_VALUES.match(text)
            assert matched, f"variable {variable['name']}: {text!r} is not label_values(selector, label)"
            selectors.append(matched.group(1))
    return selectors


def expressions(board: dict[str, Any]) -> list[str]:
    return [target["expr"] for target in targets(board)] + variable_selectors(board)


def exported_samples() -> dict[str, set[str]]:
    """Every sample name the sidecar can export, with its label names, as its registry collects them.

    A labelled metric collects no sample before its first child exists, and the cache counters only once
    caches are watched: a throwaway ``Metrics`` gets one child of each and a watched cache, so each family
    shows the sample names (``_total``, ``_bucket``, ``_created``, ...) and labels (``le``) it really has."""
    metrics = Metrics()
    metrics.watch_caches(views=SingleFlightCache(ttl=1.0))
    for metric in vars(metrics).values():
        if isinstance(metric, MetricWrapperBase) and metric._labelnames:
            metric.labels(*metric._labelnames)
    samples: dict[str, set[str]] = {}
    silent = []
    for family in metrics.registry.collect():
        if not family.samples:
            silent.append(family.name)
        for sample in family.samples:
            samples.setdefault(sample.name, set()).update(sample.labels)
    assert not silent, f"families whose samples this test cannot see: {silent}"
    return samples


def test_the_dashboard_is_an_importable_grafana_dashboard() -> None:
    board = dashboard()
    assert board["uid"] == "litellm-budget-sidecar"
    assert board["title"] == "LiteLLM budget sidecar"
    assert 36 <= board["schemaVersion"] <= 41, "Grafana 10/11 dashboards are schema 36-41"
    variables = {variable["name"]: variable for variable in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for variable in variables.values():
        if variable["type"] == "query":
            assert variable["datasource"]["uid"] == DATASOURCE, variable["name"]


def test_every_panel_has_an_id_a_place_a_title_a_description_and_queries_on_the_variable() -> None:
    every = panels(dashboard())
    ids = [panel.get("id") for panel in every]
    assert all(isinstance(panel_id, int) for panel_id in ids), ids
    assert len(ids) == len(set(ids)), f"panel ids repeat: {ids}"
    shown = [panel for panel in every if panel["type"] != "row"]
    assert len(shown) >= 15
    for panel in every:
        place = panel["gridPos"]
        assert {"x", "y", "w", "h"} <= place.keys(), panel["title"]
        assert place["x"] + place["w"] <= 24 and place["h"] > 0, panel["title"]
        assert panel["title"].strip()
    for panel in shown:
        title = panel["title"]
        assert len(panel.get("description", "")) > 40, f"{title}: say what it means for an operator"
        assert panel["datasource"]["uid"] == DATASOURCE, title
        assert panel["targets"], f"{title} has no query"
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == DATASOURCE, title
            assert target["expr"].strip(), title
        refs = [target["refId"] for target in panel["targets"]]
        assert len(refs) == len(set(refs)), f"{title}: refIds repeat"


def test_every_metric_the_dashboard_names_is_exported() -> None:
    named = {name for expr in expressions(dashboard()) for name in METRIC.findall(expr)}
    assert named, "the dashboard names no metric"
    assert named <= exported_samples().keys(), named - exported_samples().keys()


def test_the_dashboard_shows_what_an_operator_needs() -> None:
    named = {name for expr in expressions(dashboard()) for name in METRIC.findall(expr)}
    needed = {
        "sidecar_requests_total",
        "sidecar_rescues_total",
        "sidecar_budget_marked_total",
        "sidecar_fail_closed_total",
        "sidecar_rescues_blocked_total",
        "sidecar_budget_unknown_total",
        "sidecar_budget_refusals_total",
        "sidecar_passthrough_seconds_bucket",
        "sidecar_upstream_errors_total",
        "sidecar_abandoned_total",
        "sidecar_admin_lookup_seconds_bucket",
        "sidecar_admin_lookup_failures_total",
        "sidecar_budget_source_failures_total",
        "sidecar_cache_hits_total",
        "sidecar_cache_misses_total",
    }
    assert needed <= named, needed - named


def test_phantom_refusals_have_a_coloured_stat() -> None:
    stats = [
        panel
        for panel in panels(dashboard())
        if panel["type"] == "stat"
        and any('verdict="phantom"' in target["expr"] for target in panel["targets"])
    ]
    assert stats, "no stat panel counts phantom refusals"
    for stat in stats:
        assert all("$__range" in target["expr"] for target in stat["targets"]), "count over the range"
        steps = stat["fieldConfig"]["defaults"]["thresholds"]["steps"]
        assert len({step["color"] for step in steps}) >= 2, "a phantom refusal must change the colour"


def test_every_label_the_dashboard_names_is_on_its_metric() -> None:
    samples = exported_samples()
    for target in targets(dashboard()):
        expr = target["expr"]
        used = set(METRIC.findall(expr)) & samples.keys()
        assert used, expr
        for name, matchers in SELECTOR.findall(expr):
            unknown = set(MATCHER.findall(matchers)) - samples.get(name, set()) - TARGET_LABELS
            assert not unknown, f"{name} has no label {unknown}: {expr}"
        common = set.intersection(*(samples[name] for name in used)) | TARGET_LABELS
        replaced = LABEL_REPLACE.findall(expr)
        assert {source for _, source in replaced} <= common, expr
        made = {destination for destination, _ in replaced}
        grouped = {label.strip() for labels in GROUPING.findall(expr) for label in labels.split(",")}
        grouped.discard("")
        assert grouped <= common | made, f"not on {sorted(used)}: {grouped - common - made}: {expr}"
        legend = set(LEGEND.findall(target.get("legendFormat", "")))
        assert legend <= grouped, f"the legend names labels the query drops: {legend - grouped}: {expr}"


def test_every_range_is_grafanas_interval() -> None:
    for expr in expressions(dashboard()):
        for window in RANGE.findall(expr):
            assert window in ("$__rate_interval", "$__range"), f"a fixed window [{window}]: {expr}"


def for_prometheus(expr: str, variables: set[str]) -> str:
    """``expr`` with Grafana's variables filled in; ``${1}`` in a label_replace is not one of them."""

    def value(found: re.Match[str]) -> str:
        name = found.group(1) or found.group(2)
        if name in GRAFANA_VARIABLES:
            return GRAFANA_VARIABLES[name]
        return ".*" if name in variables else found.group(0)

    return VARIABLE.sub(value, expr)


def test_every_query_is_valid_promql(tmp_path: Path) -> None:
    found = promtool()
    board = dashboard()
    variables = {variable["name"] for variable in board["templating"]["list"]}
    exprs = [for_prometheus(expr, variables) for expr in expressions(board)]
    assert not [expr for expr in exprs if "$__" in expr], "a Grafana variable left unreplaced"
    rules = [{"record": f"dashboard:expr_{n}", "expr": expr} for n, expr in enumerate(exprs)]
    groups = {"groups": [{"name": "dashboard", "rules": rules}]}
    (tmp_path / "dashboard.yml").write_text(yaml.safe_dump(groups))
    checked = subprocess.run(
        [found, "check", "rules", "dashboard.yml"], cwd=tmp_path, capture_output=True, text=True
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(rules)} rules found" in checked.stdout, checked.stdout
