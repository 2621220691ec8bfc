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
    args = ap.parse_args()
    data = os.path.join(HERE, "data", str(args.rows))
    if not os.path.exists(os.path.join(data, "v2", "orders.parquet")):
        print(f"generating {args.rows} customers in {data} ...", flush=True)
        subprocess.run([sys.executable, os.path.join(HERE, "generate.py"), str(args.rows), data], check=True)
    for v in ("v1", "v2"):
        with open(os.path.join(data, f"sync-{v}.toml"), "w") as f:
            f.write(config(data, v, args.memory_mb,
                           [o.split("=", 1) for o in args.datafusion], args.slices))
    subprocess.run([args.binary, "-q", "reset", "-c", os.path.join(data, "sync-v1.toml")], check=True,
                   stdout=subprocess.DEVNULL)
    base_s, base_rss, _ = timed([args.binary, "-q", "baseline", "-c", os.path.join(data, "sync-v1.toml")])
    v2 = os.path.join(data, "sync-v2.toml")
    plans, models, refs = [], [], []
    for _ in range(args.repeat):  # interleaved, so a noisy spell hits every side alike
        plans.append(timed([args.binary, "-q", "plan", "--json", "-c", v2]))
        models.append(timed([args.binary, "-q", "plan", "--model-only", "-c", v2]))
        refs.append(json.loads(subprocess.run([sys.executable, os.path.join(HERE, "duckdb_ref.py"), data],
                                              capture_output=True, text=True, check=True).stdout))
    plan_s, plan_rss = median([p[0] for p in plans]), max(p[1] for p in plans)
    model_s, model_rss = median([m[0] for m in models]), max(m[1] for m in models)
    ours = json.loads(plans[0][2])["counts"]
    ref = {"seconds": median([r["seconds"] for r in refs]), "counts": refs[0]["counts"]}
    same = ours == ref["counts"]
    print(f"rows {args.rows:,}  memory_limit_mb {args.memory_mb}  slices {args.slices}  cores {os.cpu_count()}  "
          f"median of {args.repeat} runs (peak RSS: the largest)")
    print(f"  runs: plan {fmt(p[0] for p in plans)}  model {fmt(m[0] for m in models)}  "
          f"DuckDB {fmt(r['seconds'] for r in refs)}")
    print(f"  voyado-sync plan      {plan_s:7.2f} s   peak RSS {plan_rss:7.0f} MB")
    print(f"  DuckDB same work      {ref['seconds']:7.2f} s")
    print(f"  ratio                 {plan_s / ref['seconds']:7.2f} x DuckDB")
    print(f"  model alone (ours)    {model_s:7.2f} s   peak RSS {model_rss:7.0f} MB   plan/model {plan_s / model_s:.2f} x")
    print(f"  baseline (v1)         {base_s:7.2f} s   peak RSS {base_rss:7.0f} MB")
    print(f"  counts ours           {ours}")
    print(f"  counts DuckDB         {ref['counts']}   {'identical' if same else 'DIFFERENT'}")


if __name__ == "__main__":
    main()
