"""Benchmark: a change set of N changed contacts sent through the bulk path and through the
single path, each against its own `voyado-sync emulator` process, in the same run.

    python3 bench/bulk.py --rows 1000000

For each path: a first run creates N contacts, then every row changes (a new churn score and
tier) and a second run sends the N updates. Prints, per path and run, the requests by
endpoint, the wall time and the outcomes, and checks the emulator's final contacts (count,
values of a sample, zero violations). The single path is run unthrottled
(`requests_per_second` far above the emulator's pace, concurrency 64) so its request count
can be measured in minutes; at Voyado's ~50 requests per second the same count is what
decides its duration, which the report computes. Needs a release build
(`cargo build --release`) and `pip install pyarrow`.
"""

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request

import pyarrow as pa
import pyarrow.parquet as pq

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
BIN = os.path.join(ROOT, "target", "release", "voyado-sync")
KEY = "bench-key"


def extract(path, n, version):
    """N customers; version 2 changes every row's churn score and tier."""
    ids = [f"c{i}@example.com" for i in range(n)]
    score = [round((i * 7919 % 1000) / 1000 + version, 3) for i in range(n)]
    tier = [("gold", "silver", "bronze")[(i + version) % 3] for i in range(n)]
    table = pa.table({
        "email": ids,
        "first_name": [f"Name{i % 5000}" for i in range(n)],
        "city": [("Stockholm", "Göteborg", "Malmö", "")[i % 4] for i in range(n)],
        "churn_score": score,
        "loyalty_tier": tier,
    })
    pq.write_table(table, path)


def config(dir, url, api, rps, concurrency):
    return f"""name = "bench-{api}"
[source]
tables = {{ customers = "{dir}/customers.parquet" }}
[model]
sql = "SELECT * FROM customers"
[destination]
url = "{url}"
api_key_env = "VOYADO_API_KEY"
[identifier]
column = "email"
key = "email"
[fields]
first_name = "firstName"
city = "city"
[custom_attributes]
columns = ["churn_score", "loyalty_tier"]
[sync]
mode = "upsert"
state = "{dir}/state"
api = "{api}"
checkpoint_rows = 50000
[limits]
requests_per_second = {rps}
concurrency = {concurrency}
memory_limit_mb = 4096
"""


def start_emulator(dir):
    dump = os.path.join(dir, "dump.json")
    proc = subprocess.Popen(
        [BIN, "-q", "emulator", "--api-key", KEY,
         "--custom-attributes", "churn_score,loyalty_tier", "--dump-on-exit", dump],
        stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline().strip()
    url = line.split()[-1] if line else ""
    if not url.startswith("http"):
        sys.exit(f"emulator did not print its address: {line!r}")
    return proc, url, dump


def run(cfg):
    started = time.perf_counter()
    out = subprocess.run([BIN, "-q", "run", "--json", "-c", cfg], capture_output=True,
                         text=True, env={**os.environ, "VOYADO_API_KEY": KEY})
    elapsed = time.perf_counter() - started
    if out.returncode != 0:
        sys.exit(f"run failed ({out.returncode}): {out.stderr[-2000:]}")
    return elapsed, json.loads(out.stdout)


def requests(report):
    r = report.get("requests", {})
    return {k: sum(v.values()) for k, v in r.items() if v}


def one_path(api, n, rps, concurrency, root):
    dir = os.path.join(root, api)
    os.makedirs(dir)
    proc, url, dump = start_emulator(dir)
    cfg = os.path.join(dir, "sync.toml")
    with open(cfg, "w") as f:
        f.write(config(dir, url, api, rps, concurrency))
    results = []
    try:
        for version in (1, 2):
            extract(os.path.join(dir, "customers.parquet"), n, version)
            elapsed, report = run(cfg)
            results.append((version, elapsed, report))
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=120)
    with open(dump) as f:
        d = json.load(f)
    contacts = d["contacts"]
    emails = {c["attributes"].get("email") for c in contacts}
    sample = next(c for c in contacts if c["attributes"].get("email") == "c1@example.com")
    ok = (len(contacts) == n and len(emails) == n and d["violationTotal"] == 0
          and sample["attributes"]["churn_score"] == round(7919 % 1000 / 1000 + 2, 3)
          and sample["attributes"]["loyalty_tier"] == "gold")
    return results, ok, len(contacts), d["violationTotal"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--skip-single", action="store_true")
    args = ap.parse_args()
    if not os.path.exists(BIN):
        sys.exit("build first: cargo build --release")
    root = tempfile.mkdtemp(prefix="voyado-bulk-bench-")
    try:
        paths = [("bulk", 40, 8)]
        if not args.skip_single:
            paths.append(("single", 100000, 64))
        print(f"{args.rows} contacts; every row changes between run 1 and run 2")
        print(f"{'path':8} {'run':5} {'seconds':>8} {'requests':>9}  by endpoint / outcomes")
        for api, rps, conc in paths:
            results, ok, count, violations = one_path(api, args.rows, rps, conc, root)
            for version, elapsed, report in results:
                req = requests(report)
                total = sum(req.values())
                what = "create" if version == 1 else "update"
                print(f"{api:8} {what:5} {elapsed:8.1f} {total:9}  {req} {report['outcomes']}")
                if version == 2:
                    hours = total / 50 / 3600
                    print(f"{'':8} {'':5} {'':8} {'':9}  at 50 requests/s: {hours:.2f} h of requests")
            print(f"{api:8} final contacts {count}, violations {violations}, "
                  f"{'exact' if ok else 'MISMATCH'}")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
