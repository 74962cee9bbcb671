"""Observability figures: dashboard and usage-explorer timings at scale, and what metrics and
tracing cost on the request path.

    .venv/bin/python bench/observability.py                 # 10 million usage rows (PostgreSQL), ~10 min
    .venv/bin/python bench/observability.py --rows 200000   # quicker
    .venv/bin/python bench/observability.py --hooks-only    # request-path cost only (no database)
    .venv/bin/python bench/observability.py --database-url postgres://…/obs   # keep the rows for next time

The rows go into a throwaway PostgreSQL database (``BENCH_POSTGRES_URL``'s server, a database of
its own, dropped at the end; or ``--database-url``, kept and reused), generated in SQL and
vacuumed as autovacuum would, then the hourly and daily rollups are rebuilt from them as
``manage.py rebuild_rollups`` does. Pages are fetched through Django's test client as a logged-in
superuser (median and fastest of 7 after one warm-up: on a shared machine the fastest is the
page's own cost, the median what it costs under that load). Hook costs are CPU time per request of
exactly the calls the request path makes (request observer, attempt observer, stream observer, finish hook),
metrics and tracing each on their own, against the same loop with the observers off.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_POSTGRES = os.environ.get("BENCH_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432/postgres")


def _django(database_url: str | None) -> None:
    sys.path.insert(0, str(ROOT))
    os.environ["DJANGO_SETTINGS_MODULE"] = "routerproject.settings"
    os.environ.setdefault("ROUTER_ENCRYPTION_KEY", "bench-encryption-key")
    if database_url:
        os.environ["DATABASE_URL"] = database_url
    import django

    django.setup()


# ---- request-path cost of the hooks ------------------------------------------------------

def hook_costs(iterations: int) -> dict[str, float]:
    """Microseconds of CPU per request for: nothing registered, metrics, tracing."""
    from credentials.models import hash_key  # noqa: F401  (apps loaded)
    from observability import hooks, metrics, tracing
    from proxy import asgi, pipeline, usage
    from proxy.config import CredentialConfig, Deployment

    dep = Deployment("gpt-4o", CredentialConfig(name="openai_main", type="openai"), "gpt-4o-2024-08-06")
    headers = {"authorization": "Bearer x", "content-type": "application/json"}

    def one_request() -> None:
        ends = [observe("POST", "/v1/chat/completions", headers) for observe in asgi.request_observers]
        log = usage.UsageLog("req_bench", "chat.completions", stream=True)
        log.requested_model = "gpt-4o"
        log.use(dep)
        log.attempts = 1
        attempt_ends = [observe(dep, 1, {}) for observe in pipeline.attempt_observers]
        for end in attempt_ends:
            end(200, None)
        for observe in asgi.stream_observers:
            observe(1)
        log.first_token()
        log.prompt, log.completion, log.cached, log.reasoning = 120, 40, 64, 8
        log.finish_reason("stop")
        for hook in usage.finish_hooks:
            if hook.__module__.startswith("observability"):
                hook(log)
        for observe in asgi.stream_observers:
            observe(-1)
        for end in reversed(ends):
            end()

    def measure() -> tuple[float, float]:
        """(request-path CPU, whole-process CPU incl. background export threads) per request, µs."""
        for _ in range(min(2000, iterations)):
            one_request()
        start, start_all = time.thread_time(), time.process_time()
        for _ in range(iterations):
            one_request()
        if tracing._provider is not None:
            tracing.flush(30_000)  # the export of these spans counts in the process figure
        return ((time.thread_time() - start) / iterations * 1e6,
                (time.process_time() - start_all) / iterations * 1e6)

    saved = (list(asgi.request_observers), list(pipeline.attempt_observers), list(asgi.stream_observers),
             list(usage.finish_hooks))

    def clear() -> None:
        asgi.request_observers.clear()
        pipeline.attempt_observers.clear()
        asgi.stream_observers.clear()
        usage.finish_hooks[:] = [h for h in usage.finish_hooks if not h.__module__.startswith("observability")]

    clear()
    off = measure()
    asgi.request_observers.append(hooks._metrics_request)
    pipeline.attempt_observers.append(hooks._metrics_attempt)
    asgi.stream_observers.append(metrics.OPEN_STREAMS.inc)
    usage.finish_hooks.append(metrics.on_finish)
    with_metrics = measure()
    clear()
    os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"] = _otlp_sink()
    os.environ["OTEL_BSP_MAX_QUEUE_SIZE"] = str(iterations * 2)
    tracing.setup()
    asgi.request_observers.append(tracing.start_request)
    pipeline.attempt_observers.append(tracing.start_attempt)
    usage.finish_hooks.append(tracing.annotate_request)
    with_tracing = measure()
    clear()
    asgi.request_observers[:], pipeline.attempt_observers[:], asgi.stream_observers[:], usage.finish_hooks[:] = saved
    return {"off": off[0], "metrics": with_metrics[0] - off[0], "tracing": with_tracing[0] - off[0],
            "tracing_process": with_tracing[1] - off[1]}


def _otlp_sink() -> str:
    """A local OTLP/HTTP endpoint that accepts every export (the collector's side is not measured)."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Sink(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("content-length") or 0))
            self.send_response(200)
            self.send_header("content-type", "application/x-protobuf")
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Sink)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{server.server_address[1]}"


# ---- pages at scale ------------------------------------------------------------------------

def _database(base_url: str) -> tuple[str, str]:
    parts = urlsplit(base_url)
    name = f"router_bench_obs_{uuid.uuid4().hex[:8]}"
    return name, urlunsplit(parts._replace(path="/" + name))


def _psql(base_url: str, sql: str) -> None:
    subprocess.run(["psql", base_url, "-v", "ON_ERROR_STOP=1", "-q", "-c", sql], check=True, capture_output=True)


SEED_SQL = """
INSERT INTO proxy_usagerecord (created_at, request_id, key_id, endpoint, requested_model, resolved_model, credential,
  provider, status, stream, prompt_tokens, completion_tokens, total_tokens, cached_tokens, reasoning_tokens,
  tokens_estimated, ttfb_ms, latency_ms, attempts, client_closed, error_type, error_message{extra_columns})
SELECT now() - (g::float / {rows} * interval '30 days'),
  'req_' || lpad(to_hex(g), 24, '0'),
  'key' || (g % 40),
  (ARRAY['chat.completions','responses','embeddings','messages'])[1 + g % 4],
  (ARRAY['gpt-4o','gpt-4.1','claude-sonnet-4-6','gemini-2.5-flash','gemini-2.5-pro','gpt-4o-mini'])[1 + g % 6],
  (ARRAY['gpt-4o-2024-08-06','gpt-4.1','claude-sonnet-4-6','gemini-2.5-flash','gemini-2.5-pro',
         'gpt-4o-mini'])[1 + g % 6],
  (ARRAY['openai_main','openai_backup','anthropic_main','gemini_main','vertex_main','openai_main'])[1 + g % 6],
  (ARRAY['openai','openai','anthropic','gemini','vertex-ai','openai'])[1 + g % 6],
  CASE WHEN g % 50 = 0 THEN 429 WHEN g % 97 = 0 THEN 502 ELSE 200 END,
  g % 2 = 0, (g * 7919) % 6000, (g * 104729) % 900, 0, (g * 31) % 400, (g * 13) % 50,
  false, 50 + (g * 7) % 2500, 200 + (g * 11) % 30000, 1, g % 200 = 0, '', ''{extra_values}
FROM generate_series(1::bigint, {rows}) AS g
"""


def pages(rows: int, reuse: bool = False) -> dict[str, tuple[float, float, int]]:
    """Median and fastest ms and SQL queries of each admin page, and the CSV export's time and memory."""
    from django.contrib.auth import get_user_model
    from django.core.management import call_command
    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext

    from observability import rollups
    from observability.models import UsageDaily, UsageHourly
    from proxy.models import UsageRecord

    call_command("migrate", verbosity=0)
    columns = {f.column for f in UsageRecord._meta.concrete_fields}
    generated = {"team_id": "'team' || (g % 5)", "cache_write_5m_tokens": "(g * 3) % 100",
                 "cache_write_1h_tokens": "(g * 5) % 7", "images": "CASE WHEN g % 500 = 1 THEN 1 + g % 3 ELSE 0 END",
                 "cost_usd": "CASE WHEN g % 6 = 3 THEN NULL ELSE ((g * 7919) % 6000) * 0.0000025 END"}
    extra = {c: sql for c, sql in generated.items() if c in columns}
    seeded = not reuse or UsageRecord.objects.count() != rows
    if seeded:
        UsageRecord.objects.all().delete()
        started = time.monotonic()
        with connection.cursor() as cursor:
            cursor.execute(SEED_SQL.format(
                rows=rows, extra_columns="".join(f", {c}" for c in extra),
                extra_values="".join(f", {sql}" for sql in extra.values())))
        print(f"seeded {rows:,} rows in {time.monotonic() - started:.0f} s", flush=True)
        _vacuum("proxy_usagerecord")  # what autovacuum does after a bulk insert (visibility map, statistics)
    if seeded or not (UsageHourly.objects.exists() and UsageDaily.objects.exists()):
        started = time.monotonic()
        rollups.rebuild(until=None)
        print(f"rollups rebuilt from {rows:,} rows in {time.monotonic() - started:.0f} s", flush=True)
        _vacuum(UsageHourly._meta.db_table, UsageDaily._meta.db_table)
    user = (get_user_model().objects.filter(username="bench").first()
            or get_user_model().objects.create_superuser("bench", "bench@example.com", "bench-pass"))
    client = Client(HTTP_HOST="localhost")
    client.force_login(user)
    probe = UsageRecord.objects.order_by("-id").values_list("request_id", flat=True).first()
    today = time.strftime("%Y-%m-%d", time.gmtime())
    two_weeks_ago = time.strftime("%Y-%m-%d", time.gmtime(time.time() - 14 * 86400))
    day = time.gmtime(time.time() - 86400)
    dash, usage = "/admin/observability/dashboard/", "/admin/proxy/usagerecord/"
    cases = {
        "dashboard, last hour": f"{dash}?period=1h",
        "dashboard, 24 h": f"{dash}?period=24h",
        "dashboard, 24 h, one key": f"{dash}?period=24h&key=key7",
        "dashboard, 7 days": f"{dash}?period=7d",
        "dashboard, 7 days, one credential": f"{dash}?period=7d&credential=anthropic_main",
        "dashboard, 30 days": f"{dash}?period=30d",
        "dashboard, 30 days, one model": f"{dash}?period=30d&model=gpt-4o",
        "dashboard, 30 days, one team": f"{dash}?period=30d&team=team3",
        "dashboard, custom 14 days": f"{dash}?period=custom&start={two_weeks_ago}&end={today}",
        "usage list, first page": usage,
        "usage list, page 20": f"{usage}?p=20",
        "usage list, last hour": f"{usage}?since=1h",
        "usage list, last 7 days": f"{usage}?since=7d",
        "usage list, one day (date hierarchy)": f"{usage}?created_at__year={day.tm_year}&created_at__month="
                                                f"{day.tm_mon}&created_at__day={day.tm_mday}",
        "usage list, key": f"{usage}?key_id=key7",
        "usage list, team": f"{usage}?team_id=team3",
        "usage list, public model": f"{usage}?requested_model=gpt-4o",
        "usage list, upstream model": f"{usage}?resolved_model=gemini-2.5-pro",
        "usage list, credential": f"{usage}?credential=anthropic_main",
        "usage list, provider": f"{usage}?provider=vertex-ai",
        "usage list, endpoint": f"{usage}?endpoint=embeddings",
        "usage list, 5xx": f"{usage}?status_class=5xx",
        "usage list, 4xx, last 24 h": f"{usage}?status_class=4xx&since=24h",
        "usage list, model + 5xx": f"{usage}?requested_model=gpt-4o&status_class=5xx",
        "usage list, key + credential + 2xx": f"{usage}?key_id=key7&credential=openai_main&status_class=2xx",
        "usage list, streams": f"{usage}?stream__exact=1",
        "usage list, client closed": f"{usage}?client_closed__exact=1",
        "usage list, search request id": f"{usage}?q={probe}",
    }
    out: dict[str, tuple[float, float, int]] = {}
    for name, url in cases.items():
        client.get(url)
        times = []
        for _ in range(7):
            start = time.perf_counter()
            res = client.get(url)
            times.append((time.perf_counter() - start) * 1000)
            assert res.status_code == 200, (url, res.status_code)
        with CaptureQueriesContext(connection) as queries:
            client.get(url)
        out[name] = (statistics.median(times), min(times), len(queries))
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    res = client.get(f"{usage}export.csv?since=24h")
    lines = 0
    for chunk in res.streaming_content:
        lines += chunk.count(b"\n")
    grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss) / 1024
    out[f"CSV export, last 24 h ({lines - 1:,} rows; peak memory +{grown:.0f} MB)"] = (
        (time.perf_counter() - start) * 1000, 0, 0)
    return out


def _vacuum(*tables: str) -> None:
    from django.db import connection

    with connection.cursor() as cursor:
        for table in tables:
            cursor.execute(f"VACUUM ANALYZE {table}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--hooks-only", action="store_true")
    parser.add_argument("--iterations", type=int, default=20_000)
    parser.add_argument("--database-url", help="use and keep this PostgreSQL database (seeded only when it does "
                                               "not hold --rows usage rows) instead of a throwaway one")
    args = parser.parse_args(argv)

    name, database_url = None, args.database_url
    if not args.hooks_only and not database_url:
        name, database_url = _database(DEFAULT_POSTGRES)
        _psql(DEFAULT_POSTGRES, f"CREATE DATABASE {name}")
    try:
        _django(database_url)
        costs = hook_costs(args.iterations)
        print("\nRequest-path CPU per request (µs), hooks as the request path calls them:")
        print(f"  observers off: {costs['off']:.1f} (the empty loops)")
        print(f"  metrics on:  +{costs['metrics']:.1f}  (target ≤ 50)")
        print(f"  tracing on:  +{costs['tracing']:.1f}  (target ≤ 50); with the background export: "
              f"+{costs['tracing_process']:.1f}")
        if not args.hooks_only:
            timings = pages(args.rows, reuse=bool(args.database_url))
            print(f"\nAdmin pages with {args.rows:,} usage rows, ms (target < 300): median of 7, fastest, queries")
            for case, (ms, fastest, queries) in timings.items():
                print(f"  {case:<45} {ms:8.1f}" + (f" {fastest:8.1f} {queries:4}" if queries else ""))
    finally:
        if name:
            from django.db import connections

            connections.close_all()
            _psql(DEFAULT_POSTGRES, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


if __name__ == "__main__":
    main()
