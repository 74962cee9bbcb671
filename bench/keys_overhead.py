"""CPU that a client key adds per request over the master key: key lookup, model access, RPM/TPM/parallel
limits and budget admission (reserve + settle), measured in-process on the router's own functions.

    .venv/bin/python bench/keys_overhead.py [--requests N] [--redis redis://...] [--json]

A throwaway SQLite database holds one priced model and a key with every limit and a budget. Both paths run
``authenticate``, ``route`` and the key's admission (as ``open_upstream`` runs it) on the same request,
alternating in rounds; the figure is the median difference of process CPU time per request. With ``--redis``
the limits live in Redis (one round trip to admit; settlements pipelined): that includes the Redis client's CPU.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MASTER = "sk-bench-master-key-0000000000"


def setup(db_path: str, redis_url: str | None) -> None:
    os.environ.update({"DATABASE_URL": f"sqlite:///{db_path}", "DJANGO_SETTINGS_MODULE": "routerproject.settings",
                       "ROUTER_ENCRYPTION_KEY": "bench-encryption-key", "ROUTER_MASTER_KEY": MASTER,
                       "ROUTER_USAGE_LOGGING": "false", "LOG_LEVEL": "WARNING"})
    os.environ.pop("REDIS_URL", None)
    if redis_url:
        os.environ.update({"REDIS_URL": redis_url, "ROUTER_REDIS_PREFIX": "{bench-keys}:"})
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


def make_data() -> str:
    from decimal import Decimal

    from credentials.models import Credential, ProviderModel
    from keys.models import ApiKey, Team, new_secret

    cred = Credential.objects.create(name="openai_main", type="openai", api_key="sk-upstream",
                                     base_url="http://127.0.0.1:9/v1")
    ProviderModel.objects.create(name="gpt-4.1", credential=cred)
    try:
        from pricing.models import Price

        Price.objects.update_or_create(model="gpt-4.1", defaults={"input_cost_per_token": Decimal("2e-6"),
                                                                  "output_cost_per_token": Decimal("8e-6")})
    except ImportError:
        pass
    team = Team.objects.create(team_alias="bench", max_budget=Decimal(10**6), rpm_limit=10**9, tpm_limit=10**12)
    secret = new_secret()
    key = ApiKey(key_alias="bench", team=team, models=["gpt-4*"], rpm_limit=10**9, tpm_limit=10**12,
                 max_parallel_requests=10**6, max_budget=Decimal(10**6), budget_duration="30d")
    key.set_secret(secret)
    key.restart_period()
    key.save()
    return secret


async def measure(secret: str, requests: int, rounds: int) -> dict:
    from decimal import Decimal

    from proxy import auth, config, views
    from proxy.asgi import Request

    config.invalidate()
    body = {"model": "gpt-4.1", "max_tokens": 256, "messages": [{"role": "user", "content": "Hello " * 40}]}
    raw = json.dumps(body).encode()

    async def one(key: str) -> None:
        req = Request("POST", "/v1/chat/completions", {"authorization": f"Bearer {key}"}, raw, "req_bench")
        req.principal = await auth.authenticate(req.headers)  # what the API front does first
        log = views.start_log(req, "chat.completions", body, stream=False)
        cfg = await views.authorize(req)
        plan = views.route(cfg, req, body)
        if plan.admission is not None:  # what open_upstream does before the first attempt
            await plan.admission(log)
        if log.ticket is not None:
            log.ticket.settle(Decimal("0.0001"), 300)

    async def run(key: str) -> float:
        start = time.process_time()
        for _ in range(requests):
            await one(key)
        return (time.process_time() - start) / requests * 1000

    for key in (MASTER, secret):  # warm up: snapshot loaded, code paths hot, Redis connected
        for _ in range(200):
            await one(key)
    master, client = [], []
    for _ in range(rounds):
        master.append(await run(MASTER))
        client.append(await run(secret))
    from keys import limits

    store = limits.get()
    if hasattr(store, "drain"):
        await store.drain()
    added = [c - m for m, c in zip(master, client, strict=True)]
    return {"backend": store.backend, "requests": requests, "rounds": rounds,
            "master_ms": statistics.median(master), "client_ms": statistics.median(client),
            "added_ms": statistics.median(added)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=3000, help="per path and round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--redis", help="measure with the limits in Redis at this URL")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        setup(str(Path(tmp) / "bench.sqlite3"), args.redis)
        secret = make_data()
        figures = asyncio.run(measure(secret, args.requests, args.rounds))
    if args.json:
        print(json.dumps(figures))
    else:
        print(f"client key vs master key ({figures['backend']} limits): {figures['client_ms']:.3f} vs "
              f"{figures['master_ms']:.3f} ms CPU per request, added {figures['added_ms'] * 1000:.0f} us")


if __name__ == "__main__":
    main()
