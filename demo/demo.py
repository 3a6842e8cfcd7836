"""See the fix: a real LiteLLM with spent budgets, what clients get from it directly and through the sidecar.

Starts a real LiteLLM proxy (with Postgres, via ../shared/litellm-upstream: no Docker needed), seeds keys
whose team, own or user budget is spent, starts the sidecar once per policy, and prints side by side what
``GET /v1/models`` and a chat request answer directly and through the sidecar. Stops everything at the end
(``--keep`` leaves it running and prints the URLs). ``--levels`` prints instead one Markdown table row per
seeded budget level: what LiteLLM answers on ``/v1/models`` and a paid chat, and what the sidecar answers
under each policy (the README's version table is made with it).

    python demo/demo.py [--version 1.88.6] [--keep] [--levels]
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

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
WIDTH = 52
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
    parser.add_argument("--levels", action="store_true", help="one Markdown row per seeded budget level")
    args = parser.parse_args()
    if not TOOL.exists():
        sys.exit(f"demo: needs the LiteLLM harness at {TOOL}")
    if not shutil.which("node"):
        sys.exit("demo: needs Node.js (the harness runs LiteLLM's database engine shim with it)")

    name = "sidecar_demo_" + args.version.replace(".", "_")
    say(f"Starting a real LiteLLM {args.version} with Postgres (the first run installs it: 1-2 minutes) ...")
    env = harness("up", "--version", args.version, "--name", name)
    url, master = env["LITELLM_URL"], env["LITELLM_MASTER_KEY"]
    say("Seeding keys whose budgets are spent ...")
    keys = harness("seed", "--url", url, "--master-key", master)
    logs = Path(env["LITELLM_UPSTREAM_STATE"]) / "instances" / name
    sidecars = {policy: start_sidecar(url, master, policy, logs) for policy in POLICIES}
    try:
        if args.levels:
            levels(args.version, url, keys, {p: u for p, (u, _) in sidecars.items()})
            return 0
        say(
            f"\nLiteLLM {args.version} at {url}; sidecar per policy at "
            + ", ".join(f"{p} {u}" for p, (u, _) in sidecars.items())
        )
        with httpx.Client(timeout=30) as client:
            for principal, what in PRINCIPALS.items():
                key = keys[principal]
                auth = {"Authorization": f"Bearer {key}"}
                say(f"\n{principal} ({key}: {what})")
                say(f"  {'':<19}{'directly from LiteLLM':<{WIDTH}}  through the sidecar")
                direct = summary(client.get(url + "/v1/models", headers=auth))
                for policy, (sidecar_url, _) in sidecars.items():
                    row(
                        f"models, {policy}",
                        direct,
                        summary(client.get(sidecar_url + "/v1/models", headers=auth)),
                    )
                chat_url = sidecars["free_only"][0] + "/v1/chat/completions"
                for model in ("free-model", "paid-model"):
                    body = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
                    left = client.post(url + "/v1/chat/completions", json=body, headers=auth)
                    right = client.post(chat_url, json=body, headers=auth)
                    row(f"chat {model}", chat_summary(left), chat_summary(right))
        say(
            "\nThe sidecar lists what each key may use (free_only: only the zero-cost models); chats pass "
            "through untouched, so a spent budget still refuses paid models with LiteLLM's own error."
        )
        if args.keep:
            say(
                f"\nLeft running (--keep). Try: curl -s {sidecars['all'][0]}/v1/models "
                f"-H 'Authorization: Bearer {keys['KEY_TEAM_BROKE']}'\n"
                f"Stop with: {TOOL} down --name {name}; pkill -f litellm-budget-sidecar"
            )
            return 0
    finally:
        if not args.keep:
            for _, process in sidecars.values():
                process.terminate()
            subprocess.run(
                [str(TOOL), "down", "--name", name], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
    return 0


def chat_summary(response: httpx.Response) -> str:
    if response.status_code == 200:
        return f'200 "{response.json()["choices"][0]["message"]["content"]}"'
    return summary(response)


if __name__ == "__main__":
    sys.exit(main())
