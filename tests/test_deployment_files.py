"""The Docker files do what the README says: no local state in the image, an .env template naming every
variable compose requires, and the admin login created on first start the way scripts/run does."""

from __future__ import annotations

import fnmatch
import re
import shlex
import sqlite3
import subprocess

import yaml
from django.contrib.auth.hashers import check_password

from routerproject.supervisor import KILL_MARGIN
from tests.live import PYTHON, ROOT, _env

COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
ROUTER = COMPOSE["services"]["router"]


def ignored(path: str) -> bool:
    """Docker's rule: the last matching pattern of .dockerignore wins (``!`` re-includes)."""
    verdict = False
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate, pattern = line.startswith("!"), line.lstrip("!").lstrip("/")
        parts = path.split("/")
        prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
        if any(fnmatch.fnmatch(p, pattern) or fnmatch.fnmatch(p, pattern.removeprefix("**/")) for p in prefixes):
            verdict = not negate
    return verdict


def test_the_image_leaves_out_local_environments_history_databases_and_secrets():
    for path in (".venv/bin/python", ".git/HEAD", "router.sqlite3", "router.sqlite3-journal", ".env",
                 "proxy/__pycache__/views.cpython-313.pyc", ".pytest_cache/README.md"):
        assert ignored(path), path
    for path in ("manage.py", "proxy/views.py", "requirements.txt", "router.sample.yaml", "examples/vertex-sa.json",
                 ".env.example", "templates/admin/index.html"):
        assert not ignored(path), path


def test_env_example_names_every_variable_compose_requires():
    example = dict(line.split("=", 1) for line in (ROOT / ".env.example").read_text().splitlines()
                   if line and not line.startswith("#"))
    text = (ROOT / "docker-compose.yml").read_text()
    required = set(re.findall(r"\$\{(\w+):\?", text))
    assert required >= {"DJANGO_SECRET_KEY", "ROUTER_ENCRYPTION_KEY"}
    assert required | {"ROUTER_ADMIN_PASSWORD"} <= set(example)
    assert ROUTER["environment"]["ROUTER_ADMIN_PASSWORD"] == "${ROUTER_ADMIN_PASSWORD:-}"
    assert ".env" in (ROOT / ".gitignore").read_text().split()


def test_compose_start_command_creates_the_admin_login(tmp_path):
    """Run the router service's start steps (all but the final exec of the server) as compose would."""
    command = ROUTER["command"]
    script = shlex.split(command)[-1]
    steps = [s.strip() for s in script.split("&&")]
    assert steps[-1] == "exec python manage.py serve --host 0.0.0.0 --port 8080", steps[-1]
    assert "python manage.py ensure_admin" in steps
    db = tmp_path / "compose.sqlite3"
    env = _env(db, {"ROUTER_CONFIG": str(ROOT / "router.sample.yaml"), "ROUTER_ADMIN_PASSWORD": "from-the-env-file"})
    for step in steps[:-1]:
        argv = shlex.split(step.replace("$${ROUTER_CONFIG}", env["ROUTER_CONFIG"]))
        assert argv[:2] == ["python", "manage.py"], step
        out = subprocess.run([PYTHON, *argv[1:]], cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
        assert out.returncode == 0, (step, out.stderr)
    assert "Admin login created: user 'admin'" in out.stdout
    with sqlite3.connect(db) as conn:
        [(password,)] = conn.execute("SELECT password FROM auth_user WHERE username = 'admin' AND is_superuser")
    assert check_password("from-the-env-file", password)


def test_the_image_and_compose_serve_with_one_worker_per_core_and_shared_state():
    """``manage.py serve`` (workers: ROUTER_WORKERS, else one per core), never a bare single-process
    server; compose gives the workers Redis and waits for them to drain."""
    cmd = re.search(r"^CMD (.+)$", (ROOT / "Dockerfile").read_text(), re.M)
    assert cmd and yaml.safe_load(cmd.group(1)) == ["python", "manage.py", "serve", "--host", "0.0.0.0",
                                                     "--port", "8080"]
    env = ROUTER["environment"]
    assert env["ROUTER_WORKERS"] == "${ROUTER_WORKERS:-}" and env["ROUTER_SERVER"] == "${ROUTER_SERVER:-uvicorn}"
    assert env["REDIS_URL"].startswith("redis://")
    grace = float(env.get("ROUTER_SHUTDOWN_GRACE_SECONDS", 30))
    assert int(ROUTER["stop_grace_period"].rstrip("s")) >= grace + KILL_MARGIN
