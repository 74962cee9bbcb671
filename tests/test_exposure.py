"""Defaults that do not expose: the local bind, loud warnings, check --deploy, admin login behind a TLS proxy."""

from __future__ import annotations

import re
import subprocess
import time
from http.cookies import SimpleCookie

import httpx
import pytest

from routerproject.exposure import DEFAULT_SECRET_KEY, addrport, daphne_bind, exposure_warnings, is_loopback
from tests.live import PYTHON, ROOT, LiveRouter, _env, free_port

SAMPLE = (ROOT / "router.sample.yaml").read_text()


def test_loopback_hosts_and_addrport():
    assert all(map(is_loopback, ["127.0.0.1", "127.8.0.1", "localhost", "::1", "[::1]"]))
    assert not any(map(is_loopback, ["0.0.0.0", "::", "192.168.1.10", "router.example"]))
    assert addrport("127.0.0.1", 8080) == "127.0.0.1:8080"
    assert addrport("::", 9000) == "[::]:9000"


def test_warnings_only_for_a_wide_bind_with_a_default():
    assert exposure_warnings("127.0.0.1", sample_key=True, secret_key=DEFAULT_SECRET_KEY) == []
    both = exposure_warnings("0.0.0.0", sample_key=True, secret_key=DEFAULT_SECRET_KEY)
    assert len(both) == 2 and "sk-router-local-dev" in both[0] and "DJANGO_SECRET_KEY" in both[1]
    assert exposure_warnings("0.0.0.0", sample_key=False, secret_key="a-real-random-secret") == []


def test_the_daphne_command_line_bind_is_read_from_its_arguments():
    assert daphne_bind(["/app/.venv/bin/daphne", "-b", "0.0.0.0", "-p", "8080", "routerproject.asgi:application"]) == (
        "0.0.0.0")
    assert daphne_bind(["/usr/lib/python3/site-packages/daphne/__main__.py", "--bind", "::", "app"]) == "::"
    assert daphne_bind(["/usr/bin/daphne", "routerproject.asgi:application"]) == "127.0.0.1"  # daphne's default
    assert daphne_bind(["/usr/bin/pytest", "-b", "0.0.0.0"]) is None


SERVE = ["manage.py", "serve"]  # as scripts/run starts it


def _serve(tmp_path, env: dict[str, str], *, until: str, timeout: float = 30, command=SERVE) -> str:
    """Start ``manage.py serve`` as scripts/run does, return its output once ``until`` shows (or it exits)."""
    live = LiveRouter(SAMPLE, tmp_path)  # a migrated database with the sample config imported
    log = tmp_path / f"serve-{free_port()}.log"
    with log.open("w") as out:
        proc = subprocess.Popen([PYTHON, *command], cwd=ROOT,
                                env=_env(live.db, env), stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and until not in log.read_text() and proc.poll() is None:
            time.sleep(0.1)
    finally:
        proc.terminate()
        proc.wait(10)
    return log.read_text()


def test_scripts_run_serves_on_loopback_by_default(tmp_path):
    assert "0.0.0.0" not in (ROOT / "scripts/run").read_text()
    assert "exec .venv/bin/python manage.py serve\n" in (ROOT / "scripts/run").read_text()
    port = free_port()
    out = _serve(tmp_path, {"ROUTER_PORT": str(port), "ROUTER_WORKERS": "2"}, until="Router serving on fd")
    assert f"Serving on http://127.0.0.1:{port}/ with 2 uvicorn workers" in out, out
    assert "WARNING: listening" not in out and "2 workers without REDIS_URL" in out


@pytest.mark.parametrize("how", ["scripts-run", "daphne-command", "servers-uvicorn"])
def test_a_wide_bind_with_the_sample_key_warns_loudly_before_serving(tmp_path, how):
    # 192.0.2.1 (TEST-NET-1) is not this machine's: the bind fails right after the warnings, so the
    # test never listens beyond loopback.
    port = str(free_port())
    command = {"scripts-run": SERVE,
               "daphne-command": ["-m", "daphne", "-b", "192.0.2.1", "-p", port, "routerproject.asgi:application"],
               "servers-uvicorn": ["-m", "routerproject.servers", "--server", "uvicorn"]}[how]
    out = _serve(tmp_path, {"ROUTER_HOST": "192.0.2.1", "ROUTER_PORT": port, "ROUTER_WORKERS": "2"}, until="rror",
                 command=command)
    assert "WARNING: listening on 192.0.2.1" in out, out
    assert "sk-router-local-dev" in out and "DJANGO_SECRET_KEY is the development default" in out


def test_check_deploy_flags_the_default_secret_key(tmp_path):
    def check(extra: dict[str, str]) -> str:
        env = _env(tmp_path / "unused.sqlite3", extra)
        env.pop("ROUTER_ENCRYPTION_KEY", None)
        env.update(extra)
        run = subprocess.run([PYTHON, "manage.py", "check", "--deploy"], cwd=ROOT, env=env, capture_output=True,
                             text=True, timeout=60)
        return run.stdout + run.stderr

    flagged = check({})
    assert "(router.W001) SECRET_KEY is the router's development default" in flagged
    assert "(router.W002) ROUTER_ENCRYPTION_KEY is not set" in flagged
    clean = check({"DJANGO_SECRET_KEY": "x" * 60 + "a-long-random-value-0123456789",
                   "ROUTER_ENCRYPTION_KEY": "a-long-production-passphrase"})
    assert "router.W00" not in clean


# ---- the admin behind a TLS-terminating proxy --------------------------------------------------------

PROXY_HEADERS = {"host": "router.internal:8080", "x-forwarded-host": "router.example",
                 "x-forwarded-proto": "https", "origin": "https://router.example"}


def _login_through_tls_proxy(router: LiveRouter) -> int:
    """Log in to the admin as a browser behind https://router.example would; the final status of /admin/."""
    jar: SimpleCookie = SimpleCookie()

    def send(method: str, path: str, **kwargs) -> httpx.Response:
        cookie = "; ".join(f"{k}={m.value}" for k, m in jar.items())
        res = httpx.request(method, router.url + path, headers={**PROXY_HEADERS, "cookie": cookie},
                            timeout=30, **kwargs)
        for header in res.headers.get_list("set-cookie"):
            jar.load(header)  # the browser keeps Secure cookies: it talks https to the proxy
        return res

    page = send("GET", "/admin/login/?next=/admin/")
    assert page.status_code == 200, page.text
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text).group(1)
    res = send("POST", "/admin/login/?next=/admin/", data={
        "csrfmiddlewaretoken": token, "username": "admin", "password": "pw-for-tls-test", "next": "/admin/"})
    if res.status_code != 302:
        return res.status_code
    assert all(jar[name]["secure"] for name in ("sessionid", "csrftoken")) == (
        router.extra_env.get("ROUTER_BEHIND_TLS_PROXY") == "true")
    return send("GET", "/admin/").status_code


@pytest.mark.parametrize("env, status, server", [
    ({}, 403, "daphne"),  # CSRF: the origin is https://router.example, the request looks like plain http
    ({"ROUTER_BEHIND_TLS_PROXY": "true"}, 200, "daphne"),
    ({"DJANGO_CSRF_TRUSTED_ORIGINS": "https://router.example"}, 200, "daphne"),
    ({}, 403, "uvicorn"),  # uvicorn's own default would trust X-Forwarded-Proto from loopback
    ({"ROUTER_BEHIND_TLS_PROXY": "true"}, 200, "uvicorn"),
], ids=["no-settings", "trusted-proxy-switch", "trusted-origins", "no-settings-uvicorn",
        "trusted-proxy-switch-uvicorn"])
def test_admin_login_through_a_tls_terminating_proxy(tmp_path, env, status, server):
    env = {"DJANGO_ALLOWED_HOSTS": "router.example,router.internal,127.0.0.1", **env}
    router = LiveRouter(SAMPLE, tmp_path, env=env, server=server)
    subprocess.run([PYTHON, "manage.py", "ensure_admin"], cwd=ROOT, check=True, capture_output=True, timeout=60,
                   env=_env(router.db, {**env, "ROUTER_ADMIN_PASSWORD": "pw-for-tls-test"}))
    router.start()
    try:
        assert _login_through_tls_proxy(router) == status
    finally:
        router.stop()
