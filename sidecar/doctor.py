"""``litellm-budget-sidecar doctor --key sk-...``: the budget truth of one key, for an operator.

It asks LiteLLM three things and compares them:

- **what LiteLLM enforces now**: ``GET /cursor/v1/models`` with the key itself (and the end user named by
  ``--end-user``): budget-checked on every version, spends nothing - the refusal a paid call would get,
  with the figure of LiteLLM's counter in its message;
- **what LiteLLM records**: the key's budget chain read with the admin key (``levels.chain``: key, key
  windows, team, team membership, user, end user, organisation - spend, ``max_budget``, reset time);
- **what each policy would answer**: the models the key may access and which of them are free, and
  LiteLLM's own ``GET /v1/models`` for that key (what ``blocked`` passes on).

The verdict (``levels.judge``). A disagreement is asked again every 2 s for up to ``--settle`` seconds,
as LiteLLM's records lag its counters by its batch write; by default that is the sidecar's own grace,
the ``phantom_after`` setting (30 s), and the rule is the sidecar's (``levels.graced``): a refusal the
records do not bear out is a phantom once it has lasted that long, so ``doctor`` and the budget view
call a new phantom alike.

======================  ==================================================================  =====
``within``              LiteLLM serves the key and no level is recorded as spent            0
``spent``               LiteLLM refuses it, and the refusing level is recorded as spent     0
``phantom``             LiteLLM refuses it, the refusing level is recorded under budget     1
``inconsistent``        LiteLLM serves it, a level is recorded as spent                     1
``unknown``             LiteLLM refuses it at a level its records do not show               2
======================  ==================================================================  =====

Anything that prevents a diagnosis (bad arguments, no admin key, a key LiteLLM does not know, LiteLLM or
the admin key refused) is one line on stderr and exit 2. The raw key is never printed: the key appears as
its log label and, where a LiteLLM route or counter needs it, as LiteLLM's own token (its SHA-256).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import sys
import textwrap
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from http.cookiejar import CookieJar, DefaultCookiePolicy
from typing import Any

import httpx

from sidecar.litellm.admin import AdminLookups, LookupFailed, admin_http_client
from sidecar.litellm.budget import PROBE_ROUTE
from sidecar.litellm.budget_errors import BudgetLevel, Reading, error_of
from sidecar.litellm.credentials import key_hash, key_label
from sidecar.litellm.levels import Finding, Level, Verdict, chain, graced, judge
from sidecar.litellm.policy import spent_models, usable
from sidecar.litellm.rules import release_of
from sidecar.metrics import Metrics
from sidecar.settings import Settings, SettingsError, load_settings

EXIT = {
    Finding.WITHIN: 0,
    Finding.SPENT: 0,
    Finding.PHANTOM: 1,
    Finding.INCONSISTENT: 1,
    Finding.UNKNOWN: 2,
}
DISAGREE = (Finding.PHANTOM, Finding.INCONSISTENT)  # LiteLLM's records and what it enforces part
LONGEST_SETTLE = 600.0  # seconds
END_USER_HEADER = "x-litellm-end-user-id"


class CannotDiagnose(Exception):
    """One line saying why the doctor cannot tell; exit 2."""


@dataclass
class Diagnosis:
    litellm: dict[str, Any]
    key: dict[str, Any]
    refused: dict[str, Any] | None
    levels: list[dict[str, Any]]
    verdict: Finding
    reason: str
    models: dict[str, list[str]]
    usable: dict[str, Any]  # what LiteLLM serves the key now: its class (``policy.Usable``) and the models
    policies: dict[str, Any]
    advice: list[str] = field(default_factory=list)
    waited: float = 0.0  # seconds spent waiting for the records to agree
    disagree: bool = False  # LiteLLM's records and what it enforces part (a phantom within its grace too)

    @property
    def exit_code(self) -> int:
        return EXIT[self.verdict]

    def as_json(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict,
            "reason": self.reason,
            "exit_code": self.exit_code,
            "waited": self.waited,
            "litellm": self.litellm,
            "key": self.key,
            "refused": self.refused,
            "levels": self.levels,
            "models": self.models,
            "usable": self.usable,
            "policies": self.policies,
            "advice": self.advice,
        }


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="litellm-budget-sidecar doctor",
        description="Whether LiteLLM refuses one key for its budget, whether its records agree, and why.",
    )
    parser.add_argument("--key", required=True, help="the virtual key to diagnose; '-' reads it from stdin")
    parser.add_argument("--end-user", help="the end user (customer) the key's requests name")
    parser.add_argument("--json", action="store_true", help="print the diagnosis as JSON")
    parser.add_argument(
        "--settle",
        type=float,
        metavar="SECONDS",
        help="how long to wait for LiteLLM's records to catch up with a refusal they do not bear out "
        "before calling it a phantom (LiteLLM writes spend in batches; default: the sidecar's own "
        "grace, SIDECAR_PHANTOM_AFTER, 30)",
    )
    parser.add_argument("--config", metavar="PATH", help="YAML settings file (also SIDECAR_CONFIG)")
    parser.add_argument("--upstream-url", help="LiteLLM's URL (default SIDECAR_UPSTREAM_URL)")
    parser.add_argument("--admin-key", help="admin credential; prefer SIDECAR_ADMIN_KEY (flags show in ps)")
    return parser


def main(argv: Sequence[str]) -> int:
    parser = _parser()
    args = parser.parse_args(argv)  # exits 2 on bad arguments, with argparse's one line
    key = ""
    try:
        key = (sys.stdin.readline() if args.key == "-" else args.key).strip().removeprefix("\ufeff")
        if not key:
            raise CannotDiagnose("--key is empty")
        if not _HEADER_SAFE.fullmatch(key):
            raise CannotDiagnose("--key holds characters no API key has (spaces, control or non-ASCII ones)")
        if args.end_user is not None and not _HEADER_SAFE.fullmatch(args.end_user):
            raise CannotDiagnose("--end-user must be printable ASCII without spaces (it is sent in a header)")
        settings = _settings(args)
        settle = settings.phantom_after if args.settle is None else args.settle
        if args.settle is not None and not 0 <= args.settle <= LONGEST_SETTLE:
            raise CannotDiagnose(f"--settle must be between 0 and {LONGEST_SETTLE:g} seconds")
        if settle > LONGEST_SETTLE:
            raise CannotDiagnose(
                f"phantom_after ({settle:g}) is longer than the doctor waits ({LONGEST_SETTLE:g} s): "
                "pass --settle"
            )
        diagnosis = asyncio.run(diagnose(settings, key, args.end_user or None, settle, _waiting))
    except (CannotDiagnose, SettingsError) as exc:
        print(f"litellm-budget-sidecar doctor: {_hidden(str(exc), key)}", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - anything unforeseen is "cannot tell", never a verdict's exit
        print(f"litellm-budget-sidecar doctor: cannot diagnose: {type(exc).__name__}", file=sys.stderr)
        return 2
    shown = json.dumps(diagnosis.as_json(), indent=2) if args.json else render(diagnosis)
    try:
        print(_hidden(shown, key), flush=True)  # LiteLLM's messages as it wrote them, but never the key
    except BrokenPipeError:  # `doctor ... | head -3`: the reader has what it wanted; the verdict stands
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return diagnosis.exit_code


_HEADER_SAFE = re.compile(r"[\x21-\x7e]+")  # printable ASCII, no space: what an HTTP header value may carry


def _hidden(text: str, key: str) -> str:
    """``text`` with the raw key replaced by its label: LiteLLM's messages may echo what it was sent."""
    return text.replace(key, f"<key {key_label(key)}>") if key else text


def _settings(args: argparse.Namespace) -> Settings:
    # The doctor answers for every policy: the sidecar's own policy (and its need of an admin key) is moot.
    settings = load_settings(
        args.config, upstream_url=args.upstream_url, admin_key=args.admin_key, policy="blocked"
    )
    if settings.admin_key is None or not settings.admin_key.get_secret_value():
        raise CannotDiagnose("an admin key is needed to read the budget chain: set SIDECAR_ADMIN_KEY")
    return settings


def _waiting(settle: float) -> None:
    print(
        f"litellm-budget-sidecar doctor: LiteLLM's records disagree with what it enforces; LiteLLM writes "
        f"spend in batches, so checking again for up to {settle:g} s",
        file=sys.stderr,
        flush=True,
    )


async def diagnose(
    settings: Settings,
    key: str,
    end_user: str | None,
    settle: float = 0.0,
    waiting: Callable[[float], None] = lambda settle: None,
) -> Diagnosis:
    """Diagnose ``key``; a disagreement (``phantom``, ``inconsistent``) is checked again every 2 s for up
    to ``settle`` seconds (``waiting`` is told once), as LiteLLM's records lag its counters by its batch
    write (``proxy_batch_write_at``, 10 s by default): a phantom is one once it has lasted ``settle``
    (``levels.graced``, the sidecar's rule with its ``phantom_after``)."""
    assert settings.admin_key is not None
    timeout = httpx.Timeout(settings.admin_timeout, connect=settings.connect_timeout)
    jar = CookieJar(policy=DefaultCookiePolicy(allowed_domains=[]))
    caller = httpx.AsyncClient(
        base_url=settings.upstream_url, timeout=timeout, cookies=jar, follow_redirects=False, trust_env=False
    )
    admin_client = admin_http_client(
        settings.upstream_url, settings.admin_key.get_secret_value(), settings.admin_timeout
    )
    async with caller, admin_client:
        admin = AdminLookups(
            admin_client,
            catalog_ttl=0,
            scope_ttl=0,
            metrics=Metrics(),
            extra_free=settings.free_models,
            budget_ttl=0,
        )
        started, waited = time.monotonic(), 0.0
        while True:
            lasted = time.monotonic() - started
            diagnosis = await _diagnose(settings.upstream_url, caller, admin, key, end_user, lasted, settle)
            left = settle - lasted
            if not diagnosis.disagree or left <= 0:
                break
            if not waited:
                waiting(settle)
            pause = min(2.0, left)
            await asyncio.sleep(pause)
            waited += pause
        diagnosis.waited = round(waited, 1)
        if diagnosis.verdict in DISAGREE:
            diagnosis.advice.append(
                f"The records still disagreed after {diagnosis.waited:g} s (--settle {settle:g}); LiteLLM "
                "writes spend to its database every proxy_batch_write_at seconds (10 by default)."
            )
        return diagnosis


async def _diagnose(
    url: str,
    caller: httpx.AsyncClient,
    admin: AdminLookups,
    key: str,
    end_user: str | None,
    lasted: float,
    grace: float,
) -> Diagnosis:
    """The diagnosis now, a disagreement having lasted ``lasted`` seconds so far (``grace``: see above)."""
    headers = {"Authorization": f"Bearer {key}"}
    if end_user is not None:
        headers[END_USER_HEADER] = end_user
    version = await _version(caller)
    probe = await _ask(caller, PROBE_ROUTE, headers, url)
    body = _json(probe)
    reading = Reading.of(probe.status_code, body)
    refusal = reading.refusal
    if probe.status_code >= 500:
        raise CannotDiagnose(f"LiteLLM failed: {PROBE_ROUTE} answered {_said(probe, body)}")
    if not (refusal is not None or reading.passed):
        raise CannotDiagnose(f"LiteLLM does not accept this key: {PROBE_ROUTE} answered {_said(probe, body)}")
    token = key_hash(key)
    try:
        levels = chain(await admin.budget_records(token, end_user))
        catalog, access = await admin.access(token)
    except LookupFailed as exc:
        if exc.status in (401, 403):
            raise CannotDiagnose(f"LiteLLM refuses the admin key: {exc}") from None
        if exc.status == 404:
            raise CannotDiagnose(f"LiteLLM knows no such key: {exc}") from None
        raise CannotDiagnose(f"an admin look-up failed: {exc}") from None
    listed = await _ask(caller, "/v1/models", headers, url)
    accessible = [name for name in catalog.names if access.allows(name)]
    free = [name for name in accessible if catalog.is_free(name)]
    # What LiteLLM serves the key now, as discovery and the budget view decide it (``policy.usable``).
    spent_at = (refusal.level, *(level.name for level in levels if level.spent)) if refusal else ()
    now = usable(spent_at, release_of(version))
    admits = now.admits(catalog.is_free, access.allows, spent_models(None, refusal))

    if refusal is not None:
        first = judge(refusal, levels)
        disagree = first.verdict == Finding.PHANTOM
        judged = graced(first, lasted, grace)
        verdict, reason, blocking = judged.verdict, _reason(judged), judged.recorded
    else:
        spent = [level for level in levels if level.spent]
        blocking = None
        disagree = bool(spent)
        if spent:
            verdict = Finding.INCONSISTENT
            reason = (
                f"LiteLLM serves the key although its records show the {spent[0].name} budget spent: its "
                "counter is behind its records, or a budget reset has not reached them yet"
            )
        else:
            verdict, reason = Finding.WITHIN, "LiteLLM serves the key and its records show no spent budget"
    diagnosis = Diagnosis(
        litellm={"url": url, "version": version},
        key={"label": key_label(key), "token": token, "end_user": end_user},
        refused={"status": probe.status_code, **refusal.shown()} if refusal is not None else None,
        levels=[level.shown(level == blocking) for level in levels],
        verdict=verdict,
        reason=reason,
        models={"accessible": accessible, "free": free},
        usable={"now": now, "models": [name for name in accessible if admits(name)]},
        policies={
            "all": accessible,
            "free_only": [name for name in accessible if admits(name)],
            "blocked": _litellms_answer(listed),
        },
        disagree=disagree,
    )
    if verdict == Finding.PHANTOM and blocking is not None:
        diagnosis.advice = phantom_advice(version, blocking, token)
    elif verdict == Finding.INCONSISTENT:
        diagnosis.advice = [
            "Check the level's reset time: LiteLLM's reset job writes the records after it resets counters."
        ]
    return diagnosis


async def _version(client: httpx.AsyncClient) -> str | None:
    """LiteLLM's version from its unauthenticated OpenAPI document (every version has it)."""
    try:
        answer = await client.get("/openapi.json")
    except httpx.HTTPError as exc:
        raise CannotDiagnose(f"cannot reach LiteLLM at {client.base_url}: {type(exc).__name__}") from None
    info = _json(answer)
    version = info.get("info", {}).get("version") if isinstance(info, dict) else None
    return version if isinstance(version, str) else None


async def _ask(client: httpx.AsyncClient, path: str, headers: dict[str, str], url: str) -> httpx.Response:
    try:
        return await client.get(path, headers=headers)
    except httpx.HTTPError as exc:
        raise CannotDiagnose(f"cannot reach LiteLLM at {url}: {type(exc).__name__}") from None


def _json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


def _said(response: httpx.Response, body: Any) -> str:
    message = (error_of(body) or {}).get("message")
    if message is None and isinstance(body, dict):
        message = body.get("detail")
    return f"{response.status_code} {message}" if isinstance(message, str) else str(response.status_code)


def _litellms_answer(listed: httpx.Response) -> dict[str, Any]:
    body = _json(listed)
    data = body.get("data") if isinstance(body, dict) else None
    if listed.status_code == 200 and isinstance(data, list):
        ids = [m.get("id") for m in data if isinstance(m, dict)]
        return {"status": 200, "models": [i for i in ids if isinstance(i, str)]}
    return {"status": listed.status_code, "error": _said(listed, body)}


def _reason(judged: Verdict) -> str:
    level = judged.recorded
    if judged.verdict == Finding.SPENT and level is not None:
        return f"the {level.name} budget is spent: recorded {_figure(level.spend)} of {level.max_budget:g}"
    if judged.verdict == Finding.PHANTOM and level is not None:
        return (
            f"LiteLLM enforces {_figure(judged.enforced)} at the {level.name} level, its records say "
            f"{_figure(level.spend)} of {level.max_budget:g}: its spend counter runs ahead of its own records"
        )
    return judged.reason or "the refusing level cannot be compared"


def _figure(value: float | None) -> str:
    return "no figure" if value is None else f"{value:g}"


def counter_name(level: Level, token: str) -> str:
    """The name of LiteLLM's spend counter that enforces ``level`` (``proxy_server.py``)."""
    if level.name == BudgetLevel.KEY:
        return f"spend:key:{token}"
    if level.name == BudgetLevel.KEY_WINDOW:
        return f"spend:key:{token}:window:{level.id}"
    return f"spend:{level.name}:{level.id}"  # a team member's id is "user:team", as LiteLLM's counter


def phantom_advice(version: str | None, level: Level, token: str) -> list[str]:
    """What clears a phantom at ``level`` on that LiteLLM, and which settings govern its counters."""
    release = release_of(version)
    before_188 = release is not None and release < (1, 88, 0)
    modern = release is not None and release >= (1, 106, 0)
    counter = counter_name(level, token)
    spend = level.spend or 0.0
    advice = [
        f"LiteLLM enforces this budget from its spend counter {counter!r}, not from its database. "
        "Without Redis the counter lives in each LiteLLM process's memory for 600 s from its creation "
        "(a restart clears it); with Redis it expires 60 s after its last increment, unless a leaked "
        "budget reservation keeps it alive (LiteLLM #27639).",
    ]
    if before_188 and level.name in (BudgetLevel.USER, BudgetLevel.END_USER, BudgetLevel.ORG):
        return [
            f"LiteLLM {version} checks {level.name} budgets on its cached {level.name} object (60 s; "
            "organisations on every request from the database): the refusal should clear within a minute. "
            "If it does not, restart LiteLLM."
        ]
    if level.name == BudgetLevel.KEY and modern:
        advice.append(
            f'Clear it now: POST /key/{token}/reset_spend with {{"reset_to": {spend}}} (an admin key): '
            "LiteLLM sets the counter to the recorded spend at once."
        )
    elif level.name == BudgetLevel.TEAM_MEMBER and modern:
        user, _, team = level.id.partition(":")
        advice.append(
            f'Clear it now: POST /team/{team}/member/{user}/reset_spend with {{"reset_to": {spend}}} '
            "(an admin key): LiteLLM sets the counter to the recorded spend at once."
        )
    elif level.name == BudgetLevel.USER and modern:
        advice.append(
            f'Clear it now: POST /user/update with {{"user_id": "{level.id}", "spend": {spend}}} (an '
            "admin key): LiteLLM drops the counter and reads the spend again."
        )
    else:
        advice.append(
            f"No LiteLLM route resets this counter on {version or 'this version'}: with Redis delete "
            f"the key {counter!r}; without, restart LiteLLM or wait for the counter to expire."
        )
    if release is not None and not before_188:
        advice.append(
            "Budget reservations are what leak: general_settings.disable_budget_reservation: true "
            "turns them off (LiteLLM >= 1.88)."
        )
    if modern:
        advice.append(
            "general_settings.fail_closed_budget_enforcement: true makes LiteLLM check its database when "
            "it cannot verify a counter, and refuse when it cannot (LiteLLM >= 1.106)."
        )
    return advice


def render(d: Diagnosis) -> str:
    """The diagnosis as an operator reads it."""
    version = d.litellm["version"] or "unknown version"
    lines = [
        f"LiteLLM {version} at {d.litellm['url']}",
        f"key {d.key['label']} (token {d.key['token'][:12]}…)"
        + (f", end user {d.key['end_user']}" if d.key["end_user"] else ""),
        "",
    ]
    if d.refused:
        r = d.refused
        figure = "states no figure" if r["enforced"] is None else f"at {_figure(r['enforced'])}"
        lines.append(f"LiteLLM refuses it now: {r['status']} at the {r['scope']} level, its counter {figure}")
        lines.append(f"  {r['message']!r}")
    else:
        lines.append("LiteLLM serves it now (no budget refusal)")
    lines += ["", "budget chain:"]
    if d.levels:
        rows = [("level", "id", "spend", "max_budget", "remaining", "resets_at", "")]
        for lv in d.levels:
            mark = "<- refuses" if lv["blocking"] else ("spent" if lv["spent"] else "")
            spend = "n/a" if lv["spend"] is None else _figure(lv["spend"])
            rows.append(
                (
                    lv["scope"],
                    lv["id"] or "-",
                    spend,
                    f"{lv['max_budget']:g}",
                    f"{lv['remaining']:g}",
                    lv["resets_at"] or "-",
                    mark,
                )
            )
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        for row in rows:
            cells = (cell.ljust(width) for cell, width in zip(row, widths, strict=True))
            lines.append(("  " + "  ".join(cells)).rstrip())
    else:
        lines.append("  no level has a budget")
    lines += ["", *_wrap(f"verdict: {d.verdict.upper()} - {d.reason}", "", "  "), ""]
    lines.append(f"models it may access: {', '.join(d.models['accessible']) or 'none'}")
    lines.append(f"  of which free: {', '.join(d.models['free']) or 'none'}")
    lines.append(
        f"  usable now ({d.usable['now']}): {', '.join(d.usable['models']) or 'none'}"
        + (" - LiteLLM refuses free models too at this level" if d.usable["now"] == "none" else "")
    )
    lines.append("what each policy answers on /v1/models:")
    lines.append(f"  all:       {', '.join(d.policies['all']) or 'none'}")
    lines.append(f"  free_only: {', '.join(d.policies['free_only']) or 'none'}")
    blocked = d.policies["blocked"]
    if "models" in blocked:
        lines.append(f"  blocked:   LiteLLM's own list: {', '.join(blocked['models']) or 'none'}")
    else:
        lines.append(f"  blocked:   LiteLLM's own answer: {blocked['error']}")
    if d.advice:
        lines += ["", "advice:"]
        for advice in d.advice:
            lines += _wrap(advice, "  - ", "    ")
    return "\n".join(lines)


def _wrap(text: str, first: str, rest: str) -> list[str]:
    """``text`` in lines of at most 100 characters; names, routes and figures are never split."""
    return textwrap.wrap(
        text,
        100,
        initial_indent=first,
        subsequent_indent=rest,
        break_long_words=False,
        break_on_hyphens=False,
    )
