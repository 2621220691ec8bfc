"""Generates benchmark extracts: N customers with ~2 orders each (v1), and the next day's
version (v2) with about 3 % new, 7 % changed and 2 % deleted customers.

    python3 bench/generate.py 1000000 bench/data/1m

Columns cover every mapped type (strings, integers, floats, decimals, dates, timestamps,
booleans) with nulls; 0.1 % of emails are malformed and a few are duplicated, so the
identity rules have work to do.
"""

import os
import sys

import duckdb


def main():
    n = int(sys.argv[1])
    out = sys.argv[2]
    for v in ("v1", "v2"):
        os.makedirs(os.path.join(out, v), exist_ok=True)
    con = duckdb.connect()
    con.execute("SET threads TO 2")
    con.execute(f"""
        CREATE TABLE c1 AS
        SELECT i AS customer_id,
               CASE WHEN i % 1000 = 7 THEN 'broken-' || i
                    WHEN i % 100000 = 11 THEN 'user' || (i - 1) || '@example.com'
                    ELSE 'user' || i || '@example.com' END AS email,
               (['Ada','Björn','Clara','David','Elin','Filip','Greta','Hugo'])[1 + (hash(i) % 8)::INT] AS first_name,
               (['Andersson','Berg','Carlsson','Dahl','Ek','Fors'])[1 + (hash(i + 1) % 6)::INT] AS last_name,
               CASE WHEN hash(i + 2) % 10 = 0 THEN NULL
                    ELSE (['Stockholm','Göteborg','Malmö','Uppsala','Umeå'])[1 + (hash(i + 3) % 5)::INT] END AS city,
               'SE' AS country_code,
               DATE '1950-01-01' + (hash(i + 4) % 20000)::INT AS birth_date,
               CASE WHEN hash(i + 5) % 7 = 0 THEN NULL ELSE hash(i + 6) % 2 = 0 END AS newsletter,
               TIMESTAMPTZ '2020-01-01 00:00:00+00' + to_seconds((hash(i + 7) % 150000000)::BIGINT) AS signed_up_at,
               CASE WHEN hash(i + 8) % 20 = 0 THEN NULL ELSE (hash(i + 9) % 10000) / 10000.0 END AS churn_score,
               CASE WHEN hash(i + 10) % 4 = 0 THEN NULL ELSE 'segment-' || (hash(i + 11) % 12) END AS segment
        FROM range({n}) t(i)
    """)
    con.execute(f"""
        CREATE TABLE o1 AS
        SELECT j AS order_id,
               (hash(j) % {n})::BIGINT AS customer_id,
               ((hash(j + 1) % 500000) / 100.0)::DECIMAL(12, 2) AS amount,
               TIMESTAMPTZ '2025-01-01 00:00:00+00' + to_seconds((hash(j + 2) % 30000000)::BIGINT) AS ordered_at
        FROM range({2 * n}) t(j)
    """)
    new = int(n * 0.03)
    con.execute(f"""
        CREATE TABLE c2 AS
        SELECT * REPLACE (
                 CASE WHEN hash(customer_id + 100) % 100 < 4 THEN 'Kiruna' ELSE city END AS city,
                 CASE WHEN hash(customer_id + 100) % 100 BETWEEN 4 AND 6
                      THEN coalesce(churn_score, 0) + 0.5 ELSE churn_score END AS churn_score)
        FROM c1
        WHERE hash(customer_id + 200) % 100 >= 2
        UNION ALL
        SELECT {n} + i, 'new' || i || '@example.com', 'Nils', 'Nyberg', 'Lund', 'SE',
               DATE '1990-05-17', true, TIMESTAMPTZ '2026-11-27 12:00:00+00', 0.25, 'segment-new'
        FROM range({new}) t(i)
    """)
    con.execute(f"""
        CREATE TABLE o2 AS
        SELECT * FROM o1
        UNION ALL
        SELECT {2 * n} + i, {n} + i, 49.90, TIMESTAMPTZ '2026-11-27 18:00:00+00' FROM range({new}) t(i)
    """)
    for table, path in (("c1", "v1/customers.parquet"), ("o1", "v1/orders.parquet"),
                        ("c2", "v2/customers.parquet"), ("o2", "v2/orders.parquet")):
        con.execute(f"COPY {table} TO '{os.path.join(out, path)}' (FORMAT parquet, COMPRESSION zstd)")


if __name__ == "__main__":
    main()
