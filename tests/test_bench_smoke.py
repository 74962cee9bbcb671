"""The benchmark harness runs end to end (``bench/run.py --smoke``) and prints every row.

Only completeness is checked, never speed: timings on a shared machine are not test material.
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

SERVERS = ("daphne", "uvicorn") if importlib.util.find_spec("uvicorn") else ("daphne",)
CHECK = r"\s+(PASS|FAIL)$"
EXPECTED_ROWS = [
    rf"^Auto AI Router benchmark \(smoke, \d+ s\): servers {', '.join(SERVERS)}; .* client key with budget and limits",
    *(rf"^{mode}\s+{c}\s+{target}\s+\d+(\s+-?[\d.]+){{3}}\s" for mode in ("non-stream", "stream") for c in (1, 16)
      for target in ("direct", *SERVERS)),
    r"^20 concurrent slow streams \(3 chunks x 20 ms\), 1 round",
    *(rf"^  {target}\s+20\s+0\s+[\d.]+\s+[\d.]+\s+[\d.]+\s" for target in ("direct", *SERVERS)),
    *(rf"^{server}: 1 vs 2 workers, non-stream c=16" for server in SERVERS),
    *(rf"^  {server} x2\s+\d+(\s+[\d.]+){{4}}\s+0$" for server in SERVERS),
    r"^usage logging to (PostgreSQL|SQLite) on vs off",
    r"^  logging-off\s+\d+(\s+[\d.]+){4}\s+0$",
    r"^usage logging to SQLite on vs off",
    r"^  sqlite-on\s+\d+(\s+[\d.]+){4}\s+0$",
    r"^/v1/messages native relay vs /v1/chat/completions relay, streaming c=16",
    r"^  messages\s+\d+(\s+[\d.]+){4}\s+0$",
    r"^Usage rows written / requests sent, per router: (PostgreSQL|SQLite): daphne (\d+) / \2, .*"
    r"SQLite default: sqlite-on (\d+) / \3; rows in the routers' spool: 0 waiting, 0 rejected$",
    *(rf"^{name}\s+{server}\s+\(no Portkey in this run\)\s+{goal}\s+SKIP$" for server in SERVERS for name, goal in (
        (r"CPU/non-stream request vs Portkey, c=1", r"<= 0.7x"), (r"req/s vs Portkey, non-stream c=16", r">= 1.4x"),
        (r"CPU per stream vs Portkey, c=16", r"<= 0.7x"), (r"20 slow streams: TTFB p50 vs Portkey", r"<= 0.5x"))),
    *(rf"^added p99, non-stream c=1\s+{server}\s+-?[\d.]+ ms\s+<= 5 ms{CHECK}" for server in SERVERS),
    *(rf"^added time to first streamed byte, c=1\s+{server}\s+-?[\d.]+ ms\s+<= 2 ms{CHECK}" for server in SERVERS),
    *(rf"^20 slow streams: peak RSS \(max of rounds\)\s+{server}\s+\d+ MB\s+<= 150 MB{CHECK}" for server in SERVERS),
    *(rf"^20 slow streams: errors\s+{server}\s+0\s+0\s+PASS$" for server in SERVERS),
    rf"^usage logging to SQLite \(default\): CPU/request\s+daphne\s+-?[\d.]+ ms \(.*\)\s+<= 0.1 ms{CHECK}",
    rf"^usage logging to (PostgreSQL|SQLite): CPU/request\s+daphne\s+-?[\d.]+ ms .* % of [\d.]+\s+<= 5 %{CHECK}",
    r"^usage rows written == requests sent\s+all\s+(\d+) / \1\s+equal\s+PASS$",
    rf"^client key: lookup \+ limits \+ budget, added CPU\s+in-process\s+-?\d+ us\s+<= 100 us{CHECK}",
    rf"^CPU/request: /v1/messages relay vs chat relay\s+daphne\s+[\d.]+ vs [\d.]+ ms\s+<= chat{CHECK}",
]


def test_smoke_run_prints_every_row(tmp_path):
    out = subprocess.run([sys.executable, "bench/run.py", "--smoke", "--no-portkey", "--server", ",".join(SERVERS),
                          "--json", str(tmp_path / "figures.json")],
                         cwd=ROOT, capture_output=True, text=True, timeout=420)  # a dozen routers start
    assert out.returncode == 0, out.stdout + out.stderr
    missing = [row for row in EXPECTED_ROWS if not re.search(row, out.stdout, re.MULTILINE)]
    assert not missing, f"rows missing from the output: {missing}\n{out.stdout}\n{out.stderr}"
    assert (tmp_path / "figures.json").read_text().startswith("{")


def test_per_event_measurement_prints_its_figure():
    out = subprocess.run([sys.executable, "bench/run.py", "--events", "2000", "--db", "sqlite"],
                         cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stdout + out.stderr
    assert re.search(r"^2000 tiny events in one stream \(.*\): upstream direct [\d.]+ s, through the router "
                     r"[\d.]+ s; router CPU [\d.]+ s = [\d.]+ us per event$", out.stdout, re.MULTILINE), out.stdout
