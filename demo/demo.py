"""See the fix: a real LiteLLM with spent budgets, what clients get from it directly and through the sidecar.

Starts a real LiteLLM proxy (with Postgres, via ../shared/litellm-upstream: no Docker needed) in a state dir
of its own, seeds keys whose team or own budget is spent, creates a read-only admin key for the sidecar (a
``proxy_admin_viewer`` user's), starts the sidecar once per policy, and prints what ``GET /v1/models`` and a
chat request answer directly and through the sidecar, with the headers the sidecar added (``--verbose``:
LiteLLM's full messages). Everything it started - the sidecars, LiteLLM, its fake provider and its
PostgreSQL - is stopped at the end, also on failure, Ctrl-C or SIGTERM; ``--keep`` leaves them running and
prints how to stop exactly those. ``--levels`` prints instead one Markdown table row per seeded budget level:
what LiteLLM answers on ``/v1/models`` and a paid chat, and what the sidecar answers under each policy (the
version table in docs/budget-model.md is made with it).

    python demo/demo.py [--version 1.88.6] [--keep] [--verbose] [--levels]
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from types import FrameType

import httpx

ROOT = Path(__file__).resolve().parents[1]
TOOL = ROOT.parent / "shared" / "litellm-upstream" / "litellm-upstream"
SIDECAR = Path(sys.executable).parent / "litellm-budget-sidecar"
POLICIES = ("all", "free_only", "blocked")
PRINCIPALS = {
    "KEY_TEAM_BROKE": "team budget spent",
    "KEY_KEY_BROKE": "key budget spent",
    "KEY_FREE_ONLY": "team spent, key limited to free-model",
}
WIDTH = 52  # --verbose: the width of each side's column
VIEWER = "sk-budget-sidecar-demo-viewer"  # the sidecar's read-only admin key
# Every budget level the harness seeds (where the version can express it), for --levels.
LEVELS = {
    "KEY_KEY_BROKE": "key",
    "KEY_WINDOW_BROKE": "key window (1d)",
    "KEY_TEAM_BROKE": "team",
    "KEY_MEMBER_BROKE": "team member",
    "KEY_USER_BROKE": "user (personal key)",
    "END_USER_BROKE": "end user (header)",
    "KEY_ORG_BROKE": "organisation",
}
UNSEEDED = {
    "KEY_WINDOW_BROKE": "no key budget windows before 1.88",
    "KEY_ORG_BROKE": "organisations need an enterprise licence from 1.106",
}


def say(text: str = "") -> None:
    print(text, flush=True)


def exports(text: str) -> dict[str, str]:
    pairs = (shlex.split(line)[1].partition("=") for line in text.splitlines() if line.startswith("export "))
    return {name: value for name, _, value in pairs}


def harness(*args: str) -> dict[str, str]:
    result = subprocess.run([str(TOOL), *args], stdout=subprocess.PIPE, text=True)  # progress goes to stderr
    if result.returncode != 0:
        sys.exit(f"demo: litellm-upstream {args[0]} failed (see above)")
    return exports(result.stdout)


def viewer_key(url: str, master: str) -> str:
    """A key of a ``proxy_admin_viewer`` user: all the sidecar's admin look-ups need (docs/security.md, "Use a
    read-only admin key"); created with the master key, which the sidecar then never sees."""
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {master}"}, timeout=30) as admin:
        admin.post("/user/new", json={"user_id": "budget-sidecar-demo", "user_role": "proxy_admin_viewer"})
        admin.post("/key/generate", json={"user_id": "budget-sidecar-demo", "key": VIEWER})
        if admin.get("/key/info", params={"key": VIEWER}).status_code != 200:
            sys.exit("demo: could not create the read-only admin key")
    return VIEWER


def stop_on_sigterm() -> None:
    """SIGTERM stops the demo as Ctrl-C does: through the clean-up in ``main``."""

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def start_sidecar(
    upstream: str, admin_key: str, policy: str, logs: Path
) -> tuple[str, subprocess.Popen[bytes]]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIDECAR_")}
    env.update(
        SIDECAR_UPSTREAM_URL=upstream,
        SIDECAR_ADMIN_KEY=admin_key,
        SIDECAR_POLICY=policy,
        SIDECAR_PORT=str(port),
    )
    with (logs / f"sidecar-{policy}.log").open("wb") as log:
        process = subprocess.Popen([str(SIDECAR)], env=env, stdout=log, stderr=log)
    url = f"http://127.0.0.1:{port}"
    for _ in range(100):
        try:
            httpx.get(url + "/health/liveliness", timeout=1)
            return url, process
        except httpx.TransportError:
            time.sleep(0.1)
    process.terminate()
    sys.exit(f"demo: the sidecar did not start, see {logs}")


def summary(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return f"{response.status_code} {response.text[:60]}"
    if isinstance(body, dict) and isinstance(body.get("data"), list):
        return f"{response.status_code} models: " + ", ".join(m.get("id", "?") for m in body["data"])
    error = body.get("error", {}) if isinstance(body, dict) else {}
    if isinstance(error, dict):
        return f"{response.status_code} {error.get('type')}: {error.get('message')}"
    return f"{response.status_code} {str(body)[:60]}"


def brief(response: httpx.Response) -> str:
    """One compact cell: the status and the models listed, the error type, or the chat's answer."""
    try:
        body = response.json()
    except ValueError:
        return str(response.status_code)
    if isinstance(body, dict) and isinstance(body.get("data"), list):
        return f"{response.status_code} " + ", ".join(m.get("id", "?") for m in body["data"])
    if isinstance(body, dict) and isinstance(body.get("choices"), list) and body["choices"]:
        return f'{response.status_code} "{body["choices"][0]["message"]["content"]}"'
    error = body.get("error", {}) if isinstance(body, dict) else {}
    return f"{response.status_code} {error.get('type') if isinstance(error, dict) else str(body)[:40]}"


def added(response: httpx.Response) -> str:
    """The headers the sidecar added, without their ``x-sidecar-`` prefix."""
    found = [
        f"{k.removeprefix('x-sidecar-')}={v}"
        for k, v in response.headers.items()
        if k.startswith("x-sidecar-")
    ]
    return " ".join(found) or "-"


def row(label: str, left: str, right: str) -> None:
    lines_left = textwrap.wrap(left, WIDTH) or [""]
    lines_right = textwrap.wrap(right, WIDTH) or [""]
    for i in range(max(len(lines_left), len(lines_right))):
        head = label if i == 0 else ""
        a = lines_left[i] if i < len(lines_left) else ""
        b = lines_right[i] if i < len(lines_right) else ""
        say(f"  {head:<19}{a:<{WIDTH}}  {b}")


def credentials(principal: str, keys: dict[str, str]) -> dict[str, str]:
    if principal == "END_USER_BROKE":
        return {
            "Authorization": f"Bearer {keys['KEY_END_USER_CALLER']}",
            keys["END_USER_HEADER"]: keys[principal],
        }
    return {"Authorization": f"Bearer {keys[principal]}"}


def cell(response: httpx.Response, free: set[str]) -> str:
    """One table cell: the status and, for a list, how many models and whether paid ones are in it."""
    try:
        body = response.json()
    except ValueError:
        return str(response.status_code)
    if isinstance(body, dict) and isinstance(body.get("data"), list):
        ids = [m.get("id") for m in body["data"]]
        paid = [i for i in ids if i not in free]
        text = f"{response.status_code}: {len(ids)} models" + (" (paid too)" if paid else " (free)")
        scope = response.headers.get("x-sidecar-budget-scope")
        return text + (f", scope `{scope}`" if scope else "")
    if response.status_code == 200:
        return "200"
    return f"{response.status_code} refused"


def levels(version: str, url: str, keys: dict[str, str], sidecars: dict[str, str]) -> None:
    free = {"free-model", "free-model-2", "free-embedding"}
    chat = {"model": "paid-model", "messages": [{"role": "user", "content": "hi"}]}
    with httpx.Client(timeout=30) as client:
        for principal, level in LEVELS.items():
            if principal not in keys:  # the harness says why on stderr
                why = UNSEEDED.get(principal, "not seeded on this version")
                say(f"| {version} | {level} | {why} | | | | |")
                continue
            auth = credentials(principal, keys)
            cells = [
                cell(client.get(url + "/v1/models", headers=auth), free),
                cell(client.post(url + "/v1/chat/completions", json=chat, headers=auth), free),
                *(cell(client.get(sidecars[p] + "/v1/models", headers=auth), free) for p in POLICIES),
            ]
            say(f"| {version} | {level} | " + " | ".join(cells) + " |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--version", default="1.88.6", help="LiteLLM version to start (default 1.88.6)")
    parser.add_argument("--keep", action="store_true", help="leave LiteLLM and the sidecars running")
    parser.add_argument("--verbose", action="store_true", help="LiteLLM's full messages, side by side")
    parser.add_argument("--levels", action="store_true", help="one Markdown row per seeded budget level")
    args = parser.parse_args()
    if not TOOL.exists():
        sys.exit(f"demo: needs the LiteLLM harness at {TOOL}")
    if not shutil.which("node"):
        sys.exit("demo: needs Node.js (the harness runs LiteLLM's database engine shim with it)")

    name = "sidecar_demo_" + args.version.replace(".", "_")
    state = Path(tempfile.mkdtemp(prefix="sidecar-demo-", dir="/tmp"))
    state.chmod(0o711)  # as root, the harness runs PostgreSQL as user postgres, which must reach into it
    os.environ["LITELLM_UPSTREAM_STATE"] = str(state)  # everything the harness starts lives there
    # On stderr beside the harness's progress, so stdout stays the table; says where the logs are, and lets
    # a caller (the tests) find what this demo started from its own output.
    print(
        f"demo: state dir {state} (LiteLLM's, PostgreSQL's and the sidecars' logs)",
        file=sys.stderr,
        flush=True,
    )
    sidecars: dict[str, tuple[str, subprocess.Popen[bytes]]] = {}
    stop_on_sigterm()
    try:
        say(
            f"demo: starting a real LiteLLM {args.version} with PostgreSQL "
            "(its first start installs it: 1-2 min)"
        )
        env = harness("up", "--version", args.version, "--name", name)
        url, master = env["LITELLM_URL"], env["LITELLM_MASTER_KEY"]
        say("demo: seeding keys whose budgets are spent")
        keys = harness("seed", "--url", url, "--master-key", master)
        logs = state / "instances" / name
        if args.levels and _release(args.version) < (1, 106):
            admin, which = master, "the master key (a read-only key cannot read other users' budgets here)"
        else:
            admin, which = viewer_key(url, master), "a read-only proxy_admin_viewer key, not the master key"
        say(f"demo: starting the sidecar once per policy; its admin credential: {which}")
        for policy in POLICIES:
            sidecars[policy] = start_sidecar(url, admin, policy, logs)
        if args.levels:
            levels(args.version, url, keys, {p: u for p, (u, _) in sidecars.items()})
            return 0
        say(
            f"\nLiteLLM {args.version} at {url}; the sidecar at "
            + ", ".join(f"{u} ({p})" for p, (u, _) in sidecars.items())
        )
        with httpx.Client(timeout=30) as client:
            for principal, what in PRINCIPALS.items():
                show(client, principal, what, keys, url, sidecars, args.verbose)
        say(
            "\nThe sidecar lists what each key may use (free_only: only the zero-cost models) and says why "
            "in its headers; chats pass through untouched, so a spent budget still refuses paid models "
            "with LiteLLM's own error."
        )
        if args.keep:
            pids = " ".join(str(process.pid) for _, process in sidecars.values())
            say(
                f"\nLeft running (--keep). Try: curl -s {sidecars['all'][0]}/v1/models "
                f"-H 'Authorization: Bearer {keys['KEY_TEAM_BROKE']}'\n"
                f"Stop exactly what this demo started with:\n"
                f"  kill {pids}; {TOOL} down --state {state} --purge"
            )
            return 0
    except KeyboardInterrupt:
        say("\ndemo: interrupted; stopping what it started")
        return 130
    finally:
        if not args.keep:
            for _, process in sidecars.values():
                process.terminate()
            for _, process in sidecars.values():
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    process.kill()
            # Without --name: this state dir's every instance and its PostgreSQL, all started by this demo.
            signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the clean-up short
            subprocess.run(
                [str(TOOL), "down", "--state", str(state), "--purge"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
    return 0


def show(
    client: httpx.Client,
    principal: str,
    what: str,
    keys: dict[str, str],
    url: str,
    sidecars: dict[str, tuple[str, subprocess.Popen[bytes]]],
    verbose: bool,
) -> None:
    """What one key gets on /v1/models and a free and a paid chat, directly and through the sidecar."""
    auth = {"Authorization": f"Bearer {keys[principal]}"}
    asked: list[tuple[str, httpx.Response, httpx.Response]] = []
    direct = client.get(url + "/v1/models", headers=auth)
    for policy, (sidecar_url, _) in sidecars.items():
        asked.append((f"models, {policy}", direct, client.get(sidecar_url + "/v1/models", headers=auth)))
    chat_url = sidecars["free_only"][0] + "/v1/chat/completions"
    for model in ("free-model", "paid-model"):
        body = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
        left = client.post(url + "/v1/chat/completions", json=body, headers=auth)
        asked.append((f"chat {model}", left, client.post(chat_url, json=body, headers=auth)))
    say(f"\n{principal} ({what})")
    if verbose:
        say(f"  {'':<19}{'directly from LiteLLM':<{WIDTH}}  through the sidecar")
        for label, left, right in asked:
            row(label, chat_summary(left), chat_summary(right))
        return
    cells = [("", "LiteLLM", "the sidecar", "headers the sidecar added")]
    cells += [(label, brief(left), brief(right), added(right)) for label, left, right in asked]
    widths = [max(len(cell[i]) for cell in cells) for i in range(3)]
    for label, left, right, headers in cells:
        say(f"  {label:<{widths[0]}}  {left:<{widths[1]}}  {right:<{widths[2]}}  {headers}".rstrip())


def _release(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split(".")[:2])


def chat_summary(response: httpx.Response) -> str:
    if response.status_code == 200:
        return f'200 "{response.json()["choices"][0]["message"]["content"]}"'
    return summary(response)


if __name__ == "__main__":
    sys.exit(main())
