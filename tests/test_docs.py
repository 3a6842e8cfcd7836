"""The README and ``docs/`` against the code: what they show is what a user gets.

Run where they can be: every ``console`` example is either run - ``curl`` against ``http://litellm:4000``
(LiteLLM 1.110.2's recorded answers) and ``http://sidecar:4001`` (the real sidecar in front of them), the
command line's own output (``--help``, ``--version``, ``--check``, a refused setting) - or named in
``NOT_RUN`` with the reason; the log lines they quote are the ones the sidecar writes for the same requests,
byte for byte but the time. Checked against the code where they cannot be: every setting with the default
stated, every metric with its labels, every alert, ``x-sidecar-*`` header and log event named, every
relative link and its anchor. And the README stays one sitting, with the test command ``.ci/run`` reads.
"""

from __future__ import annotations

import ast
import copy
import hashlib
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from sidecar.logs import JsonFormatter
from sidecar.settings import ENVIRONMENT, Settings
from tests.conftest import SidecarFactory
from tests.fake_litellm import KEYS, FakeLiteLLM
from tests.test_grafana import exported_samples

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
PAGES = [README, *sorted(DOCS.glob("*.md"))]
SIDECAR_CODE = sorted((ROOT / "sidecar").rglob("*.py"))
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
README_LINES = 300

# The placeholders the examples use, and what they stand for here.
LITELLM, SIDECAR = "http://litellm:4000", "http://sidecar:4001"
VERSION = "1.110.2"
# Console examples no test can run, by their first command, and why.
NOT_RUN = {
    'echo "$KEY" | SIDECAR_UPSTREAM_URL=http://127.0.0.1:4000 SIDECAR_ADMIN_KEY=sk-admin '
    "litellm-budget-sidecar doctor --key -": "real LiteLLM 1.110.2 with the harness's phantom key, and its "
    "30 s settle; doctor's own tests cover what it prints",
    'SIDECAR_ADMIN_KEY=sk-admin litellm-budget-sidecar 2>&1 | grep \'"event":"startup"\'': "a server that "
    "runs until stopped: test_the_startup_line_is_the_one_the_sidecar_writes runs it",
}
# SIDECAR_* names the docs show that are not settings, on purpose.
NOT_SETTINGS = {
    "SIDECAR_POLCY": "the misspelt variable --check warns of",
    "SIDECAR_RECORD_FIXTURES": "the integration suite's switch to record tests/fixtures/",
}
# Defaults the settings table states in words: worked out at start, or nothing.
WORDS = {"—": None, "none": (), "empty": (), "hard limit": None, "from the descriptors": None}


def text(page: Path) -> str:
    return page.read_text(encoding="utf-8")


def blocks(page: Path) -> list[tuple[str, list[str], int]]:
    """The fenced blocks of ``page``: info string, lines, line number of the opening fence."""
    found: list[tuple[str, list[str], int]] = []
    info: str | None = None
    lines: list[str] = []
    start = 0
    for number, line in enumerate(text(page).splitlines(), 1):
        if line.startswith("```"):
            if info is None:
                info, lines, start = line[3:].strip(), [], number
            else:
                found.append((info, lines, start))
                info = None
        elif info is not None:
            lines.append(line)
    return found


def prose(page: Path) -> list[str]:
    """The lines of ``page`` outside fenced blocks."""
    inside, kept = False, []
    for line in text(page).splitlines():
        if line.startswith("```"):
            inside = not inside
        elif not inside:
            kept.append(line)
    return kept


def tables(page: Path) -> list[tuple[list[str], list[list[str]]]]:
    """The Markdown tables of ``page``: header cells and rows of cells."""
    found: list[tuple[list[str], list[list[str]]]] = []
    rows: list[list[str]] = []
    for line in [*prose(page), ""]:
        if line.startswith("|"):
            rows.append([cell.strip() for cell in line.strip().strip("|").split(" | ")])
        elif rows:
            found.append((rows[0], rows[2:]))
            rows = []
    return found


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


# --- the README ----------------------------------------------------------------------------------------


def test_the_readme_is_read_in_one_sitting() -> None:
    assert len(text(README).splitlines()) < README_LINES


def test_ci_reads_the_test_command_from_the_readme() -> None:
    """``.ci/run``'s own extraction, run on this README: the command that sets up and passes the tests."""
    (extract,) = [
        line for line in (ROOT / ".ci" / "run").read_text().splitlines() if line.startswith("test_")
    ]
    read = subprocess.run(
        ["bash", "-c", f'{extract}\nprintf %s "$test_command"'], cwd=ROOT, capture_output=True, text=True
    )
    assert "pip install -e '.[test,dev]'" in read.stdout and "scripts/check" in read.stdout, read
    assert "-m pytest --cov" in read.stdout, read


def test_the_readme_gives_the_command_that_runs_the_demo() -> None:
    section = text(README).split("## The two commands", 1)[1].split("\n## ", 1)[0]
    assert (
        "\n```sh\npython3 -m venv .venv && .venv/bin/pip install . && .venv/bin/python demo/demo.py\n```"
        in (section)
    )


def test_the_readme_links_every_page_of_the_docs() -> None:
    linked = set(re.findall(r"\]\(docs/([\w-]+\.md)", text(README)))
    assert linked == {page.name for page in DOCS.glob("*.md")}


def test_the_demo_lines_quoted_are_ones_the_demo_prints() -> None:
    demo = ast.parse((ROOT / "demo" / "demo.py").read_text())
    formats = []
    for node in ast.walk(demo):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id == "say"
            and node.args
        ):
            said = node.args[0]
            if not isinstance(said, ast.JoinedStr | ast.Constant):
                continue  # say(text): a line made elsewhere
            parts = said.values if isinstance(said, ast.JoinedStr) else [said]
            formats.append(
                "".join(
                    re.escape(str(part.value)) if isinstance(part, ast.Constant) else ".+" for part in parts
                ).lstrip("\\\n")
            )
    quoted = [line for _, lines, _ in blocks(README) for line in lines if line.startswith("demo: ")]
    assert quoted
    for line in quoted:
        assert any(re.fullmatch(pattern, line) for pattern in formats), line


# --- links ---------------------------------------------------------------------------------------------


def anchors(page: Path) -> set[str]:
    """GitHub's anchors for the headings of ``page``."""
    found = set()
    for line in prose(page):
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            found.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return found


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.name)
def test_every_relative_link_resolves(page: Path) -> None:
    links = re.findall(r"\]\(([^)\s]+)\)", "\n".join(prose(page)))
    for link in links:
        if re.match(r"[a-z]+:", link):
            continue
        path, _, anchor = link.partition("#")
        target = (page.parent / path).resolve() if path else page
        assert target.exists(), f"{page.name}: {link}"
        if anchor:
            assert anchor in anchors(target), f"{page.name}: {link} (anchors: {sorted(anchors(target))})"


# --- settings, metrics, alerts, headers -----------------------------------------------------------------


def documented_default(cell: str) -> object:
    if cell in WORDS:
        return WORDS[cell]
    value = cell.strip("`")
    try:
        parsed: object = json.loads(value)
    except ValueError:
        return value
    return parsed


def settings_rows(page: Path) -> dict[str, str]:
    return {
        row[0].strip("`"): row[1]
        for header, rows in tables(page)
        if header[:2] == ["name", "default"]
        for row in rows
    }


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.name)
def test_every_setting_named_exists_with_the_default_stated(page: Path) -> None:
    for name, default in settings_rows(page).items():
        assert name in Settings.model_fields, f"{page.name}: no setting {name}"
        actual = Settings.model_fields[name].get_default(call_default_factory=True)
        assert documented_default(default) == actual, f"{page.name}: {name} defaults to {actual!r}"
    for variable in set(re.findall(r"\bSIDECAR_[A-Z_]+\b", text(page))):
        assert variable in ENVIRONMENT or variable in NOT_SETTINGS, f"{page.name}: {variable}"
    assert not (set(NOT_SETTINGS) & ENVIRONMENT)


def test_the_operating_guide_lists_every_setting() -> None:
    assert set(settings_rows(DOCS / "operating.md")) == set(Settings.model_fields)


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.name)
def test_every_metric_named_is_exported_with_the_labels_named(page: Path) -> None:
    samples = exported_samples()
    for name, labels in re.findall(r"\b(sidecar_[a-z_]+)(?:\{([^}]*)\})?", text(page)):
        known = samples.get(name, samples.get(f"{name}_bucket"))
        assert known is not None, f"{page.name}: {name} is not exported"
        named = set(re.findall(r"(?:^|,)\s*(\w+)", labels))
        assert named <= known, f"{page.name}: {name} has no label {named - known}"


def test_every_alert_named_is_a_rule_and_every_rule_is_documented() -> None:
    rules = {
        rule["alert"] for group in yaml.safe_load(ALERTS.read_text())["groups"] for rule in group["rules"]
    }
    for page in PAGES:
        named = set(re.findall(r"\b(?:LiteLLM|Sidecar)[A-Z][A-Za-z]+\b", text(page)))
        assert named <= rules, f"{page.name}: {named - rules}"
    alerts_table = [
        row[0].strip("`")
        for header, rows in tables(DOCS / "operating.md")
        if header[0] == "alert"
        for row in rows
    ]
    assert set(alerts_table) == rules


def headers_set_by_the_code() -> set[str]:
    found = set()
    for path in SIDECAR_CODE:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, bytes | str):
                value = node.value.decode("latin-1") if isinstance(node.value, bytes) else node.value
                if re.fullmatch(r"x-sidecar-[a-z-]+", value):
                    found.add(value)
    return found


def test_every_header_named_is_one_the_sidecar_sets_and_the_readme_names_them_all() -> None:
    code = headers_set_by_the_code()
    assert len(code) >= 6
    for page in PAGES:
        named = {name.rstrip("-") for name in re.findall(r"x-sidecar-[a-z-]+", text(page))}
        assert named <= code, f"{page.name}: {named - code}"
    assert code <= set(re.findall(r"x-sidecar-[a-z-]+", text(README)))


# --- log events ----------------------------------------------------------------------------------------


def events_emitted() -> set[str]:
    """The event names in the code: the name argument of every ``event(...)`` and ``Sparse(...)``."""
    found = set()
    for path in SIDECAR_CODE:
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call):
                continue
            called = node.func.id if isinstance(node.func, ast.Name) else getattr(node.func, "attr", "")
            where = {"event": 2, "Sparse": 1}.get(called)
            if where is not None and len(node.args) > where:
                found |= {
                    part.value
                    for part in ast.walk(node.args[where])
                    if isinstance(part, ast.Constant) and isinstance(part.value, str)
                }
    return found


def quoting_files() -> list[Path]:
    return [*PAGES, *sorted((ROOT / "deploy").rglob("*.yml")), *sorted((ROOT / "deploy").rglob("*.json"))]


def test_every_log_event_quoted_is_emitted_in_its_compact_form() -> None:
    emitted = events_emitted()
    assert {"startup", "rescue", "over_budget", "budget_refusal", "at_capacity"} <= emitted
    for path in quoting_files():
        body = path.read_text()
        assert not re.search(r'\\?"event\\?": \\?"', body), f"{path.name} quotes a log line with a space"
        for name in re.findall(r'\\?"event\\?":\\?"(\w+)', body):
            assert name in emitted, f"{path.name}: the sidecar logs no {name!r}"
        for line in logged_lines(path):
            assert json.dumps(json.loads(line), separators=(",", ":")) == line, line


def test_the_event_table_names_every_event() -> None:
    (table,) = [rows for header, rows in tables(DOCS / "operating.md") if header[0] == "event"]
    named = {name for row in table for name in re.findall(r"`(\w+)`", row[0])}
    assert named == events_emitted()


def logged_lines(page: Path) -> list[str]:
    return [line for line in page.read_text().splitlines() if line.startswith('{"ts":"')]


def masked(line: str, *fields: str) -> str:
    for field in ("ts", *fields):
        line = re.sub(rf'"{field}":("[^"]*"|\d+)', f'"{field}":_', line)
    return line


def quoted(event: str) -> list[str]:
    return [line for page in PAGES for line in logged_lines(page) if f'"event":"{event}"' in line]


# --- the examples, run ---------------------------------------------------------------------------------


@dataclass
class Example:
    page: str
    line: int
    commands: list[str]
    expected: list[str]

    def __str__(self) -> str:
        return f"{self.page}:{self.line}"


def console_examples() -> list[Example]:
    found = []
    for page in PAGES:
        for info, lines, start in blocks(page):
            if info == "console":
                commands, expected = [], []
                for line in lines:
                    if line.startswith("$ "):
                        commands.append(line[2:])
                    else:
                        expected.append(line)
                found.append(Example(page.name, start, commands, expected))
    return found


EXAMPLES = console_examples()
CURL = [
    e
    for e in EXAMPLES
    if all(re.match(r"curl -si? ", c) and (LITELLM in c or SIDECAR in c) for c in e.commands)
]
CLI = [e for e in EXAMPLES if e not in CURL and e.commands[0] not in NOT_RUN]


def matches(expected: list[str], output: str) -> bool:
    """``output`` is ``expected``, where a line ``...`` stands for any number of lines."""
    pattern = "".join(r"(?:[^\n]*\n)*?" if line == "..." else re.escape(line) + r"\n" for line in expected)
    return re.fullmatch(pattern, output) is not None


def test_every_console_example_is_run_or_says_why_not() -> None:
    assert len(CURL) >= 4 and len(CLI) >= 4
    for example in EXAMPLES:
        assert example in CURL or example in CLI or example.commands[0] in NOT_RUN, example
    used = {example.commands[0] for example in EXAMPLES}
    assert set(NOT_RUN) <= used, "NOT_RUN names an example the docs no longer have"


@pytest.fixture
def litellm(fake: FakeLiteLLM) -> Iterator[FakeLiteLLM]:
    """LiteLLM 1.110.2's recorded answers, with one key refused at a recorded spend of 0.005 of its 0.01: what
    the harness's ``phantom`` leaves behind (its counter says 0.02)."""
    fake.use_version(VERSION)
    token = hashlib.sha256(KEYS["KEY_KEY_BROKE"].encode()).hexdigest()
    record = copy.deepcopy(
        fake.recorded_body("MASTER looking up KEY_KEY_BROKE", f"GET /key/info?key={token}")
    )
    record["info"]["spend"] = 0.005
    fake.answer("GET", f"/key/info?key={token}", 200, record)
    yield fake


def start(sidecar: SidecarFactory, policy: str = "free_only", **settings: Any) -> str:
    # phantom_after 0: the harness's phantom is minutes old when the docs' output was taken, so past the 30 s
    return sidecar(policy=policy, phantom_after=0, **settings)


def run(command: str, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(
        ["bash", "-c", command],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=60,
    )
    output = done.stdout.replace("\r\n", "\n")
    return output if output.endswith("\n") or not output else output + "\n"


@pytest.mark.parametrize("example", CURL, ids=str)
def test_a_curl_example_answers_as_shown(
    example: Example, litellm: FakeLiteLLM, sidecar: SidecarFactory
) -> None:
    assert shutil.which("curl"), "the examples are curl commands: install curl"
    policy = next(
        (line.split(": ")[1] for line in example.expected if line.startswith("x-sidecar-policy")), None
    )
    url = start(sidecar, policy or "free_only")
    output = ""
    for command in example.commands:
        output += run(command.replace(LITELLM, litellm.url).replace(SIDECAR, url))
    assert matches(example.expected, output), f"{example}:\n{output}"


@pytest.fixture
def bin_dir(tmp_path: Path) -> Path:
    """``litellm-budget-sidecar`` on PATH: this checkout's, whatever is installed."""
    script = tmp_path / "litellm-budget-sidecar"
    script.write_text(f'#!/bin/sh\nexec {sys.executable} -m sidecar "$@"\n')
    script.chmod(0o755)
    return tmp_path


@pytest.mark.parametrize("example", CLI, ids=str)
def test_a_command_line_example_prints_what_is_shown(example: Example, bin_dir: Path) -> None:
    port, nothing_there = closed_port(), closed_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIDECAR_")}
    env.update(PATH=f"{bin_dir}:{env['PATH']}", PYTHONPATH=str(ROOT), SIDECAR_PORT=str(port))

    def here(line: str) -> str:  # a port nothing listens on for :9, a free one for the sidecar's 4001
        return re.sub(r"127\.0\.0\.1:9\b", f"127.0.0.1:{nothing_there}", line).replace(":4001", f":{port}")

    output = "".join(run(here(command), env) for command in example.commands)
    assert matches([here(line) for line in example.expected], output), f"{example}:\n{output}"


def test_the_log_lines_quoted_are_the_ones_the_sidecar_writes(
    litellm: FakeLiteLLM, sidecar: SidecarFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """The requests the docs describe, and the lines they log, byte for byte but the time."""
    url = start(sidecar)
    spent_team = {"Authorization": f"Bearer {KEYS['KEY_TEAM_BROKE']}"}
    phantom = {"Authorization": f"Bearer {KEYS['KEY_KEY_BROKE']}"}
    paid = {"model": "paid-model", "messages": [{"role": "user", "content": "hi"}]}
    refused_admin = start(sidecar, admin_key="sk-not-an-admin")
    with caplog.at_level(logging.INFO), httpx.Client(timeout=10) as client:
        client.get(url + "/v1/models", headers=spent_team)
        client.get(url + "/cursor/v1/models", headers=spent_team)
        assert client.post(url + "/v1/chat/completions", json=paid, headers=phantom).status_code == 422
        assert client.get(refused_admin + "/readyz").status_code == 503
        formatter = JsonFormatter()
        deadline = time.monotonic() + 5
        while True:  # a passed-through refusal is judged beside the answer, not before it
            written = {masked(formatter.format(r)) for r in caplog.records if hasattr(r, "fields")}
            checked = [
                line
                for event in ("over_budget", "rescue", "budget_refusal", "readiness")
                for line in quoted(event)
            ]
            missing = [line for line in checked if masked(line) not in written]
            if not missing or time.monotonic() > deadline:
                break
            time.sleep(0.05)
    assert len(checked) >= 5
    assert not missing, "\n".join(["quoted:", *missing, "written:", *sorted(written)])


def test_the_startup_line_is_the_one_the_sidecar_writes(tmp_path: Path) -> None:
    """The startup line quoted, from the real process with nothing on LiteLLM's port; then Ctrl-C ends it
    as the docs say: by SIGINT, without a traceback."""
    (line,) = quoted("startup")
    port, nothing_there = closed_port(), closed_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIDECAR_")}
    env.update(
        PYTHONPATH=str(ROOT),
        SIDECAR_ADMIN_KEY="sk-admin",
        SIDECAR_PORT=str(port),
        SIDECAR_UPSTREAM_URL=f"http://127.0.0.1:{nothing_there}",
    )
    log = tmp_path / "sidecar.log"
    with log.open("wb") as stderr:
        sidecar = subprocess.Popen([sys.executable, "-m", "sidecar"], env=env, stderr=stderr)
    try:
        deadline = time.monotonic() + 30
        while '"event":"startup"' not in log.read_text():
            assert sidecar.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
    finally:
        sidecar.send_signal(signal.SIGINT)
        sidecar.wait(timeout=30)
    (written,) = [entry for entry in log.read_text().splitlines() if '"event":"startup"' in entry]
    expected = line.replace(":4001", f":{port}").replace(":4000", f":{nothing_there}")
    volatile = ("pid", "open_files", "max_connections")
    assert masked(written, *volatile) == masked(expected, *volatile)
    assert sidecar.returncode == -signal.SIGINT and "Traceback" not in log.read_text()
