"""Starting the sidecar, as a new operator meets it: one readiness line once it listens, a warning for each
likely mistake it corrects or ignores, and one clear line with exit status 2 for what stops it."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.fake_litellm import KEYS, FakeLiteLLM
from tests.test_operations import _env, closed_port


def run_until_announced(
    env: dict[str, str], tmp_path: Path, preexec_fn: Callable[[], None] | None = None
) -> tuple[list[dict[str, Any]], str]:
    """Start the real process, wait for its ``startup`` line, stop it; its log lines and its URL."""
    port = env.setdefault("SIDECAR_PORT", str(closed_port()))
    log = tmp_path / "sidecar.log"
    with log.open("wb") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "sidecar"], env=env, stderr=stderr, preexec_fn=preexec_fn
        )
    try:
        deadline = time.monotonic() + 20
        while '"event":"startup"' not in log.read_text():
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        url = f"http://127.0.0.1:{port}"
        assert httpx.get(url + "/healthz", timeout=5).status_code == 200  # it serves either way
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=10)
    return [json.loads(line) for line in log.read_text().splitlines()], url


def startup_line(lines: list[dict[str, Any]]) -> dict[str, Any]:
    (line,) = [line for line in lines if line.get("event") == "startup"]
    return line


def test_a_ready_start_says_so_in_one_line(fake: FakeLiteLLM, tmp_path: Path) -> None:
    lines, url = run_until_announced(_env(fake), tmp_path)
    line = startup_line(lines)
    assert line["level"] == "info" and line["ready"] is True
    assert (line["upstream"], line["admin_credential"]) == ("ok", "ok (4 models)")
    assert (line["listen"], line["upstream_url"], line["policy"]) == (url, fake.url, "all")
    assert KEYS["MASTER"] not in json.dumps(lines)
    assert not [line for line in lines if line.get("event") == "setting_warning"]


def test_an_unreachable_litellm_is_a_warning_and_the_sidecar_keeps_serving(
    fake: FakeLiteLLM, tmp_path: Path
) -> None:
    upstream = f"http://127.0.0.1:{closed_port()}"
    line = startup_line(run_until_announced(_env(fake, upstream_url=upstream), tmp_path)[0])
    assert line["level"] == "warning" and line["ready"] is False
    assert line["upstream"].startswith("unreachable")
    # not "refused": a credential cannot be judged by a LiteLLM that does not answer (issue 28)
    assert line["admin_credential"] == "unknown (LiteLLM is unreachable)"


def test_a_refused_admin_key_is_a_warning(fake: FakeLiteLLM, tmp_path: Path) -> None:
    line = startup_line(run_until_announced(_env(fake, admin_key="sk-not-the-admin"), tmp_path)[0])
    assert (line["level"], line["upstream"]) == ("warning", "ok")
    assert line["admin_credential"].startswith("refused or failed: /model/info answered")
    assert "sk-not-the-admin" not in json.dumps(line)


def test_without_an_admin_key_the_line_says_what_that_costs(fake: FakeLiteLLM, tmp_path: Path) -> None:
    env = _env(fake, policy="blocked")
    del env["SIDECAR_ADMIN_KEY"]
    line = startup_line(run_until_announced(env, tmp_path)[0])
    assert (line["ready"], line["admin_credential"]) == (True, "not set (every budget verdict unknown)")


@pytest.mark.parametrize("suffix", ["/v1", "/v1/"])
def test_an_upstream_url_ending_in_v1_is_used_without_it_with_a_warning(
    fake: FakeLiteLLM, tmp_path: Path, suffix: str
) -> None:
    given = fake.url + suffix
    lines, _ = run_until_announced(_env(fake, upstream_url=given), tmp_path)
    (warning,) = [line for line in lines if line.get("event") == "setting_warning"]
    assert warning["level"] == "warning"
    assert warning["message"].startswith(f"upstream_url {given} ends in /v1: the sidecar uses {fake.url} ")
    line = startup_line(lines)
    assert (line["upstream_url"], line["ready"]) == (fake.url, True)


def test_a_misspelt_environment_variable_is_named_with_the_closest_setting(
    fake: FakeLiteLLM, tmp_path: Path
) -> None:
    env = {**_env(fake), "SIDECAR_POLCY": "free_only", "SIDECAR_FROBNICATE": "1"}
    lines, _ = run_until_announced(env, tmp_path)
    warnings = [line["message"] for line in lines if line.get("event") == "setting_warning"]
    assert warnings == [
        "unknown environment variable SIDECAR_FROBNICATE is ignored (no setting has a name close to it)",
        "unknown environment variable SIDECAR_POLCY is ignored; did you mean SIDECAR_POLICY?",
    ]
    assert startup_line(lines)["policy"] == "all"  # ignored, as it says


def test_a_port_in_use_is_one_line_and_exit_2(fake: FakeLiteLLM) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "sidecar"],
            env=_env(fake, port=str(port)),
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert done.returncode == 2
    assert (
        done.stderr == f"litellm-budget-sidecar: cannot listen on 127.0.0.1:{port}: Address already in use\n"
    )


def test_check_against_an_unreachable_litellm_prints_only_its_report(fake: FakeLiteLLM) -> None:
    upstream = f"http://127.0.0.1:{closed_port()}"
    done = subprocess.run(
        [sys.executable, "-m", "sidecar", "--check"],
        env={**_env(fake, upstream_url=upstream + "/v1"), "SIDECAR_POLCY": "x"},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert (done.returncode, done.stderr) == (1, "")
    lines = done.stdout.splitlines()
    assert lines[:3] == [
        "warning: unknown environment variable SIDECAR_POLCY is ignored; did you mean SIDECAR_POLICY?",
        f"warning: upstream_url {upstream}/v1 ends in /v1: the sidecar uses {upstream} (LiteLLM serves its "
        "routes at its root: a client's base URL ends in /v1, the sidecar's upstream does not)",
        f"settings: ok (upstream {upstream}, policy all)",
    ]
    assert lines[3].startswith("upstream: unreachable") and lines[-1] == "NOT ready"
    assert "" not in lines


def test_a_setting_named_in_lower_case_is_read_and_not_called_unknown(
    fake: FakeLiteLLM, tmp_path: Path
) -> None:
    env = {**_env(fake), "SIDECAR_policy": "free_only", "sidecar_polcy": "x"}
    lines, _ = run_until_announced(env, tmp_path)
    warnings = [line["message"] for line in lines if line.get("event") == "setting_warning"]
    assert warnings == ["unknown environment variable sidecar_polcy is ignored; did you mean SIDECAR_POLICY?"]
    assert startup_line(lines)["policy"] == "free_only"


def test_a_fallback_target_the_catalog_does_not_call_free_is_a_warning_at_start(
    fake: FakeLiteLLM, tmp_path: Path
) -> None:
    env = _env(fake, fallback='{"paid-model": "free-model", "*": "paid-model-2"}')
    lines, _ = run_until_announced(env, tmp_path)  # the warning follows the startup line (cached catalog)
    warnings = [line["message"] for line in lines if line.get("event") == "setting_warning"]
    assert warnings == [
        "fallback target paid-model-2 is not free in LiteLLM's catalog (or there is no admin key): "
        "no request will fall back to it"
    ]


def test_the_fallback_flag_takes_json_and_says_when_it_is_not(fake: FakeLiteLLM) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "sidecar", "--fallback", "{paid: free}", "--check"],
        env=_env(fake),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2
    assert done.stderr == (
        "litellm-budget-sidecar: invalid setting 'fallback' (--fallback): not JSON, "
        'e.g. {"*": "free-model"}\n'
    )
    done = subprocess.run(
        [sys.executable, "-m", "sidecar", "--fallback", '{"*": "free-model"}', "--check"],
        env=_env(fake),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stdout + done.stderr
