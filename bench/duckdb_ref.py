"""The reference: the same change detection done by DuckDB on the same data.

The model runs on the new version with the same identity rules (trim + lowercase, email
shape, duplicates invalid), then a full outer join on the identifier with the previous
valid model output (materialised beforehand, not timed), a null-safe comparison of every
mapped column, and counts of each kind. Prints one JSON object.

    python3 bench/duckdb_ref.py bench/data/1000000 [memory_limit_mb]

With `memory_limit_mb`, DuckDB runs under that memory limit (spilling to a temporary
folder), as our runs under `memory_limit_mb` do; without it, under DuckDB's default (80 %
of the machine's memory).
"""

import json
import os
import sys
import time

import duckdb

HERE = os.path.dirname(os.path.abspath(__file__))
COLUMNS = ["first_name", "last_name", "city", "country_code", "birth_date", "newsletter",
           "signed_up_at", "churn_score", "segment", "order_count", "total_spent",
           "last_order_at", "loyalty_tier"]


def identified(con, data, version):
    model = open(os.path.join(HERE, "model.sql")).read()
    con.execute(f"CREATE OR REPLACE VIEW customers AS SELECT * FROM '{data}/{version}/customers.parquet'")
    con.execute(f"CREATE OR REPLACE VIEW orders AS SELECT * FROM '{data}/{version}/orders.parquet'")
    return f"""
        WITH m AS ({model}),
        p AS (SELECT *, lower(trim(email)) AS _id FROM m),
        w AS (SELECT *, count(*) OVER (PARTITION BY _id) AS _n FROM p)
        SELECT * EXCLUDE (_n),
               (_id IS NULL OR _id = ''
                OR NOT regexp_full_match(_id, '[^@\\s]+@[^@\\s.]+(\\.[^@\\s.]+)+')
                OR _n > 1) AS _invalid
        FROM w
    """


def main():
    data = sys.argv[1]
    con = duckdb.connect()
    con.execute("SET threads TO 2")
    if len(sys.argv) > 2:
        con.execute(f"SET memory_limit = '{int(sys.argv[2])}MB'")
    con.execute(f"CREATE TABLE prev AS SELECT * FROM ({identified(con, data, 'v1')}) WHERE NOT _invalid")
    differs = " OR ".join(f"(c.{c} IS DISTINCT FROM p.{c})" for c in COLUMNS)
    started = time.perf_counter()
    query = f"""
        SELECT
          count(*) FILTER (WHERE c._id IS NOT NULL AND NOT c._invalid AND p._id IS NULL) AS new,
          count(*) FILTER (WHERE NOT c._invalid AND p._id IS NOT NULL AND ({differs})) AS changed,
          count(*) FILTER (WHERE NOT c._invalid AND p._id IS NOT NULL AND NOT ({differs})) AS unchanged,
          count(*) FILTER (WHERE c._invalid IS NULL) AS deleted,
          count(*) FILTER (WHERE c._invalid) AS invalid
        FROM ({identified(con, data, 'v2')}) c
        FULL OUTER JOIN prev p ON c._id = p._id
    """
    row = con.execute(query).fetchone()
    elapsed = time.perf_counter() - started
    counts = dict(zip(["new", "changed", "unchanged", "deleted", "invalid"], row))
    print(json.dumps({"seconds": elapsed, "counts": counts}))


if __name__ == "__main__":
    main()
