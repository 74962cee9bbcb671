"""The benchmark harness runs end to end (``bench/run.py --smoke``) and prints every row.

Only completeness is checked, never speed: timings on a shared machine are not test material.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

EXPECTED_ROWS = [
    r"^Auto AI Router benchmark \(smoke, \d+ s\): Daphne",
    *(rf"^{mode}\s+{c}\s+\d+\s+\d+\s" for mode in ("non-stream", "stream") for c in (1, 16, 64)),
    r"^20 concurrent slow streams \(3 chunks x 20 ms\): 20 complete, 0 errors",
    r"^Usage logging to (PostgreSQL|SQLite) on vs off, .* on \d+ rps .* off \d+ rps",
    r"^CPU per non-streaming request \(c=1/16/64\)\s+[\d.]+ / [\d.]+ / [\d.]+ ms\s+<= 1.5 ms\s+(PASS|FAIL)$",
    r"^added p50 latency, non-streaming c=1\s+-?[\d.]+ ms\s+<= 1.5 ms\s+(PASS|FAIL)$",
    r"^added time to first streamed byte, c=1\s+-?[\d.]+ ms\s+<= 2 ms\s+(PASS|FAIL)$",
    r"^20 concurrent slow streams: errors\s+0\s+0\s+PASS$",
    r"^20 concurrent slow streams: peak RSS\s+\d+ MB\s+<= 150 MB\s+(PASS|FAIL)$",
    r"^usage logging on: throughput cost \(\*\)\s+-?[\d.]+ % \(rps: -?[\d.]+ %\)\s+<= 5 %\s+(PASS|FAIL)$",
    r"^usage rows written == requests\s+(\d+) / \1\s+equal\s+PASS$",
    r"^client key: lookup \+ limits \+ budget admission, added CPU\s+-?\d+ us\s+<= 100 us\s+(PASS|FAIL)",
    r"^/v1/messages native relay vs /v1/chat/completions relay, streaming c=16, .* messages [\d.]+ ms CPU",
    r"^CPU/request: /v1/messages relay vs chat relay\s+[\d.]+ vs [\d.]+ ms\s+<= chat\s+(PASS|FAIL)$",
]


def test_smoke_run_prints_every_row(tmp_path):
    out = subprocess.run([sys.executable, "bench/run.py", "--smoke", "--json", str(tmp_path / "figures.json")],
                         cwd=ROOT, capture_output=True, text=True, timeout=240)
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
