"""``manage.py serve --workers 2``: two real worker processes on one socket.

Which worker answers a connection is the kernel's choice, so these tests never assume one: they
read each worker's own Prometheus file (``PROMETHEUS_MULTIPROC_DIR``) to see which worker answered
what, and keep sending until both have. Limits, budgets, cooldowns and round-robin are shared
through Redis; a killed worker is replaced; SIGTERM to the parent drains every worker; the usage
spool shared by the workers loses nothing and writes nothing twice.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import time
from collections import Counter
from decimal import Decimal
from itertools import pairwise
from pathlib import Path

import httpx
import pytest
from prometheus_client.multiprocess import MultiProcessCollector

from tests.fakes.openai import OpenAIFake, completion, error_reply, stream_frames
from tests.fakes.server import Reply
from tests.live import PYTHON, ROOT, LiveRouter, _env
from tests.test_routing import forever
from tests.test_routing_live import redis_prefix  # noqa: F401  (a fixture)
from tests.test_state import REDIS_TEST_URL

KEY = "sk-router-workers-test"
AUTH = {"authorization": f"Bearer {KEY}"}
CHAT = {"model": "gpt-4o", "max_tokens": 3, "messages": [{"role": "user", "content": "Hi"}]}
PREFIX = "auto_ai_router_"


def router_yaml(*upstreams: str, rpm: int | None = None) -> str:
    limit = f", rpm: {rpm}" if rpm else ""
    creds = "\n".join(f"  - {{name: up{i}, type: openai, api_key: sk-upstream-secret, base_url: {url}{limit}}}"
                      for i, url in enumerate(upstreams))
    models = "\n".join(f"  - {{name: gpt-4o, credential: up{i}}}" for i in range(len(upstreams)))
    return f"""
server: {{master_key: {KEY}}}
credentials:
{creds}
models:
{models}
model_prices:
  gpt-4o: {{input_cost_per_token: 0, output_cost_per_token: 0.001}}
"""


def start(tmp_path: Path, yaml_text: str, **env: str) -> LiveRouter:
    metrics = tmp_path / "metrics"
    metrics.mkdir(exist_ok=True)
    router = LiveRouter(yaml_text, tmp_path, workers=2, env={"PROMETHEUS_MULTIPROC_DIR": str(metrics),
                                                              "ROUTER_USAGE_FLUSH_SECONDS": "0.2", **env})
    router.metrics = metrics
    return router


@pytest.fixture
def live(tmp_path):
    started: list[LiveRouter] = []

    def make(yaml_text: str, *, before_start=None, **env: str) -> LiveRouter:
        router = start(tmp_path, yaml_text, **env)
        if before_start:
            before_start(router)
        started.append(router.start())
        return router
    yield make
    for router in started:
        router.stop()


@pytest.fixture
def shared(redis_prefix):  # noqa: F811
    # a generous Redis time-out: on a loaded machine a 0.5 s one can pass for an outage (limits are then
    # per process by design)
    return {"REDIS_URL": REDIS_TEST_URL, "ROUTER_REDIS_PREFIX": redis_prefix, "ROUTER_REDIS_TIMEOUT": "10"}


def upstream(*replies: Reply) -> OpenAIFake:
    fake = OpenAIFake()
    fake.script = forever(*replies)
    return fake.start()


@pytest.fixture
def fakes():
    made: list[OpenAIFake] = []

    def make(*replies: Reply) -> OpenAIFake:
        made.append(upstream(*replies))
        return made[-1]
    yield make
    for fake in made:
        fake.stop()


# ---- which worker answered ----------------------------------------------------------------------


def answered(router: LiveRouter) -> dict[int, Counter]:
    """Client requests each worker finished, by status class, from that worker's own metrics file."""
    out: dict[int, Counter] = {}
    for path in router.metrics.glob("counter_*.db"):
        pid = int(path.stem.split("_")[-1])
        for metric in MultiProcessCollector.merge([str(path)]):
            if metric.name == PREFIX + "requests":
                for sample in metric.samples:
                    if sample.name.endswith("_total"):
                        out.setdefault(pid, Counter())[sample.labels["status_class"]] += sample.value
    return out


def open_streams(router: LiveRouter) -> dict[int, float]:
    """Streams each live worker is sending now."""
    out: dict[int, float] = {}
    for path in router.metrics.glob("gauge_livesum_*.db"):
        pid = int(path.stem.split("_")[-1])
        for metric in MultiProcessCollector.merge([str(path)], accumulate=False):
            if metric.name == PREFIX + "open_streams":
                out[pid] = sum(s.value for s in metric.samples)
    return out


def until_every_worker(router: LiveRouter, send, status_class: str, *, tries: int = 200) -> list[int]:
    """Call ``send()`` (one request on a fresh connection) until each current worker has answered one
    more with ``status_class`` than before; the statuses seen."""
    before = answered(router)
    statuses: list[int] = []
    for _ in range(tries):
        pids = set(router.worker_pids())
        now = answered(router)
        if len(pids) == 2 and all(now.get(pid, Counter())[status_class] > before.get(pid, Counter())[status_class]
                                  for pid in pids):
            return statuses
        statuses.append(send().status_code)
    raise AssertionError(f"not every worker answered {status_class}: {answered(router)} (workers {pids})")


def post(router: LiveRouter, body: dict = CHAT) -> httpx.Response:
    return httpx.post(router.url + "/v1/chat/completions", json=body, headers=AUTH, timeout=30)


def metrics_text(router: LiveRouter) -> str:
    res = httpx.get(router.url + "/metrics", headers=AUTH, timeout=10)
    assert res.status_code == 200, res.text
    return res.text


def scraped_requests(text: str) -> Counter:
    out: Counter = Counter()
    for line in text.splitlines():
        if line.startswith(PREFIX + "requests_total{"):
            labels, value = line.rsplit(" ", 1)
            klass = labels.split('status_class="')[1].split('"')[0]
            out[klass] += float(value)
    return out


# ---- routing state shared by the workers --------------------------------------------------------


def test_two_workers_share_one_limit_and_metrics_sum_both(live, fakes, shared):
    fake = fakes(Reply(json=completion("hello")))
    router = live(router_yaml(fake.url + "/v1", rpm=4), **shared)
    statuses = until_every_worker(router, lambda: post(router), "4xx")
    # 4 served in all, by whichever worker; each worker also refused, whatever it had served itself
    assert statuses.count(200) == 4 and set(statuses) == {200, 429}, statuses
    assert len(fake.requests) == 4
    per_worker = answered(router)
    assert sum(c["2xx"] for c in per_worker.values()) == 4
    # /metrics from any worker is the sum over both
    total = Counter({"2xx": 4, "4xx": len(statuses) - 4})
    for _ in range(6):
        assert scraped_requests(metrics_text(router)) == total
    assert "without REDIS_URL" not in router.log()


def test_round_robin_and_cooldowns_are_shared_by_the_workers(live, fakes, shared):
    # a pool with limits rotates with one cursor in Redis: the upstreams alternate whichever worker answers
    one, two = fakes(Reply(json=completion("one"))), fakes(Reply(json=completion("two")))
    router = live(router_yaml(one.url + "/v1", two.url + "/v1", rpm=1000), **shared)
    texts: list[str] = []

    def send() -> httpx.Response:
        res = post(router)
        texts.append(res.json()["choices"][0]["message"]["content"])
        return res
    statuses = until_every_worker(router, send, "2xx")
    for _ in range(4):
        send()
    assert statuses == [200] * len(statuses) and len(texts) >= 6
    assert all(a != b for a, b in pairwise(texts)), texts  # strictly alternating
    # one upstream answers 429 with Retry-After: every worker skips it from then on
    one.script = forever(error_reply(429, "slow down", code="rate_limit_exceeded", headers={"retry-after": "60"}))
    before_one, before_two = len(one.requests), len(two.requests)
    for _ in range(2):  # the cursor alternates: one of the next two requests tries it (and fails over)
        assert send().status_code == 200
    assert len(one.requests) == before_one + 1
    statuses = until_every_worker(router, send, "2xx")
    assert statuses == [200] * len(statuses) and set(texts[-len(statuses) - 2:]) == {"two"}
    assert len(one.requests) == before_one + 1 and len(two.requests) == before_two + 2 + len(statuses)


def _make_key(router: LiveRouter, alias: str, budget: Decimal) -> str:
    secret = f"sk-{alias}-workers-0000000000000000000"
    code = ("from decimal import Decimal; from keys.models import ApiKey; "
            f"k = ApiKey(key_alias={alias!r}, max_budget=Decimal({str(budget)!r})); "
            f"k.set_secret({secret!r}); k.save()")
    out = subprocess.run([PYTHON, "manage.py", "shell", "-c", code], cwd=ROOT, env=_env(router.db, router.extra_env),
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return secret


def test_budget_holds_under_50_concurrent_requests_over_two_workers(live, fakes, shared):
    fake = fakes(Reply(json=completion("hello", prompt=9, completion_tokens=3), hang=0.3))
    secret: list[str] = []
    router = live(router_yaml(fake.url + "/v1"), **shared,
                  before_start=lambda r: secret.append(_make_key(r, "racer", 10 * Decimal("0.003"))))
    headers = {"authorization": f"Bearer {secret[0]}"}

    async def fire() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=60)
        async with httpx.AsyncClient(timeout=60, headers=headers, limits=limits) as client:
            return await asyncio.gather(*(client.post(router.url + "/v1/chat/completions", json=CHAT)
                                          for _ in range(50)))
    responses = asyncio.run(fire())
    refused = [r for r in responses if r.status_code != 200]
    assert all(r.status_code == 429 and r.json()["error"]["code"] == "insufficient_quota" for r in refused), \
        [r.text for r in refused]
    assert len(responses) - len(refused) == 10 and len(fake.requests) == 10
    # every worker refuses from then on, including one that served none of the ten
    more = until_every_worker(router, lambda: httpx.post(router.url + "/v1/chat/completions", json=CHAT,
                                                         headers=headers, timeout=30), "4xx")
    assert set(more) <= {429} and len(fake.requests) == 10
    assert sum(c["2xx"] for c in answered(router).values()) == 10


# ---- the supervisor ----------------------------------------------------------------------------


DEMO = (f"server: {{master_key: {KEY}}}\ncredentials: [{{name: demo, type: demo}}]\n"
        "models: [{name: gpt-4o, credential: demo}]\n")


def wait_for(predicate, timeout: float = 30.0, what: str = ""):
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        assert time.monotonic() < deadline, what
        time.sleep(0.1)
    return value


def running(pid: int) -> bool:
    """Alive and not a zombie (an orphan's exit status waits for whoever adopted it)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


def test_a_killed_worker_is_replaced_and_the_service_goes_on(live):
    router = live(DEMO)
    assert "2 workers without REDIS_URL" in router.log()  # per-worker state is said out loud
    until_every_worker(router, lambda: post(router), "2xx")
    victim, survivor = router.worker_pids()
    os.kill(victim, signal.SIGKILL)
    replaced = wait_for(lambda: (set(router.worker_pids()) - {survivor, victim}) and len(router.worker_pids()) == 2,
                        what=router.log())
    assert replaced
    assert [post(router).status_code for _ in range(10)] == [200] * 10
    until_every_worker(router, lambda: post(router), "2xx")  # the new worker serves too
    assert f"(pid {victim}) died (signal SIGKILL)" in router.log()
    assert not (router.metrics / f"gauge_livesum_{victim}.db").exists()  # its live gauges left the sum
    # the supervisor itself killed: its workers drain and exit rather than serve on unsupervised
    workers = router.worker_pids()
    router.proc.kill()
    router.proc.wait(10)
    wait_for(lambda: not any(running(pid) for pid in workers), what="orphaned workers")


def test_sigterm_to_the_parent_drains_every_worker(live, fakes):
    fake = fakes(Reply(sse=stream_frames([f"w{i} " for i in range(16)], delay=0.25),
                       content_type="text/event-stream"))
    router = live(router_yaml(fake.url + "/v1"), ROUTER_SHUTDOWN_GRACE_SECONDS="25", ROUTER_USAGE_FLUSH_SECONDS="5")
    body = {**CHAT, "stream": True}

    async def stream(client: httpx.AsyncClient) -> list[str]:
        async with client.stream("POST", "/v1/chat/completions", json=body, headers=AUTH) as res:
            assert res.status_code == 200
            return [line[6:] async for line in res.aiter_lines() if line.startswith("data: ")]

    async def run() -> tuple[list[list[str]], dict[int, float]]:
        async with httpx.AsyncClient(base_url=router.url, timeout=60, limits=httpx.Limits(max_connections=80)) as c:
            tasks: list[asyncio.Task] = []
            while True:  # open streams until each worker holds some
                tasks += [asyncio.create_task(stream(c)) for _ in range(5)]
                await asyncio.sleep(0.3)
                holding = open_streams(router)
                if len([n for n in holding.values() if n > 0]) == 2 or len(tasks) >= 60:
                    break
            router.proc.send_signal(signal.SIGTERM)
            return await asyncio.gather(*tasks), holding

    results, holding = asyncio.run(run())
    assert router.proc.wait(40) == 0
    assert len([n for n in holding.values() if n > 0]) == 2, holding
    text = "".join(f"w{i} " for i in range(16))
    for data in results:
        assert data[-1] == "[DONE]"
        assert "".join((json.loads(d)["choices"] or [{}])[0].get("delta", {}).get("content") or ""
                       for d in data[:-1]) == text
    rows = router.usage_rows(wait_for=len(results), timeout=5)
    assert len(rows) == len(results)
    assert {(r["status"], r["client_closed"], r["error_type"]) for r in rows} == {(200, 0, "")}
    log = router.log()
    assert log.count("exited (exit status 0)") == 2 and "all workers stopped" in log


def test_the_workers_share_the_usage_spool_without_losing_or_doubling_a_row(live):
    """The usage table goes away under two workers; both spool; one is killed (its file is left behind,
    held by nobody) and replaced; the table comes back: every row is written exactly once."""
    router = live(DEMO, ROUTER_USAGE_FLUSH_SECONDS="0.1")
    spool = Path(router.extra_env["ROUTER_USAGE_SPOOL_DIR"])
    with sqlite3.connect(router.db) as conn:
        conn.execute("ALTER TABLE proxy_usagerecord RENAME TO usage_away")
    ids: list[str] = []

    def send() -> httpx.Response:
        res = post(router)
        ids.append(res.headers["x-request-id"])
        return res
    until_every_worker(router, send, "2xx")
    for _ in range(6):
        send()
    wait_for(lambda: sum(p.read_bytes().count(b"\n") for p in spool.glob("usage-*.jsonl")) == len(ids),
             what="rows not spooled")
    files = set(spool.glob("usage-*.jsonl"))
    assert len({p.name.rsplit("-", 1)[1] for p in files}) == 2  # one file per worker
    victim = router.worker_pids()[0]
    os.kill(victim, signal.SIGKILL)
    wait_for(lambda: len(router.worker_pids()) == 2 and victim not in router.worker_pids(), what=router.log())
    with sqlite3.connect(router.db) as conn:
        conn.execute("ALTER TABLE usage_away RENAME TO proxy_usagerecord")
    rows = router.usage_rows(wait_for=len(ids), timeout=60)
    assert sorted(r["request_id"] for r in rows) == sorted(ids)  # each once: nothing lost, nothing twice
    wait_for(lambda: not list(spool.glob("usage-*.jsonl")), what="spool files left")
