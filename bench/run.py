"""Benchmark: `voyado-sync plan` (model + identity rules + change detection, cold process)
against DuckDB doing the same work on the same data, in the same run.

    python3 bench/run.py --rows 1000000            # generates bench/data/1000000 if needed
    python3 bench/run.py --rows 10000000 --memory-mb 512

Prints our time, DuckDB's, the ratio, our peak RSS, the model alone in our engine, and
whether the counts agree. Needs `pip install duckdb` and a release build
(`cargo build --release`).
"""

import argparse
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
CUSTOM = ["newsletter", "signed_up_at", "churn_score", "segment", "order_count",
          "total_spent", "last_order_at", "loyalty_tier"]


def config(data, version, memory_mb, datafusion=(), slices=1):
    custom = ", ".join(f'"{c}"' for c in CUSTOM)
    sliced = (f'partitions = {slices}\npartition_keys = {{ customers = "customer_id", orders = "customer_id" }}'
              if slices > 1 else "")
    datafusion_lines = "\n".join(f'"{k}" = "{v}"' for k, v in datafusion)
    return f"""name = "bench"
[source]
tables = {{ customers = "{version}/customers.parquet", orders = "{version}/orders.parquet" }}
[model]
query = "{os.path.join(HERE, 'model.sql')}"
{sliced}
[destination]
url = "http://127.0.0.1:9"
api_key_env = "VOYADO_API_KEY"
[identifier]
column = "email"
key = "email"
[fields]
first_name = "firstName"
last_name = "lastName"
city = "city"
country_code = "countryCode"
birth_date = "birthDay"
[custom_attributes]
columns = [{custom}]
[sync]
mode = "upsert"
state = "state"
[limits]
memory_limit_mb = {memory_mb}
[datafusion]
{datafusion_lines}
"""


def timed(cmd):
    """Runs cmd under /usr/bin/time; returns (seconds, peak RSS MB, stdout)."""
    started = time.perf_counter()
    out = subprocess.run(["/usr/bin/time", "-f", "%M"] + cmd, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    if out.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({out.returncode}): {out.stderr[-2000:]}")
    rss_kb = int(out.stderr.strip().splitlines()[-1])
    return elapsed, rss_kb / 1024, out.stdout


def median(xs):
    xs = sorted(xs)
    return xs[len(xs) // 2] if len(xs) % 2 else (xs[len(xs) // 2 - 1] + xs[len(xs) // 2]) / 2


def fmt(xs):
    return " ".join(f"{x:.2f}" for x in xs)


def measure(rows, memory_mb=2048, slices=1, repeat=3, binary=None, datafusion=(), same_limit=False):
    """Generates the data if needed, baselines v1, then times `plan` on v2, the model alone
    and DuckDB in turn `repeat` times; returns the figures (medians; peak RSS the largest).
    With `same_limit`, DuckDB also runs once under `memory_mb` (DuckDB's `memory_limit`)."""
    binary = binary or os.path.join(ROOT, "target", "release", "voyado-sync")
    data = os.path.join(HERE, "data", str(rows))
    if not os.path.exists(os.path.join(data, "v2", "orders.parquet")):
        print(f"generating {rows} customers in {data} ...", flush=True)
        subprocess.run([sys.executable, os.path.join(HERE, "generate.py"), str(rows), data], check=True)
    for v in ("v1", "v2"):
        with open(os.path.join(data, f"sync-{v}.toml"), "w") as f:
            f.write(config(data, v, memory_mb, datafusion, slices))
    subprocess.run([binary, "-q", "reset", "-c", os.path.join(data, "sync-v1.toml")], check=True,
                   stdout=subprocess.DEVNULL)
    base_s, base_rss, _ = timed([binary, "-q", "baseline", "-c", os.path.join(data, "sync-v1.toml")])
    v2 = os.path.join(data, "sync-v2.toml")
    plans, models, refs = [], [], []
    for _ in range(repeat):  # interleaved, so a noisy spell hits every side alike
        plans.append(timed([binary, "-q", "plan", "--json", "-c", v2]))
        models.append(timed([binary, "-q", "plan", "--model-only", "-c", v2]))
        refs.append(json.loads(subprocess.run([sys.executable, os.path.join(HERE, "duckdb_ref.py"), data],
                                              capture_output=True, text=True, check=True).stdout))
    limited = None
    if same_limit:  # DuckDB may fail under the limit: that is a figure too
        out = subprocess.run([sys.executable, os.path.join(HERE, "duckdb_ref.py"), data, str(memory_mb)],
                             capture_output=True, text=True)
        limited = (json.loads(out.stdout) if out.returncode == 0
                   else {"seconds": None, "counts": None, "error": out.stderr.strip().splitlines()[-1:]})
    return {
        "same_limit": same_limit,
        "ref_limited_s": limited and limited["seconds"],
        "ref_limited_error": limited and limited.get("error"),
        "ref_limited_same": limited is None or limited["seconds"] is None
        or limited["counts"] == refs[0]["counts"],
        "rows": rows, "memory_mb": memory_mb, "slices": slices, "repeat": repeat,
        "plans": [p[0] for p in plans], "models": [m[0] for m in models],
        "refs": [r["seconds"] for r in refs],
        "plan_s": median([p[0] for p in plans]), "plan_rss": max(p[1] for p in plans),
        "model_s": median([m[0] for m in models]), "model_rss": max(m[1] for m in models),
        "ref_s": median([r["seconds"] for r in refs]),
        "base_s": base_s, "base_rss": base_rss,
        "counts": json.loads(plans[0][2])["counts"], "ref_counts": refs[0]["counts"],
    }


def report(r):
    same = r["counts"] == r["ref_counts"]
    print(f"rows {r['rows']:,}  memory_limit_mb {r['memory_mb']}  slices {r['slices']}  cores {os.cpu_count()}  "
          f"median of {r['repeat']} runs (peak RSS: the largest)")
    print(f"  runs: plan {fmt(r['plans'])}  model {fmt(r['models'])}  DuckDB {fmt(r['refs'])}")
    print(f"  voyado-sync plan      {r['plan_s']:7.2f} s   peak RSS {r['plan_rss']:7.0f} MB")
    print(f"  DuckDB same work      {r['ref_s']:7.2f} s")
    print(f"  ratio                 {r['plan_s'] / r['ref_s']:7.2f} x DuckDB")
    if r["same_limit"] and not r["ref_limited_s"]:
        print(f"  DuckDB, memory_limit {r['memory_mb']} MB failed: {r['ref_limited_error']}")
    if r["ref_limited_s"]:
        print(f"  DuckDB, memory_limit {r['memory_mb']} MB {r['ref_limited_s']:7.2f} s (1 run)   "
              f"ratio {r['plan_s'] / r['ref_limited_s']:.2f} x   counts "
              f"{'identical' if r['ref_limited_same'] else 'DIFFERENT'}")
    print(f"  model alone (ours)    {r['model_s']:7.2f} s   peak RSS {r['model_rss']:7.0f} MB   "
          f"plan/model {r['plan_s'] / r['model_s']:.2f} x")
    print(f"  baseline (v1)         {r['base_s']:7.2f} s   peak RSS {r['base_rss']:7.0f} MB")
    print(f"  counts ours           {r['counts']}")
    print(f"  counts DuckDB         {r['ref_counts']}   {'identical' if same else 'DIFFERENT'}", flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--memory-mb", type=int, default=2048)
    ap.add_argument("--datafusion", action="append", default=[], metavar="KEY=VALUE",
                    help="a [datafusion] session option for our runs (repeatable)")
    ap.add_argument("--slices", type=int, default=1,
                    help="run our model in this many slices by customer_id ([model] partitions)")
    ap.add_argument("--repeat", type=int, default=3,
                    help="timed runs of each side; the median is printed (this machine is noisy)")
    ap.add_argument("--binary", default=os.path.join(ROOT, "target", "release", "voyado-sync"))
    ap.add_argument("--same-limit", action="store_true",
                    help="also run DuckDB once under --memory-mb (its memory_limit)")
    args = ap.parse_args()
    report(measure(args.rows, args.memory_mb, args.slices, args.repeat, args.binary,
                   [o.split("=", 1) for o in args.datafusion], args.same_limit))


if __name__ == "__main__":
    main()
