"""The Prometheus alerting rules in ``deploy/prometheus/``: valid (``promtool check rules``), firing when and
only when their tests say (``promtool test rules``), and naming only metrics the sidecar exports."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from sidecar.metrics import Metrics

RULES = Path(__file__).resolve().parents[1] / "deploy" / "prometheus"
SUFFIXES = ("_total", "_bucket", "_count", "_sum", "_created")


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("promtool must run in CI (apt-get install prometheus)", pytrace=False)
        pytest.skip("promtool is missing here (apt-get install prometheus)")
    return found


def test_the_rules_are_valid_prometheus_rules() -> None:
    checked = subprocess.run(
        [promtool(), "check", "rules", "alerts.yml"], cwd=RULES, capture_output=True, text=True
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS: 5 rules found" in checked.stdout


def test_the_rules_fire_as_their_tests_say() -> None:
    tested = subprocess.run(
        [promtool(), "test", "rules", "alerts.test.yml"], cwd=RULES, capture_output=True, text=True
    )
    assert tested.returncode == 0, tested.stdout + tested.stderr


def exported() -> set[str]:
    """Every sample name the sidecar's registry can export, labelled families included."""
    names = set()
    for family in Metrics().registry.collect():
        names.add(family.name)
        names.update(family.name + suffix for suffix in SUFFIXES)
    return names


def test_every_metric_the_rules_name_is_exported() -> None:
    rules = yaml.safe_load((RULES / "alerts.yml").read_text())["groups"][0]["rules"]
    named = {name for rule in rules for name in re.findall(r"\bsidecar_[a-z_]+", rule["expr"])}
    assert named, "the rules name no metric"
    assert named <= exported(), named - exported()
    alerts = {rule["alert"] for rule in rules}
    assert {"LiteLLMPhantomBudgetRefusals", "SidecarFailClosed", "SidecarUpstreamErrors"} <= alerts
    assert "SidecarAdminLookupsFailing" in alerts
