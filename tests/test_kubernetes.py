"""The Kubernetes manifests in ``deploy/kubernetes/``, checked by reading them (no cluster runs here).

What an operator relies on: every manifest is valid for the Kubernetes API (``kubernetes-validate
--strict``), ``kustomization.yaml`` applies the default set and nothing else, the pieces point at each
other (Service, HPA, PDB and ServiceMonitor select the Deployment's pods or the Service; probes, Service
and scrape use the named container port), the pod runs locked down, the settings file loads with the
sidecar's own loader and holds no secret, the admin key comes from the Secret, the grace period covers the
sidecar's drain, and the split Ingress sends model discovery - and only that - to the sidecar, with
Kubernetes' own path-matching rules implemented here (``backend_for``).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from sidecar import budget_view
from sidecar.app import HEALTHZ, METRICS, READYZ
from sidecar.proxy.routes import DISCOVERY_PATHS, MODEL_PREFIXES, match_discovery
from sidecar.settings import Settings, load_settings

ROOT = Path(__file__).resolve().parents[1]
MANIFESTS = ROOT / "deploy" / "kubernetes"

# The Kubernetes versions the manifests are validated against: the oldest they are written for (every API
# and field they use is GA there) and the newest kubernetes-validate bundles schemas for.
KUBERNETES_VERSIONS = ("1.34.0", "1.37.0")
# Kinds of custom resources: kubernetes-validate has no schema for them; it warns and exits 0.
CUSTOM_KINDS = {"ServiceMonitor"}
# Files kustomization.yaml deliberately leaves out (its comment says why).
OPTIONAL = {"secret.example.yaml", "servicemonitor.yaml", "ingress-split.yaml"}

LABELS = {
    "app.kubernetes.io/name": "litellm-budget-sidecar",
    "app.kubernetes.io/instance": "litellm-budget-sidecar",
    "app.kubernetes.io/component": "discovery-proxy",
    "app.kubernetes.io/part-of": "litellm",
}
# Seconds the pod needs after the sidecar's own shutdown has ended: the process exiting.
SHUTDOWN_MARGIN = 5

LITELLM_BACKEND = ("litellm", 4000)


def manifest(filename: str) -> dict[str, Any]:
    documents = [d for d in yaml.safe_load_all((MANIFESTS / filename).read_text()) if d]
    assert len(documents) == 1, f"{filename}: one resource per file"
    document: dict[str, Any] = documents[0]
    return document


def manifest_files() -> list[str]:
    return sorted(p.name for p in MANIFESTS.glob("*.yaml") if p.name != "kustomization.yaml")


def deployment() -> dict[str, Any]:
    return manifest("deployment.yaml")


def pod_spec() -> dict[str, Any]:
    spec: dict[str, Any] = deployment()["spec"]["template"]["spec"]
    return spec


def pod_labels() -> dict[str, str]:
    labels: dict[str, str] = deployment()["spec"]["template"]["metadata"]["labels"]
    return labels


def container() -> dict[str, Any]:
    containers = pod_spec()["containers"]
    assert len(containers) == 1
    only: dict[str, Any] = containers[0]
    return only


def container_port_names() -> dict[str, int]:
    return {port["name"]: port["containerPort"] for port in container()["ports"]}


def env() -> dict[str, dict[str, Any]]:
    return {entry["name"]: entry for entry in container()["env"]}


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(key) == value for key, value in selector.items())


# --- the manifests are valid Kubernetes -----------------------------------------------------------------


def kubernetes_validate() -> Path:
    cli = Path(sys.executable).parent / "kubernetes-validate"
    if not cli.exists():
        if os.environ.get("CI"):
            pytest.fail(f"kubernetes-validate must run in CI ({cli} is missing)", pytrace=False)
        pytest.skip(f"kubernetes-validate is missing here ({cli}; pip install kubernetes-validate)")
    return cli


def validate(version: str, files: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    command = [str(kubernetes_validate()), "--strict", "-k", version, *files]
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_manifest_validates_strictly(version: str) -> None:
    """Each resource must be reported as passed against that version. kubernetes-validate only warns (and
    exits 0) for a kind it has no schema for - a custom resource, or a built-in kind with a mistyped
    apiVersion - so every line of its output is accounted for, and only CUSTOM_KINDS may be unvalidated."""
    files = manifest_files()
    checked = validate(version, files, MANIFESTS)
    lines = set(checked.stdout.splitlines())
    minor = ".".join(version.split(".")[:2])
    expected = set()
    for filename in files:
        resource = manifest(filename)
        kind, name = resource["kind"], resource["metadata"]["name"]
        if kind in CUSTOM_KINDS:
            expected.add(
                f"WARN {filename} Couldn't find schema for kind {kind} with api version "
                f"{resource['apiVersion']} for kubernetes version {minor}"
            )
        else:
            expected.add(f"INFO {filename} passed for resource {kind.lower()}/{name} against version {minor}")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert lines == expected, checked.stdout + checked.stderr


def test_strict_validation_refuses_a_field_kubernetes_does_not_know(tmp_path: Path) -> None:
    """The check above means something: a misspelt field fails it."""
    broken = deployment()
    broken["spec"]["template"]["spec"]["containers"][0]["imagePullPolcy"] = "Always"
    (tmp_path / "deployment.yaml").write_text(yaml.safe_dump(broken))
    checked = validate(KUBERNETES_VERSIONS[0], ["deployment.yaml"], tmp_path)
    assert checked.returncode == 1, checked.stdout + checked.stderr
    assert "ERROR deployment.yaml did not validate" in checked.stdout
    assert "imagePullPolcy" in checked.stdout


def test_kustomization_lists_every_manifest_but_the_optional_ones() -> None:
    kustomization = manifest("kustomization.yaml")
    assert kustomization["apiVersion"] == "kustomize.config.k8s.io/v1beta1"
    assert kustomization["kind"] == "Kustomization"
    listed = kustomization["resources"]
    assert len(listed) == len(set(listed)), listed
    on_disk = set(manifest_files())
    assert on_disk >= OPTIONAL
    assert set(listed) == on_disk - OPTIONAL
    assert {p.name for p in MANIFESTS.iterdir()} == on_disk | {"kustomization.yaml"}  # no .yml, no strays
    text = (MANIFESTS / "kustomization.yaml").read_text()
    for filename in OPTIONAL:
        assert f"#   {filename}" in text, f"kustomization.yaml does not say why {filename} is left out"
        first_line = (MANIFESTS / filename).read_text().splitlines()[0]
        assert re.match(r"# (OPTIONAL|EXAMPLE ONLY) - not in kustomization\.yaml's resources", first_line)


def test_every_resource_carries_the_same_labels() -> None:
    for filename in manifest_files():
        assert manifest(filename)["metadata"]["labels"] == LABELS, filename
    assert pod_labels() == LABELS


# --- the pieces point at each other ---------------------------------------------------------------------


def test_deployment_selects_its_own_pods_by_name_and_instance() -> None:
    selector = deployment()["spec"]["selector"]["matchLabels"]
    assert selector == {key: LABELS[key] for key in ("app.kubernetes.io/name", "app.kubernetes.io/instance")}
    assert selects(selector, pod_labels())


def test_probes_ask_the_sidecars_own_routes_on_the_named_port() -> None:
    probes = container()
    assert "http" in container_port_names()
    # Liveness never asks LiteLLM: an outage upstream must not restart every sidecar.
    assert probes["livenessProbe"]["httpGet"] == {"path": HEALTHZ.decode(), "port": "http"}
    assert probes["readinessProbe"]["httpGet"] == {"path": READYZ.decode(), "port": "http"}
    if "startupProbe" in probes:
        assert probes["startupProbe"]["httpGet"] == {"path": HEALTHZ.decode(), "port": "http"}


def test_service_selects_the_pods_and_targets_the_named_port() -> None:
    service = manifest("service.yaml")
    assert service["spec"]["type"] == "ClusterIP"
    assert service["spec"]["selector"] == deployment()["spec"]["selector"]["matchLabels"]
    assert selects(service["spec"]["selector"], pod_labels())
    ports = service["spec"]["ports"]
    assert [(p["name"], p["port"], p["targetPort"]) for p in ports] == [("http", 4001, "http")]
    assert ports[0]["targetPort"] in container_port_names()


def test_hpa_scales_the_deployment_on_the_cpu_request() -> None:
    hpa = manifest("hpa.yaml")
    assert hpa["apiVersion"] == "autoscaling/v2"
    target = hpa["spec"]["scaleTargetRef"]
    assert target == {"apiVersion": "apps/v1", "kind": "Deployment", "name": deployment()["metadata"]["name"]}
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 10)
    [metric] = hpa["spec"]["metrics"]
    assert metric["type"] == "Resource" and metric["resource"]["name"] == "cpu"
    assert metric["resource"]["target"]["type"] == "Utilization"
    # Utilization is measured against the request: without one the HPA cannot scale.
    assert container()["resources"]["requests"]["cpu"]
    # Applying a changed replicas resets the count the HPA chose; at the HPA's minimum it is inert.
    assert deployment()["spec"]["replicas"] == hpa["spec"]["minReplicas"]


def test_pdb_selects_the_pods_and_lets_one_be_evicted() -> None:
    pdb = manifest("pdb.yaml")
    assert pdb["apiVersion"] == "policy/v1"
    assert selects(pdb["spec"]["selector"]["matchLabels"], pod_labels())
    replicas = manifest("hpa.yaml")["spec"]["minReplicas"]
    spec = pdb["spec"]
    assert ("maxUnavailable" in spec) != ("minAvailable" in spec)
    if "maxUnavailable" in spec:
        assert isinstance(spec["maxUnavailable"], int) and spec["maxUnavailable"] >= 1
    else:
        assert isinstance(spec["minAvailable"], int) and 1 <= spec["minAvailable"] < replicas
    # Pods not ready because LiteLLM is down must not block node drains.
    assert spec.get("unhealthyPodEvictionPolicy") == "AlwaysAllow"


def test_servicemonitor_scrapes_the_sidecars_metrics_from_the_service() -> None:
    monitor = manifest("servicemonitor.yaml")
    service = manifest("service.yaml")
    assert (monitor["apiVersion"], monitor["kind"]) == ("monitoring.coreos.com/v1", "ServiceMonitor")
    assert selects(monitor["spec"]["selector"]["matchLabels"], service["metadata"]["labels"])
    endpoints = monitor["spec"]["endpoints"]
    assert [(e["port"], e["path"]) for e in endpoints] == [("http", METRICS.decode())]
    assert endpoints[0]["port"] in {p["name"] for p in service["spec"]["ports"]}


def test_scrape_annotations_name_the_metrics_route_and_port() -> None:
    annotations = deployment()["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/path"] == METRICS.decode()
    assert int(annotations["prometheus.io/port"]) == container_port_names()["http"]


# --- the pod runs locked down ---------------------------------------------------------------------------


def test_container_runs_unprivileged_on_a_read_only_root() -> None:
    pod = pod_spec()
    context = container()["securityContext"]
    assert context["allowPrivilegeEscalation"] is False
    assert context["readOnlyRootFilesystem"] is True
    assert context["capabilities"] == {"drop": ["ALL"]}
    assert context.get("privileged", False) is False
    assert context.get("runAsNonRoot", pod["securityContext"].get("runAsNonRoot")) is True
    user = context.get("runAsUser", pod["securityContext"].get("runAsUser"))
    image_user = re.findall(r"^USER (\S+)", (ROOT / "Dockerfile").read_text(), re.MULTILINE)[-1]
    assert user == int(image_user) and user != 0
    seccomp = context.get("seccompProfile", pod["securityContext"].get("seccompProfile"))
    assert seccomp == {"type": "RuntimeDefault"}


def test_pod_gets_no_service_account_token_and_no_service_links() -> None:
    pod = pod_spec()
    assert pod["automountServiceAccountToken"] is False
    # Service links would inject <SERVICE>_PORT=tcp://... variables: a Service named `sidecar` in the
    # namespace would set SIDECAR_PORT for the sidecar.
    assert pod["enableServiceLinks"] is False
    assert not {"hostNetwork", "hostPID", "hostIPC"} & set(pod)


def quantity(value: str | int) -> float:
    """A Kubernetes resource quantity of the forms used here: 100m, 128Mi, 1, 0.5."""
    units = {"m": 1e-3, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30}
    found = re.fullmatch(r"(\d+(?:\.\d+)?)(m|Ki|Mi|Gi)?", str(value))
    assert found, f"unexpected quantity {value!r}"
    return float(found.group(1)) * units.get(found.group(2) or "", 1)


def test_memory_is_bounded_and_cpu_requested_without_a_throttling_limit() -> None:
    resources = container()["resources"]
    requests, limits = resources["requests"], resources["limits"]
    # ~50 MiB resident when idle: requested with room, limited so that a leak ends in a restart.
    assert 64 * 2**20 <= quantity(requests["memory"]) <= quantity(limits["memory"])
    assert quantity(requests["cpu"]) > 0
    # One process tops out near one core: a CPU limit below that would only throttle the inference path.
    assert "cpu" not in limits or quantity(limits["cpu"]) >= 1


def test_replicas_spread_across_nodes() -> None:
    spread = pod_spec()["topologySpreadConstraints"]
    assert "kubernetes.io/hostname" in {c["topologyKey"] for c in spread}
    for constraint in spread:
        assert selects(constraint["labelSelector"]["matchLabels"], pod_labels())


# --- settings, secret and shutdown ----------------------------------------------------------------------


def settings_file() -> tuple[str, str]:
    """The ConfigMap's one key and its text."""
    data = manifest("configmap.yaml")["data"]
    assert len(data) == 1, data
    key, text = next(iter(data.items()))
    return str(key), str(text)


@pytest.fixture
def effective(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Settings, list[str]]:
    """The settings the pod runs with: the ConfigMap's file under the Deployment's literal SIDECAR_*
    variables, loaded by the sidecar's own loader (the admin key stands for the Secret's)."""
    _, text = settings_file()
    path = tmp_path / "sidecar.yaml"
    path.write_text(text)
    for name, entry in env().items():
        if "value" in entry and name != "SIDECAR_CONFIG":
            monkeypatch.setenv(name, entry["value"])
    warnings: list[str] = []
    return load_settings(str(path), warnings, admin_key="sk-test"), warnings


def test_settings_file_holds_only_real_settings_and_no_admin_key() -> None:
    _, text = settings_file()
    values = yaml.safe_load(text)
    assert isinstance(values, dict) and values
    assert set(values) <= set(Settings.model_fields), set(values) - set(Settings.model_fields)
    assert "admin_key" not in values
    assert not re.search(r"\bsk-", text)


def test_settings_file_loads_with_the_sidecars_loader(effective: tuple[Settings, list[str]]) -> None:
    settings, warnings = effective
    assert warnings == []  # no misspelt SIDECAR_* variable, no upstream URL ending in /v1
    assert settings.upstream_url == "http://litellm:4000"
    assert settings.policy in ("all", "free_only", "blocked")


def test_settings_file_is_mounted_where_sidecar_config_points() -> None:
    key, _ = settings_file()
    [mount] = container()["volumeMounts"]
    [volume] = [v for v in pod_spec()["volumes"] if v["name"] == mount["name"]]
    assert volume["configMap"]["name"] == manifest("configmap.yaml")["metadata"]["name"]
    assert "items" not in volume["configMap"] and "subPath" not in mount
    assert mount["readOnly"] is True
    assert env()["SIDECAR_CONFIG"]["value"] == f"{mount['mountPath']}/{key}"


def test_sidecar_listens_on_the_pods_address_at_the_container_port(
    effective: tuple[Settings, list[str]],
) -> None:
    settings, _ = effective
    assert settings.host == "0.0.0.0"  # not loopback: probes and the Service reach the pod's IP
    assert settings.port == container_port_names()["http"]


def test_admin_key_comes_from_the_secret() -> None:
    secret = manifest("secret.example.yaml")
    assert secret["kind"] == "Secret"
    entry = env()["SIDECAR_ADMIN_KEY"]
    assert "value" not in entry
    reference = entry["valueFrom"]["secretKeyRef"]
    assert reference["name"] == secret["metadata"]["name"] == "litellm-budget-sidecar-admin"
    assert reference["key"] in secret.get("stringData", secret.get("data", {}))
    assert reference.get("optional", False) is False
    # The example carries a placeholder, never a key someone might commit.
    assert "REPLACE" in secret["stringData"][reference["key"]]


def test_no_environment_variable_holds_a_literal_secret() -> None:
    assert "envFrom" not in container()
    for name, entry in env().items():
        if "value" in entry:
            assert not re.search(r"KEY|TOKEN|SECRET|PASSWORD", name), f"{name} is given as a literal"
            assert not str(entry["value"]).startswith("sk-"), name


def prestop_seconds(lifecycle: dict[str, Any]) -> float:
    """Seconds a preStop hook holds the pod before SIGTERM: a native ``sleep`` or an exec'd ``sleep N``."""
    hook = lifecycle.get("preStop")
    if not hook:
        return 0
    if "sleep" in hook:
        return float(hook["sleep"]["seconds"])
    command = " ".join(hook.get("exec", {}).get("command", []))
    found = re.search(r"\bsleep\s+(\d+(?:\.\d+)?)", command)
    assert found and "httpGet" not in hook, f"cannot tell how long this preStop hook takes: {hook}"
    return float(found.group(1))


def test_grace_period_covers_the_drain_and_the_shutdown(effective: tuple[Settings, list[str]]) -> None:
    settings, _ = effective
    needed = (
        prestop_seconds(container().get("lifecycle", {}))
        + settings.drain_delay
        + settings.shutdown_timeout
        + SHUTDOWN_MARGIN
    )
    assert pod_spec()["terminationGracePeriodSeconds"] >= needed
    assert settings.drain_delay > 0  # behind a Service, keep serving while the endpoints catch up


# --- the split Ingress ----------------------------------------------------------------------------------

Backend = tuple[str, str | int]


def path_matches(rule_path: str, path_type: str, request_path: str) -> bool:
    """Kubernetes Ingress path matching: Exact is the whole path, case-sensitive; Prefix compares the path's
    elements split by "/" (a trailing slash on either side does not matter; /foo/bar matches /foo/bar/baz,
    not /foo/barbaz)."""
    if path_type == "Exact":
        return request_path == rule_path
    if path_type == "Prefix":
        wanted = [element for element in rule_path.split("/") if element]
        given = [element for element in request_path.split("/") if element]
        return given[: len(wanted)] == wanted
    raise AssertionError(f"pathType {path_type} is up to the controller: use Exact or Prefix")


def pick(paths: list[dict[str, Any]], request_path: str) -> dict[str, Any] | None:
    """The HTTPIngressPath serving ``request_path``: the longest matching path wins, and of two equally
    long, Exact before Prefix. None: no rule matches (the default backend's, or a 404)."""
    matching = [p for p in paths if path_matches(p["path"], p["pathType"], request_path)]
    if not matching:
        return None
    return max(matching, key=lambda p: (len(p["path"]), p["pathType"] == "Exact"))


def backend(path: dict[str, Any]) -> Backend:
    service = path["backend"]["service"]
    port = service["port"]
    return service["name"], port.get("name", port.get("number"))


def ingress_paths() -> list[dict[str, Any]]:
    ingress = manifest("ingress-split.yaml")
    assert "defaultBackend" not in ingress["spec"]
    [rule] = ingress["spec"]["rules"]
    paths: list[dict[str, Any]] = rule["http"]["paths"]
    return paths


def backend_for(request_path: str) -> Backend | None:
    chosen = pick(ingress_paths(), request_path)
    return None if chosen is None else backend(chosen)


def sidecar_backend() -> Backend:
    return manifest("service.yaml")["metadata"]["name"], "http"


def sidecar_paths() -> list[dict[str, Any]]:
    return [p for p in ingress_paths() if backend(p) == sidecar_backend()]


# The examples of https://kubernetes.io/docs/concepts/services-networking/ingress/#examples: the Ingress's
# paths, a request path, the path that serves it (None: no match).
Rule = tuple[str, str]
DOCS_EXAMPLES: list[tuple[list[Rule], str, Rule | None]] = [
    ([("/", "Prefix")], "/anything/at/all", ("/", "Prefix")),
    ([("/foo", "Exact")], "/foo", ("/foo", "Exact")),
    ([("/foo", "Exact")], "/bar", None),
    ([("/foo", "Exact")], "/foo/", None),
    ([("/foo/", "Exact")], "/foo", None),
    ([("/foo", "Prefix")], "/foo", ("/foo", "Prefix")),
    ([("/foo", "Prefix")], "/foo/", ("/foo", "Prefix")),
    ([("/foo/", "Prefix")], "/foo", ("/foo/", "Prefix")),
    ([("/foo/", "Prefix")], "/foo/", ("/foo/", "Prefix")),
    ([("/aaa/bb", "Prefix")], "/aaa/bbb", None),
    ([("/aaa/bbb", "Prefix")], "/aaa/bbb", ("/aaa/bbb", "Prefix")),
    ([("/aaa/bbb/", "Prefix")], "/aaa/bbb", ("/aaa/bbb/", "Prefix")),
    ([("/aaa/bbb", "Prefix")], "/aaa/bbb/", ("/aaa/bbb", "Prefix")),
    ([("/aaa/bbb", "Prefix")], "/aaa/bbb/ccc", ("/aaa/bbb", "Prefix")),
    ([("/aaa/bbb", "Prefix")], "/aaa/bbbxyz", None),
    ([("/", "Prefix"), ("/aaa", "Prefix")], "/aaa/ccc", ("/aaa", "Prefix")),
    ([("/", "Prefix"), ("/aaa", "Prefix"), ("/aaa/bbb", "Prefix")], "/aaa/bbb", ("/aaa/bbb", "Prefix")),
    ([("/", "Prefix"), ("/aaa", "Prefix"), ("/aaa/bbb", "Prefix")], "/ccc", ("/", "Prefix")),
    ([("/aaa", "Prefix")], "/ccc", None),
    ([("/foo", "Prefix"), ("/foo", "Exact")], "/foo", ("/foo", "Exact")),
    # Not in the table, from "Multiple matches" beside it: the order of the paths does not matter.
    ([("/foo", "Exact"), ("/foo", "Prefix")], "/foo", ("/foo", "Exact")),
    ([("/foo/bar", "Prefix"), ("/foo", "Exact")], "/foo/bar/baz", ("/foo/bar", "Prefix")),
]


@pytest.mark.parametrize(("paths", "request_path", "served_by"), DOCS_EXAMPLES)
def test_path_matching_follows_the_kubernetes_docs(
    paths: list[Rule], request_path: str, served_by: Rule | None
) -> None:
    chosen = pick([{"path": path, "pathType": kind} for path, kind in paths], request_path)
    assert (chosen and (chosen["path"], chosen["pathType"])) == served_by


SAMPLE_IDS = ["gpt-4o", "openai/gpt-4o", "claude-3-5-sonnet@20240620", "gemini-2.0-flash"]


def test_ingress_uses_nginx_and_real_backends() -> None:
    ingress = manifest("ingress-split.yaml")
    assert ingress["spec"]["ingressClassName"] == "nginx"
    service_ports = {p["name"] for p in manifest("service.yaml")["spec"]["ports"]}
    backends = {backend(p) for p in ingress_paths()}
    assert backends == {sidecar_backend(), LITELLM_BACKEND}
    assert sidecar_backend()[1] in service_ports
    assert {p["pathType"] for p in ingress_paths()} <= {"Exact", "Prefix"}


def test_everything_the_ingress_sends_to_the_sidecar_is_discovery_or_the_budget_view() -> None:
    budget = budget_view.ROUTE.decode()
    assert sidecar_paths()
    for rule in sidecar_paths():
        samples = [rule["path"]]
        if rule["pathType"] == "Prefix":
            samples += [f"{rule['path'].rstrip('/')}/{model_id}" for model_id in SAMPLE_IDS]
        for path in samples:
            assert backend_for(path) == sidecar_backend(), path
            for method in ("GET", "HEAD"):
                assert path == budget or match_discovery(method, path.encode()) is not None, path


# /models/{id} stays with LiteLLM in the split shape: LiteLLM's Google-style inference routes share the
# prefix (POST /models/{model}:generateContent), see ingress-split.yaml.
NOT_ROUTED_TO_SIDECAR = {b"/models/"}


def test_every_discovery_route_reaches_the_sidecar() -> None:
    exact = sorted(route.decode() for route in DISCOVERY_PATHS)
    by_id = [
        f"{prefix.decode()}{model_id}"
        for prefix in MODEL_PREFIXES
        if prefix not in NOT_ROUTED_TO_SIDECAR
        for model_id in SAMPLE_IDS
    ]
    for path in [*exact, *by_id, budget_view.ROUTE.decode()]:
        assert backend_for(path) == sidecar_backend(), path
    assert set(MODEL_PREFIXES) >= NOT_ROUTED_TO_SIDECAR  # a stale exception fails here
    for prefix in NOT_ROUTED_TO_SIDECAR:
        assert backend_for(f"{prefix.decode()}gpt-4o") == LITELLM_BACKEND


TO_LITELLM = [
    "/v1/chat/completions",
    "/chat/completions",
    "/engines/gpt-4o/chat/completions",
    "/openai/deployments/gpt-4o/chat/completions",
    "/v1/completions",
    "/completions",
    "/v1/embeddings",
    "/embeddings",
    "/v1/messages",
    "/v1/messages/count_tokens",
    "/v1/responses",
    "/responses",
    "/v1/audio/transcriptions",
    "/v1/audio/speech",
    "/v1/images/generations",
    "/v1/files",
    "/v1/batches",
    "/v1/rerank",
    "/v1/moderations",
    "/v1/realtime",
    "/models/gemini-2.0-flash:generateContent",
    "/models/gemini-2.0-flash:streamGenerateContent",
    "/v1beta/models/gemini-2.0-flash:generateContent",
    "/anthropic/v1/messages",
    "/health/liveliness",
    "/metrics",
    "/key/info",
    "/model/new",
    "/utils/model_info",
    # The sidecar's operational routes stay inside the cluster.
    "/healthz",
    "/readyz",
    "/sidecar/metrics",
]


@pytest.mark.parametrize("path", TO_LITELLM)
def test_inference_and_everything_else_goes_straight_to_litellm(path: str) -> None:
    assert backend_for(path) == LITELLM_BACKEND
    assert not [
        rule["path"] for rule in sidecar_paths() if path_matches(rule["path"], rule["pathType"], path)
    ]
