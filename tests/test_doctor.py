"""``litellm-budget-sidecar doctor``: one key's budget truth for an operator, against real recorded LiteLLM
answers - the verdict and its exit code, the budget chain, what each policy answers, advice on a phantom,
one clear line when it cannot tell, and never the raw key."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import threading
from typing import Any

import httpx
import pytest

from sidecar import cli
from sidecar.litellm.credentials import key_hash, key_label
from tests.conftest import SidecarFactory, bearer
from tests.fake_litellm import KEYS, VERSIONS, FakeLiteLLM
from tests.seeded import ALL_MODELS, BROKE, END_USER_BROKE, FREE_MODELS, SCOPE, expected_models
from tests.test_levels import lower

NOT_RECORDED = {("1.88.6", "KEY_WINDOW_BROKE")}  # 1.88 keeps a window's spend only in its counters


def key_of(principal: str) -> str:
    return KEYS["KEY_END_USER_CALLER" if principal == "END_USER_BROKE" else principal]


def args_for(principal: str) -> list[str]:
    extra = ["--end-user", END_USER_BROKE] if principal == "END_USER_BROKE" else []
    return ["--key", key_of(principal), *extra]


@pytest.fixture
def doctor(fake: FakeLiteLLM, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Any:
    """Run ``litellm-budget-sidecar doctor ARGS`` against the fake; returns (exit code, stdout, stderr)."""

    def run(*args: str, admin_key: str | None = KEYS["MASTER"]) -> tuple[int, str, str]:
        fake.answer("GET", "/openapi.json", 200, {"info": {"title": "LiteLLM API", "version": fake.version}})
        monkeypatch.setenv("SIDECAR_UPSTREAM_URL", fake.url)
        if admin_key is not None:
            monkeypatch.setenv("SIDECAR_ADMIN_KEY", admin_key)
        code = cli.main(["doctor", *args])
        out, err = capsys.readouterr()
        for key in KEYS.values():  # no raw key, caller's or admin's, is ever printed
            assert key not in out and key not in err
        return code, out, err

    return run


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("principal", BROKE)
def test_a_genuinely_spent_key_is_consistent_and_exits_0(
    doctor: Any, fake: FakeLiteLLM, version: str, principal: str
) -> None:
    fake.use_version(version)
    code, out, err = doctor(*args_for(principal), "--json")
    found = json.loads(out)
    assert found["refused"]["status"] in (400, 429, 422, 401)
    assert found["models"] == {
        "accessible": expected_models(principal, "all"),
        "free": expected_models(principal, "free_only"),
    }
    assert found["policies"]["free_only"] == expected_models(principal, "free_only", version)
    assert found["usable"] == {
        "now": "free" if expected_models(principal, "free_only", version) else "none",
        "models": expected_models(principal, "free_only", version),
    }
    assert found["policies"]["all"] == expected_models(principal, "all")
    if (version, principal) in NOT_RECORDED:
        assert (code, found["verdict"], found["exit_code"]) == (2, "unknown", 2)
        return
    assert (code, found["verdict"], found["exit_code"], err) == (0, "spent", 0, "")
    (blocking,) = [level for level in found["levels"] if level["blocking"]]
    assert blocking["scope"] == SCOPE[principal]
    assert blocking["spend"] >= blocking["max_budget"] and blocking["remaining"] == 0
    assert found["advice"] == []


@pytest.mark.parametrize("version", VERSIONS)
def test_a_key_within_budget_exits_0_with_every_model_on_every_policy(
    doctor: Any, fake: FakeLiteLLM, version: str
) -> None:
    fake.use_version(version)
    code, out, _ = doctor("--key", KEYS["KEY_HEALTHY"], "--json")
    found = json.loads(out)
    assert (code, found["verdict"], found["refused"]) == (0, "within", None)
    assert found["policies"]["all"] == found["policies"]["free_only"] == ALL_MODELS
    assert found["policies"]["blocked"] == {"status": 200, "models": ALL_MODELS}
    assert found["key"]["token"] == key_hash(KEYS["KEY_HEALTHY"])


@pytest.mark.parametrize(
    ("version", "principal"),
    [
        ("1.110.2", "KEY_KEY_BROKE"),
        ("1.106.2", "KEY_TEAM_BROKE"),
        ("1.88.6", "KEY_MEMBER_BROKE"),
        ("1.83.3", "KEY_USER_BROKE"),
    ],
)
def test_a_phantom_exits_1_with_what_clears_it_on_that_version(
    doctor: Any, fake: FakeLiteLLM, version: str, principal: str
) -> None:
    fake.use_version(version)
    spend = lower(fake, principal)
    code, out, err = doctor(*args_for(principal), "--json", "--settle", "0")
    found = json.loads(out)
    assert (code, found["verdict"], found["waited"], err) == (1, "phantom", 0, "")
    (blocking,) = [level for level in found["levels"] if level["blocking"]]
    assert (blocking["scope"], blocking["spend"]) == (SCOPE[principal], spend)
    advice = "\n".join(found["advice"])
    token = key_hash(key_of(principal))
    if principal == "KEY_KEY_BROKE":  # 1.106+: LiteLLM's own route sets the counter to the records
        assert f"POST /key/{token}/reset_spend" in advice and f"spend:key:{token}" in advice
    if principal == "KEY_TEAM_BROKE":  # no route resets a team's counter
        assert "'spend:team:team-broke'" in advice and "No LiteLLM route resets" in advice
    release = tuple(int(part) for part in version.split("."))
    if release >= (1, 88):
        assert "disable_budget_reservation" in advice
    else:  # 1.83 reserves nothing; its user budget is its cached user object
        assert "disable_budget_reservation" not in advice and "cached user object" in advice
    assert ("fail_closed_budget_enforcement" in advice) == (release >= (1, 106))


def test_the_table_shows_the_chain_the_refusing_level_and_each_policy(doctor: Any, fake: FakeLiteLLM) -> None:
    fake.use_version("1.110.2")
    lower(fake, "KEY_TEAM_BROKE")
    code, out, _ = doctor("--key", KEYS["KEY_TEAM_BROKE"], "--settle", "0")
    assert code == 1
    lines = out.splitlines()
    assert lines[0] == f"LiteLLM 1.110.2 at {fake.url}"
    token = key_hash(KEYS["KEY_TEAM_BROKE"])
    assert lines[1] == f"key {key_label(KEYS['KEY_TEAM_BROKE'])} (token {token[:12]}…)"
    assert any(line.startswith("LiteLLM refuses it now: 422 at the team level") for line in lines)
    (team,) = [line for line in lines if line.lstrip().startswith("team ")]
    assert team.split()[:4] == ["team", "team-broke", "0.005", "0.01"] and team.endswith("<- refuses")
    assert any(line.startswith("verdict: PHANTOM - LiteLLM enforces") for line in lines)
    assert max(len(line) for line in lines[lines.index("advice:") :]) <= 100  # wrapped for a terminal
    assert f"  free_only: {', '.join(FREE_MODELS)}" in lines
    assert f"  all:       {', '.join(ALL_MODELS)}" in lines
    assert "advice:" in lines


def test_a_key_litellm_serves_while_its_records_say_spent_is_inconsistent(
    doctor: Any, fake: FakeLiteLLM
) -> None:
    fake.use_version("1.109.1")
    fake.answer(
        "GET", "/cursor/v1/models", 200, {"object": "list", "data": []}
    )  # the counter lags the records
    code, out, _ = doctor("--key", KEYS["KEY_TEAM_BROKE"], "--json", "--settle", "0")
    found = json.loads(out)
    assert (code, found["verdict"], found["refused"]) == (1, "inconsistent", None)
    assert "team budget spent" in found["reason"]


def test_a_phantom_is_asked_again_while_litellm_may_still_be_writing_its_spend(
    doctor: Any, fake: FakeLiteLLM
) -> None:
    """Right after a key crosses its budget LiteLLM's records lag its counter by its batch write: the
    doctor asks again before it calls that a phantom."""
    fake.use_version("1.110.2")
    before = set(fake.overrides)
    lower(fake, "KEY_TEAM_BROKE")  # the records as they are before LiteLLM's batch write
    (lagging,) = set(fake.overrides) - before
    threading.Timer(1.0, fake.overrides.pop, (lagging,)).start()  # ... and after it
    code, out, err = doctor("--key", KEYS["KEY_TEAM_BROKE"], "--json", "--settle", "10")
    found = json.loads(out)
    assert (code, found["verdict"]) == (0, "spent")
    assert 1 <= found["waited"] < 10
    assert err == (
        "litellm-budget-sidecar doctor: LiteLLM's records disagree with what it enforces; LiteLLM writes "
        "spend in batches, so checking again for up to 10 s\n"
    )


def test_a_phantom_that_outlasts_the_wait_says_how_long_it_waited(doctor: Any, fake: FakeLiteLLM) -> None:
    fake.use_version("1.109.1")
    lower(fake, "KEY_KEY_BROKE")
    code, out, err = doctor("--key", KEYS["KEY_KEY_BROKE"], "--json", "--settle", "1")
    found = json.loads(out)
    assert (code, found["verdict"], err.count("\n")) == (1, "phantom", 1)
    assert 0 < found["waited"] <= 1
    assert found["advice"][-1].startswith(
        f"The records still disagreed after {found['waited']:g} s (--settle 1)"
    )


def test_the_budget_view_and_the_doctor_call_a_new_phantom_alike(
    doctor: Any,
    fake: FakeLiteLLM,
    sidecar: SidecarFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """One grace for a new phantom: met at the same moment, it is ``unknown`` to the budget view while the
    doctor is still asking, until it has lasted ``phantom_after`` (the doctor's default ``--settle``);
    then both say ``phantom``."""
    fake.use_version("1.109.1")
    lower(fake, "KEY_KEY_BROKE")  # a new phantom: LiteLLM refuses the key, its records show it within budget
    monkeypatch.setenv("SIDECAR_PHANTOM_AFTER", "2")  # the one setting, for the sidecar and the doctor
    url = sidecar()
    with httpx.Client(timeout=10) as client:
        first = client.get(url + "/sidecar/v1/budget", headers=bearer("KEY_KEY_BROKE")).json()
        code, out, err = doctor("--key", KEYS["KEY_KEY_BROKE"], "--json")  # no --settle
        then = client.get(url + "/sidecar/v1/budget", headers=bearer("KEY_KEY_BROKE")).json()
    found = json.loads(out)
    assert first["verdict"] == "unknown"
    assert err.endswith("so checking again for up to 2 s\n")
    assert (code, found["verdict"], then["verdict"]) == (1, "phantom", "phantom")
    assert 1 <= found["waited"] <= 2


@pytest.mark.parametrize("settle", ["-1", "601"])
def test_a_settle_out_of_range_exits_2(doctor: Any, settle: str) -> None:
    assert doctor("--key", KEYS["KEY_HEALTHY"], "--settle", settle) == (
        2,
        "",
        "litellm-budget-sidecar doctor: --settle must be between 0 and 600 seconds\n",
    )


def test_the_key_may_come_from_stdin_so_it_stays_out_of_ps(
    doctor: Any, fake: FakeLiteLLM, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO(KEYS["KEY_HEALTHY"] + "\n"))
    code, out, _ = doctor("--key", "-", "--json")
    assert (code, json.loads(out)["verdict"]) == (0, "within")


def test_without_an_admin_key_it_cannot_diagnose(doctor: Any) -> None:
    code, out, err = doctor("--key", KEYS["KEY_TEAM_BROKE"], admin_key=None)
    assert (code, out) == (2, "")
    assert err == (
        "litellm-budget-sidecar doctor: an admin key is needed to read the budget chain: "
        "set SIDECAR_ADMIN_KEY\n"
    )


def test_a_key_litellm_does_not_accept_is_one_line_and_exit_2(doctor: Any, fake: FakeLiteLLM) -> None:
    fake.use_version("1.110.2")
    fake.answer(
        "GET",
        "/cursor/v1/models",
        401,
        {"error": {"message": "Invalid API key provided.", "type": "auth_error", "code": "401"}},
    )
    code, out, err = doctor("--key", "sk-nobody-knows-me")
    assert (code, out) == (2, "")
    assert err == (
        "litellm-budget-sidecar doctor: LiteLLM does not accept this key: "
        "/cursor/v1/models answered 401 Invalid API key provided.\n"
    )
    assert "sk-nobody-knows-me" not in err


def test_an_unreachable_litellm_is_one_line_and_exit_2(
    doctor: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SIDECAR_ADMIN_KEY", KEYS["MASTER"])
    monkeypatch.setenv("SIDECAR_UPSTREAM_URL", "http://127.0.0.1:9")
    code = cli.main(["doctor", "--key", KEYS["KEY_HEALTHY"]])
    out, err = capsys.readouterr()
    assert (code, out) == (2, "")
    assert err == "litellm-budget-sidecar doctor: cannot reach LiteLLM at http://127.0.0.1:9: ConnectError\n"


@pytest.mark.parametrize("args", [[], ["--key"], ["--key", "sk-x", "--bogus"]])
def test_bad_arguments_exit_2_with_argparses_line(
    args: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(["doctor", *args])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: litellm-budget-sidecar doctor") and "error:" in err


def test_an_empty_key_exits_2(doctor: Any) -> None:
    assert doctor("--key", "  ") == (2, "", "litellm-budget-sidecar doctor: --key is empty\n")


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (
            ["--key", "sk-with space"],
            "--key holds characters no API key has (spaces, control or non-ASCII ones)",
        ),
        (["--key", "sk-bä"], "--key holds characters no API key has (spaces, control or non-ASCII ones)"),
        (
            ["--key", KEYS["KEY_HEALTHY"], "--end-user", "müller@example.de"],
            "--end-user must be printable ASCII without spaces (it is sent in a header)",
        ),
    ],
)
def test_a_key_or_end_user_no_header_can_carry_is_one_line_and_exit_2(
    doctor: Any, args: list[str], said: str
) -> None:
    assert doctor(*args) == (2, "", f"litellm-budget-sidecar doctor: {said}\n")


def test_a_byte_order_mark_before_a_key_on_stdin_is_dropped(
    doctor: Any, fake: FakeLiteLLM, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("\ufeff" + KEYS["KEY_HEALTHY"] + "\n"))
    code, out, _ = doctor("--key", "-", "--json")
    assert (code, json.loads(out)["verdict"]) == (0, "within")


def test_a_litellm_error_echoing_the_key_never_prints_it(doctor: Any, fake: FakeLiteLLM) -> None:
    key = "not-an-sk-key-0123456789"
    echo = {"error": {"message": f"Virtual Key expected. Received={key}, expected to start with 'sk-'."}}
    fake.answer("GET", "/cursor/v1/models", 401, echo)
    code, out, err = doctor("--key", key)
    assert (code, out) == (2, "")
    assert key not in err and f"<key {key_label(key)}>" in err


def test_a_litellm_failing_with_a_5xx_is_said_as_such(doctor: Any, fake: FakeLiteLLM) -> None:
    fake.answer("GET", "/cursor/v1/models", 503, {"error": {"message": "database unavailable"}})
    assert doctor("--key", KEYS["KEY_HEALTHY"]) == (
        2,
        "",
        "litellm-budget-sidecar doctor: LiteLLM failed: /cursor/v1/models answered 503 "
        "database unavailable\n",
    )


def test_a_reader_that_stops_early_ends_doctor_quietly_with_its_verdicts_exit_code(fake: FakeLiteLLM) -> None:
    """Issue 28: `doctor ... --json | head -3` printed a BrokenPipeError traceback and exited 1, the code
    that means "phantom". The real process, its stdout a pipe closed after three lines."""
    fake.use_version("1.110.2")
    fake.answer("GET", "/openapi.json", 200, {"info": {"title": "LiteLLM API", "version": fake.version}})
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIDECAR_")}
    env.update(SIDECAR_UPSTREAM_URL=fake.url, SIDECAR_ADMIN_KEY=KEYS["MASTER"])
    reader, writer = os.pipe()
    proc = subprocess.Popen(
        [sys.executable, "-m", "sidecar", "doctor", "--key", "-", "--json", "--settle", "0"],
        env=env,
        stdin=subprocess.PIPE,
        stdout=writer,
        stderr=subprocess.PIPE,
    )
    os.close(writer)
    os.close(reader)  # the reader is gone before doctor writes a byte
    try:
        _, err = proc.communicate(KEYS["KEY_TEAM_BROKE"].encode() + b"\n", timeout=60)
    finally:
        if proc.poll() is None:  # stopped whatever happens, the assertions below included
            proc.kill()
            proc.wait()
    assert b"Traceback" not in err and b"BrokenPipe" not in err, err
    assert proc.returncode == 0  # KEY_TEAM_BROKE is genuinely spent: 0, whoever reads the answer
