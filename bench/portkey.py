"""The peer gateway the benchmark measures against: Portkey's open-source gateway, from npm.

``bench/portkey/package.json`` pins ``@portkey-ai/gateway`` 1.15.2 and overrides ``@hono/node-server`` to
1.14.1 (newer versions break its streaming). It is installed with ``npm ci`` into a cache directory outside
the repository (``$BENCH_PORTKEY_DIR``, else ``$XDG_CACHE_HOME/auto-ai-router/portkey``, else
``~/.cache/auto-ai-router/portkey``), never into the repository, and started headless under
``NODE_ENV=production``. Each request names the fake upstream with ``x-portkey-provider: openai`` and
``x-portkey-custom-host``, so Portkey forwards it unchanged, as the router does.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

from harness import BENCH, Procs, Target, free_port

SPEC = BENCH / "portkey"
VERSION = "1.15.2"
NODE_SERVER = "1.14.1"
ENTRY = Path("node_modules/@portkey-ai/gateway/build/start-server.js")


def cache_dir() -> Path:
    if custom := os.environ.get("BENCH_PORTKEY_DIR"):
        return Path(custom)
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "auto-ai-router" / "portkey"


def _version(home: Path, package: str) -> str | None:
    try:
        return json.loads((home / "node_modules" / package / "package.json").read_text())["version"]
    except (OSError, ValueError, KeyError):
        return None


def installed(home: Path | None = None) -> bool:
    """The pinned versions are in the cache, from the committed spec (a changed spec means reinstall)."""
    home = home or cache_dir()
    try:
        same_spec = (home / "package.json").read_bytes() == (SPEC / "package.json").read_bytes()
    except OSError:
        return False
    return (same_spec and _version(home, "@portkey-ai/gateway") == VERSION
            and _version(home, "@hono/node-server") == NODE_SERVER and (home / ENTRY).exists())


def install() -> Path:
    """Install (once) into the cache directory; the lock file makes it the same tree every time."""
    home = cache_dir()
    if installed(home):
        return home
    if not shutil.which("npm") or not shutil.which("node"):
        raise RuntimeError("--portkey needs node and npm on PATH")
    home.mkdir(parents=True, exist_ok=True)
    for name in ("package.json", "package-lock.json"):
        shutil.copyfile(SPEC / name, home / name)
    print(f"installing @portkey-ai/gateway@{VERSION} into {home} ...", flush=True)
    # --ignore-scripts: its only install script is patch-package, with no patches in the published package
    out = subprocess.run(["npm", "ci", "--omit=dev", "--ignore-scripts", "--no-audit", "--no-fund"], cwd=home,
                         capture_output=True, text=True, timeout=600)
    if out.returncode or not installed(home):
        raise RuntimeError(f"npm ci failed in {home}:\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}")
    return home


def start(procs: Procs, upstream_port: int) -> Target:
    home = install()
    port = free_port()
    env = {**os.environ, "NODE_ENV": "production"}
    proc = procs.spawn("portkey", ["node", str(ENTRY), f"--port={port}", "--headless"], env=env, cwd=home)
    headers = {"content-type": "application/json", "authorization": "Bearer sk-bench-upstream",
               "x-portkey-provider": "openai", "x-portkey-custom-host": f"http://127.0.0.1:{upstream_port}/v1"}
    return Target("portkey", f"http://127.0.0.1:{port}", headers, proc=proc)
