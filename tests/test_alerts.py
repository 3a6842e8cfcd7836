"""The Prometheus alerting rules in ``deploy/prometheus/``: valid (``promtool check rules``), firing when and
only when their tests say (``promtool test rules``), and naming only metrics the sidecar exports."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import time
from pathlib import Path

import httpx
import pytest
import yaml

from sidecar.metrics import Metrics
from tests.conftest import SidecarFactory
from tests.fake_litellm import FakeLiteLLM

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
    assert "SUCCESS: 6 rules found" in checked.stdout


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


# --- silent under what callers do: each rule reads only series that a flood of strangers leaves at zero ---

_SELECTOR = re.compile(r"\b(sidecar_[a-z_]+)(?:\{([^}]*)\})?")
_MATCHER = re.compile(r'(\w+)\s*(=~|!=|=)\s*"([^"]*)"')


def _moved(metrics_text: str, name: str, matchers: str) -> float:
    """The sum of the samples of ``name`` that a rule's ``{label op "value"}`` matchers select."""
    wanted = [(label, op, value) for label, op, value in _MATCHER.findall(matchers or "")]
    total = 0.0
    for line in metrics_text.splitlines():
        if not line.startswith(name) or line.startswith("#"):
            continue
        series, _, value = line.rpartition(" ")
        base, _, labels = series.partition("{")
        if base != name:
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', labels))
        if all(
            (op == "=" and found.get(label) == want)
            or (op == "!=" and found.get(label) != want)
            or (op == "=~" and re.fullmatch(want, found.get(label, "")) is not None)
            for label, op, want in wanted
        ):
            total += float(value)
    return total


def test_a_flood_of_strangers_bad_paths_and_hang_ups_pages_no_one(
    fake: FakeLiteLLM, sidecar: SidecarFactory, client: httpx.Client
) -> None:
    """Issue 25: a client with a wrong key counted as a failure of the enforced budget source and fired
    SidecarBudgetProbeFailing, whose text blames a LiteLLM upgrade. Every rule's series stay at zero under
    unknown keys on every discovery route, hostile paths and callers hanging up (the rules' firing on the
    real faults is what alerts.test.yml proves)."""
    fake.use_version("1.110.2")
    fake.delay = 0.0
    url = sidecar(policy="free_only")
    routes = (
        "/v1/models",
        "/models",
        "/v1/models/free-model",
        "/model/info",
        "/v2/model/info",
        "/model_group/info",
        "/cursor/v1/models",
        "/sidecar/v1/budget",
    )
    for n in range(40):
        for route in routes:
            stranger = {"Authorization": f"Bearer sk-made-up-{n:04d}", "x-litellm-end-user-id": f"victim-{n}"}
            assert client.get(url + route, headers=stranger).status_code == 401
        assert client.get(url + "/v1/models", headers={"Authorization": f"Bearer not-a-key-{n}"}).status_code
    for path in ("//v1/models", "/v1/models/%2e%2e", "/v1/models/a%2fb", "/nope", "/v1/models/"):
        client.get(url + path, headers={"Authorization": "Bearer sk-made-up"})
    host, port = url.removeprefix("http://").split(":")
    fake.delay = 0.5
    for _ in range(5):  # callers that hang up before their answer
        with socket.create_connection((host, int(port)), timeout=5) as sock:
            sock.sendall(b"GET /v1/models HTTP/1.1\r\nhost: x\r\nauthorization: Bearer sk-made-up-x\r\n\r\n")
    time.sleep(1.0)
    assert fake.admin_requests() == []  # strangers cost LiteLLM's admin API nothing
    text = client.get(url + "/sidecar/metrics").text
    rules = yaml.safe_load((RULES / "alerts.yml").read_text())["groups"][0]["rules"]
    for rule in rules:
        for name, matchers in _SELECTOR.findall(rule["expr"]):
            if name == "sidecar_requests_total":
                continue  # the denominator of a ratio: traffic, not a fault
            assert _moved(text, name, matchers) == 0, (rule["alert"], name, matchers)
