"""Two builds of voyado-sync side by side: `plan` and the model alone on the same data,
the binaries run in turn (the order alternating each round, so a noisy spell hits both),
medians printed with every run, and whether their counts agree.

    python3 bench/ab.py --before OLD/voyado-sync --after target/release/voyado-sync \
        --rows 1000000 --rounds 7
    python3 bench/ab.py --before ... --after ... --rows 10000000 --memory-mb 512 --slices 8

Each binary baselines v1 into its own state first (the generated data is shared with
bench/run.py, which makes it if needed).
"""

import argparse
import json
import os
import subprocess
import sys

import run as bench


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--before", required=True)
    ap.add_argument("--after", required=True)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--memory-mb", type=int, default=2048)
    ap.add_argument("--slices", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    data = os.path.join(bench.HERE, "data", str(args.rows))
    if not os.path.exists(os.path.join(data, "v2", "orders.parquet")):
        subprocess.run([sys.executable, os.path.join(bench.HERE, "generate.py"), str(args.rows), data],
                       check=True)
    sides = {"before": args.before, "after": args.after}
    configs = {}
    for name in sides:
        for v in ("v1", "v2"):
            path = os.path.join(data, f"ab-{name}-{v}.toml")
            text = bench.config(data, v, args.memory_mb, (), args.slices)
            with open(path, "w") as f:
                f.write(text.replace('name = "bench"', f'name = "ab-{name}"', 1))
            configs[name, v] = path
    res = {name: {"plan": [], "model": [], "rss": []} for name in sides}
    counts = {}
    for name, binary in sides.items():
        subprocess.run([binary, "-q", "reset", "-c", configs[name, "v1"]], check=True,
                       stdout=subprocess.DEVNULL)
        res[name]["base"] = bench.timed([binary, "-q", "baseline", "-c", configs[name, "v1"]])[:2]
    order = list(sides.items())
    for r in range(args.rounds):
        for name, binary in (order if r % 2 == 0 else order[::-1]):
            v2 = configs[name, "v2"]
            s, rss, out = bench.timed([binary, "-q", "plan", "--json", "-c", v2])
            res[name]["plan"].append(s)
            res[name]["rss"].append(rss)
            counts[name] = json.loads(out)["counts"]
            res[name]["model"].append(bench.timed([binary, "-q", "plan", "--model-only", "-c", v2])[0])
    print(f"rows {args.rows:,}  memory_limit_mb {args.memory_mb}  slices {args.slices}  "
          f"rounds {args.rounds} (interleaved)")
    for name in sides:
        x = res[name]
        plan, model = bench.median(x["plan"]), bench.median(x["model"])
        print(f"  {name:6}  plan {plan:6.2f} s [{bench.fmt(x['plan'])}]  model {model:6.2f} s "
              f"[{bench.fmt(x['model'])}]  plan/model {plan / model:.2f}x  peak RSS {max(x['rss']):.0f} MB  "
              f"baseline {x['base'][0]:.2f} s / {x['base'][1]:.0f} MB")
    same = counts["before"] == counts["after"]
    print(f"  counts {counts['before']}  {'identical' if same else 'DIFFERENT: ' + str(counts['after'])}")


if __name__ == "__main__":
    main()
