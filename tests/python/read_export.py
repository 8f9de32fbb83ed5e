"""A real client of the training export: pyarrow reads the Hive-partitioned Parquet
dataset and must get the JSONL form's rows, columns and types.

    python read_export.py DATASET_DIR ROWS_JSONL
"""
import json
import math
import sys

import pyarrow as pa
import pyarrow.dataset as ds

dataset_dir, jsonl = sys.argv[1], sys.argv[2]
table = ds.dataset(dataset_dir, format="parquet", partitioning="hive").to_table()
want = [json.loads(line) for line in open(jsonl)]
assert want, "the JSONL form has rows"
columns = list(want[0].keys())
# The dataset's columns: the JSONL form's, in its order, and the partition column.
assert table.column_names == columns + ["dt"], (table.column_names, columns)

types = {field.name: field.type for field in table.schema}
ts = pa.timestamp("ms", tz="UTC")
assert types["ts"] == ts and types["served_as_of"] == ts, types["ts"]
assert types["position"] == pa.int32()
assert types["n_purchased_items"] == pa.int64() and types["n_viewed_items"] == pa.int64()
assert types["total_spend"] == pa.float64() and types["last_active_time"] == pa.float64()
assert types["session_active"] == pa.bool_() and types["label_viewed_30m"] == pa.bool_()
assert types["label_spend_24h"] == pa.float64()
assert types["top_categories"] == pa.list_(
    pa.struct([pa.field("key", pa.string(), nullable=False), pa.field("score", pa.float64(), nullable=False)])
), types["top_categories"]
assert types["served__top_categories"] == types["top_categories"]


def plain(row):
    """A dataset row in the JSONL form's terms: times in epoch seconds, top_k pairs."""
    out = {}
    for name in columns:
        value = row[name]
        if name in ("ts", "served_as_of") and value is not None:
            value = value.timestamp()
        elif isinstance(value, list):
            value = [[item["key"], item["score"]] for item in value]
        out[name] = value
    assert row["dt"] == row["ts"].strftime("%Y-%m-%d"), (row["dt"], row["ts"])
    return out


def key(row):
    return (row["user_id"], row["ts"], row["event_id"], row["position"])


got = sorted((plain(r) for r in table.to_pylist()), key=key)
assert len(got) == len(want), (len(got), len(want))


def same(a, b):
    if isinstance(a, float) and isinstance(b, (int, float)):
        return math.isclose(a, b, rel_tol=0, abs_tol=1e-3 if abs(b) > 1e6 else 1e-12)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b


for g, w in zip(got, want):
    for name in columns:
        assert same(g[name], w[name]), (name, g[name], w[name], w["row_id"], w["position"])
print(f"ok {len(got)} rows, {len(columns)} columns")
