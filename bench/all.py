"""Every performance figure BENCHMARKS.md reports, from one command, each against its target:

    pip install duckdb pyarrow
    python3 bench/all.py                # about 35 minutes on 2 cores; generates data first

Builds the release binary, runs `bench/run.py`'s measurement for 1 M customers, 10 M in
memory, 10 M under the default pool, 10 M and 30 M under `memory_limit_mb = 512` in slices
(with DuckDB also under the same limit), then the encoder and client benchmarks (`cargo bench`), and prints one table of figures and
targets (markdown). `--skip-30m` leaves out the 30 M row (its data takes 2.5 GB and
several minutes to generate).
"""

import argparse
import os
import re
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
import run  # noqa: E402

# (label, rows, memory_limit_mb, slices, repeat, DuckDB also under the same limit)
CASES = [
    ("1 M", 1_000_000, 2048, 1, 9, False),
    ("10 M in memory", 10_000_000, 12000, 1, 5, False),
    ("10 M, default pool", 10_000_000, 2048, 1, 3, False),
    ("10 M under 512 MB", 10_000_000, 512, 8, 5, True),
    ("30 M under 512 MB", 30_000_000, 512, 24, 3, True),
]


def cargo_bench(name):
    out = subprocess.run(["cargo", "bench", "--locked", "--bench", name], cwd=ROOT,
                         capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"cargo bench --bench {name} failed: {out.stderr[-2000:]}")
    return out.stdout


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--skip-30m", action="store_true", help="leave out the 30 M row")
    args = ap.parse_args()
    subprocess.run(["cargo", "build", "--release", "--locked"], cwd=ROOT, check=True)
    results = {}
    for label, rows, memory_mb, slices, repeat, same_limit in CASES:
        if args.skip_30m and rows == 30_000_000:
            continue
        print(f"== {label}", flush=True)
        results[label] = r = run.measure(rows, memory_mb, slices, repeat, same_limit=same_limit)
        run.report(r)

    encode = cargo_bench("encode")
    client = cargo_bench("client")
    print(encode + client, flush=True)
    def found(pattern, text):
        m = re.search(pattern, text)
        if not m:
            sys.exit(f"no figure matching {pattern!r} in the benchmark's output")
        return m.groups()

    enc_rate = float(found(r"= ([\d.]+) M rows/s", encode)[0])
    free_rate = float(found(r"no cap, concurrency 64: (\d+) requests/s", client)[0])
    target_rps, cap, rps, dev, n429 = found(
        r"requests_per_second = (\d+), emulator capped at (\d+)/s: ([\d.]+) requests/s "
        r"\(([+-][\d.]+) %\), 429 answers: (\d+)", client)

    rows = []

    def target(what, figure, met):
        rows.append((what, figure, "met" if met else "NOT MET"))

    print("\n| case | memory_limit_mb | slices | plan | peak RSS | DuckDB | ratio | DuckDB under the same "
          "limit (1 run) | model alone | plan / model | baseline | counts |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for label, r in results.items():
        ratio, per_model = r["plan_s"] / r["ref_s"], r["plan_s"] / r["model_s"]
        same = r["counts"] == r["ref_counts"] and r["ref_limited_same"]
        limited = (f"{r['ref_limited_s']:.2f} s, {r['plan_s'] / r['ref_limited_s']:.2f}x"
                   if r["ref_limited_s"] else "failed" if r["same_limit"] else "")
        print(f"| {label} ({r['repeat']} runs) | {r['memory_mb']} | {r['slices']} | {r['plan_s']:.2f} s "
              f"| {r['plan_rss']:.0f} MB | {r['ref_s']:.2f} s | {ratio:.2f}x | {limited} | {r['model_s']:.2f} s "
              f"| {per_model:.2f}x | {r['base_s']:.2f} s, {r['base_rss']:.0f} MB "
              f"| {'identical' if same else 'DIFFERENT'} |")
        target(f"{label}: counts identical to DuckDB's", "identical" if same else "different", same)
        if r["rows"] <= 10_000_000:  # the targets' sizes; 30 M has to complete
            target(f"{label}: `plan` <= 1.5x the model alone", f"{per_model:.2f}x", per_model <= 1.5)
    one, ten = results["1 M"], results["10 M in memory"]
    target("`plan` <= 0.6x DuckDB at 1 M", f"{one['plan_s'] / one['ref_s']:.2f}x",
           one["plan_s"] / one["ref_s"] <= 0.6)
    target("`plan` <= 0.5x DuckDB at 10 M", f"{ten['plan_s'] / ten['ref_s']:.2f}x",
           ten["plan_s"] / ten["ref_s"] <= 0.5)
    small = results["10 M under 512 MB"]
    if small["ref_limited_s"]:  # DuckDB failing under the limit leaves nothing to compare
        target("`plan` <= 0.5x DuckDB at 10 M, both under `memory_limit_mb = 512`",
               f"{small['plan_s'] / small['ref_limited_s']:.2f}x (against DuckDB unlimited: "
               f"{small['plan_s'] / small['ref_s']:.2f}x)", small["plan_s"] / small["ref_limited_s"] <= 0.5)
    rss = max(small["plan_rss"], small["base_rss"])
    target("peak RSS < 1 GB at 10 M with `memory_limit_mb = 512` (plan, baseline)",
           f"{small['plan_rss']:.0f} MB, {small['base_rss']:.0f} MB", rss < 1024)
    if "30 M under 512 MB" in results:
        big = results["30 M under 512 MB"]
        target("30 M completes under `memory_limit_mb = 512` (plan, baseline)",
               f"{big['plan_s']:.2f} s, {big['plan_rss']:.0f} MB; {big['base_s']:.2f} s, "
               f"{big['base_rss']:.0f} MB", True)
    target("encoder >= 1 M rows/s per core", f"{enc_rate:.2f} M rows/s", enc_rate >= 1.0)
    target("client >= 5,000 requests/s at concurrency 64, no cap", f"{free_rate:.0f} requests/s",
           free_rate >= 5000)
    target(f"`requests_per_second = {target_rps}` held within 5 %, zero 429 (emulator capped at {cap}/s)",
           f"{rps} requests/s ({dev} %), {n429} answers 429", abs(float(dev)) <= 5 and n429 == "0")
    print("\n| target | figure | |")
    print("|---|---|---|")
    for what, figure, met in rows:
        print(f"| {what} | {figure} | {met} |")


if __name__ == "__main__":
    main()
