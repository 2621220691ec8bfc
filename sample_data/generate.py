"""Generates the bundled sample extracts: customers and orders, version 1 and version 2.

Version 2 is version 1 a day later: some customers moved or changed names, some placed
orders (changing their aggregates), a few joined and a few left. Both versions include rows
that break the identity rules (a malformed email, an empty one, two rows sharing one email),
so every kind of change-set row shows up.

    pip install pyarrow && python3 sample_data/generate.py
"""

import datetime as dt
import decimal
import os
import random

import pyarrow as pa
import pyarrow.parquet as pq

HERE = os.path.dirname(os.path.abspath(__file__))
FIRST = ["Ada", "Björn", "Clara", "David", "Elin", "Filip", "Greta", "Hugo", "Ines", "Johan",
         "Karin", "Lars", "Maja", "Nils", "Olga", "Per", "Rut", "Sven", "Tove", "Ulf"]
LAST = ["Andersson", "Berg", "Carlsson", "Dahl", "Ek", "Fors", "Gran", "Holm", "Isaksson", "Jansson"]
CITIES = ["Stockholm", "Göteborg", "Malmö", "Uppsala", "Umeå", "Lund", None]

CUSTOMER_SCHEMA = pa.schema([
    ("customer_id", pa.int64()),
    ("email", pa.string()),
    ("first_name", pa.string()),
    ("last_name", pa.string()),
    ("city", pa.string()),
    ("country_code", pa.string()),
    ("birth_date", pa.date32()),
    ("newsletter", pa.bool_()),
    ("signed_up_at", pa.timestamp("us", tz="UTC")),
])
ORDER_SCHEMA = pa.schema([
    ("order_id", pa.int64()),
    ("customer_id", pa.int64()),
    ("amount", pa.decimal128(10, 2)),
    ("ordered_at", pa.timestamp("us", tz="UTC")),
])


def customers_v1(rng):
    rows = []
    for i in range(1, 41):
        first, last = rng.choice(FIRST), rng.choice(LAST)
        rows.append({
            "customer_id": i,
            "email": f"{first.lower().replace('ö', 'o')}.{last.lower()}{i}@example.com",
            "first_name": first,
            "last_name": last,
            "city": rng.choice(CITIES),
            "country_code": "SE",
            "birth_date": dt.date(1960, 1, 1) + dt.timedelta(days=rng.randrange(15000)),
            "newsletter": rng.random() < 0.5 if i % 7 else None,
            "signed_up_at": dt.datetime(2020, 1, 1, tzinfo=dt.timezone.utc)
            + dt.timedelta(seconds=rng.randrange(100_000_000)),
        })
    # Identifier quirks: padding and case are normalised; the rest is invalid.
    rows[3]["email"] = "  " + rows[3]["email"].upper() + " "
    rows[5]["email"] = "not-an-email"
    rows[6]["email"] = ""
    rows[8]["email"] = rows[9]["email"].upper()  # shares an address with row 9
    return rows


def orders_for(customers, rng, start_id, count, day0):
    out = []
    ids = [c["customer_id"] for c in customers]
    for k in range(count):
        out.append({
            "order_id": start_id + k,
            "customer_id": rng.choice(ids),
            "amount": decimal.Decimal(rng.randrange(1000, 250000)) / 100,
            "ordered_at": day0 + dt.timedelta(minutes=rng.randrange(60 * 24 * 300)),
        })
    return out


def write(rows, schema, path):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    table = pa.Table.from_pylist(rows, schema=schema)
    pq.write_table(table, path, compression="zstd")


def main():
    rng = random.Random(20261128)
    v1 = customers_v1(rng)
    orders1 = orders_for(v1, rng, 1, 120, dt.datetime(2025, 1, 1, tzinfo=dt.timezone.utc))

    v2 = [dict(c) for c in v1]
    v2[0]["city"] = "Kiruna"                  # moved
    v2[1]["last_name"] = "Nyström"            # married
    v2[2]["newsletter"] = not bool(v2[2]["newsletter"])
    v2[10]["city"] = None                     # city removed upstream
    v2[5]["email"] = "olga.fixed5@example.com"  # invalid row fixed: becomes new
    del v2[30:33]                             # three customers left
    for i in range(41, 45):                   # four joined
        v2.append({
            "customer_id": i,
            "email": f"new.customer{i}@example.com",
            "first_name": rng.choice(FIRST),
            "last_name": rng.choice(LAST),
            "city": rng.choice(CITIES),
            "country_code": "SE",
            "birth_date": dt.date(1990, 5, 17),
            "newsletter": True,
            "signed_up_at": dt.datetime(2026, 11, 27, 12, 30, tzinfo=dt.timezone.utc),
        })
    # New orders only for a few existing customers, so their aggregates change.
    orders2_new = [
        {"order_id": 1000 + k, "customer_id": cid,
         "amount": decimal.Decimal("199.90"),
         "ordered_at": dt.datetime(2026, 11, 27, 18, k, tzinfo=dt.timezone.utc)}
        for k, cid in enumerate([12, 13, 14])
    ]

    write(v1, CUSTOMER_SCHEMA, os.path.join(HERE, "v1", "customers.parquet"))
    write(orders1[:60], ORDER_SCHEMA, os.path.join(HERE, "v1", "orders", "part-0.parquet"))
    write(orders1[60:], ORDER_SCHEMA, os.path.join(HERE, "v1", "orders", "part-1.parquet"))
    write(v2, CUSTOMER_SCHEMA, os.path.join(HERE, "v2", "customers.parquet"))
    write(orders1[:60], ORDER_SCHEMA, os.path.join(HERE, "v2", "orders", "part-0.parquet"))
    write(orders1[60:], ORDER_SCHEMA, os.path.join(HERE, "v2", "orders", "part-1.parquet"))
    write(orders2_new, ORDER_SCHEMA, os.path.join(HERE, "v2", "orders", "part-2.parquet"))


if __name__ == "__main__":
    main()
