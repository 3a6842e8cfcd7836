"""Settings: flags over environment over YAML; every bad value stops start-up with one clear line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from sidecar.cli import settings_from_args
from sidecar.settings import Settings, SettingsError, load_settings


def test_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SIDECAR_ADMIN_KEY", "sk-admin")
    settings = load_settings()
    assert (settings.upstream_url, settings.policy, settings.host, settings.port) == (
        "http://127.0.0.1:4000",
        "all",
        "127.0.0.1",
        4001,
    )
    assert settings.retrieve_from_list is True
    assert isinstance(settings, Settings)


def test_flags_win_over_env_which_wins_over_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "sidecar.yaml"
    config.write_text(
        "policy: free_only\nport: 5000\nhost: 0.0.0.0\nadmin_key: sk-from-file\nfree_models: [a, b]\n"
    )
    monkeypatch.setenv("SIDECAR_CONFIG", str(config))
    monkeypatch.setenv("SIDECAR_PORT", "6000")
    monkeypatch.setenv("SIDECAR_POLICY", "blocked")
    settings = settings_from_args(["--policy", "all"])
    assert settings.policy == "all"  # flag
    assert settings.port == 6000  # env over file
    assert settings.host == "0.0.0.0"  # file
    assert settings.admin_key is not None and settings.admin_key.get_secret_value() == "sk-from-file"
    assert settings.free_models == ("a", "b")


def test_config_flag_names_the_file(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("POLICY: blocked\n")
    assert settings_from_args(["--config", str(config)]).policy == "blocked"


def test_comma_separated_free_models_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SIDECAR_FREE_MODELS", "llama, qwen ,")
    monkeypatch.setenv("SIDECAR_POLICY", "blocked")
    assert load_settings().free_models == ("llama", "qwen")


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"SIDECAR_POLICY": "everything"}, "'policy'"),
        ({"SIDECAR_POLICY": "everything"}, "'all', 'free_only' or 'blocked'"),
        ({"SIDECAR_POLICY": "all"}, "admin_key is required"),
        ({"SIDECAR_PORT": "70000", "SIDECAR_POLICY": "blocked"}, "'port'"),
        ({"SIDECAR_PORT": "http", "SIDECAR_POLICY": "blocked"}, "'port'"),
        ({"SIDECAR_UPSTREAM_URL": "ftp://x", "SIDECAR_POLICY": "blocked"}, "'upstream_url'"),
        ({"SIDECAR_UPSTREAM_URL": "localhost:4000", "SIDECAR_POLICY": "blocked"}, "'upstream_url'"),
        ({"SIDECAR_LOG_LEVEL": "loud", "SIDECAR_POLICY": "blocked"}, "'log_level'"),
        ({"SIDECAR_CATALOG_TTL": "-1", "SIDECAR_POLICY": "blocked"}, "'catalog_ttl'"),
        ({"SIDECAR_READ_TIMEOUT": "0", "SIDECAR_POLICY": "blocked"}, "'read_timeout'"),
    ],
)
def test_bad_settings_are_named(env: dict[str, str], expected: str, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError) as raised:
        load_settings()
    assert expected in str(raised.value)
    assert "\n" not in str(raised.value)


def test_unknown_setting_in_file_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("policy: blocked\npolicyy: all\n")
    with pytest.raises(SettingsError, match="unknown setting 'policyy'"):
        load_settings(str(config))


@pytest.mark.parametrize("text", ["policy: [unclosed\n", "- a list\n"])
def test_unreadable_config_file_is_reported(tmp_path: Path, text: str) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(text)
    with pytest.raises(SettingsError, match="config file"):
        load_settings(str(config))


def test_missing_config_file_is_reported(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="No such file"):
        load_settings(str(tmp_path / "absent.yaml"))


def test_secret_is_never_echoed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SIDECAR_ADMIN_KEY", "sk-very-secret")
    monkeypatch.setenv("SIDECAR_POLICY", "nope")
    with pytest.raises(SettingsError) as raised:
        load_settings()
    assert "sk-very-secret" not in str(raised.value)
    assert "sk-very-secret" not in repr(load_settings(policy="all"))


def _run_cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SIDECAR_")}
    return subprocess.run(
        [sys.executable, "-m", "sidecar", *args],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_cli_refuses_to_start_without_admin_key_in_one_line() -> None:
    result = _run_cli("--policy", "free_only")
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
    assert "admin_key is required" in result.stderr
    assert "Traceback" not in result.stderr


def test_cli_names_a_bad_flag_value_and_the_allowed_ones() -> None:
    result = _run_cli("--policy", "some", SIDECAR_ADMIN_KEY="sk-secret-admin")
    assert result.returncode == 2
    assert "policy" in result.stderr and "'all', 'free_only' or 'blocked'" in result.stderr
    assert "sk-secret-admin" not in result.stderr
    assert "Traceback" not in result.stderr
