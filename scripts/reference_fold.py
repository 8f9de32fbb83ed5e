#!/usr/bin/env python3
"""The recsys features (DESIGN.md section 5) as a plain single-threaded Python fold,
the seed's approach, for `scripts/bench.sh --python` to measure skewless against.

Every accepted event is applied once (first copy by event_id wins, no horizon), in
(event_time, event_id) order per user; no lateness. Prints users and events applied.
    scripts/reference_fold.py FILE...   (.jsonl, .jsonl.gz, .jsonl.zst)
"""
import gzip
import json
import sys

KNOWN = {"ecommerce.purchase_completed", "ecommerce.item_viewed", "session.started",
         "recommendation.items_shown"}


def lines(path):
    if path.endswith(".gz"):
        return gzip.open(path, "rb")
    if path.endswith(".zst"):
        import io
        import zstandard  # installed by bench.sh into its virtual environment
        raw = zstandard.ZstdDecompressor().stream_reader(open(path, "rb"), read_across_frames=True)
        return io.BufferedReader(raw, 1 << 20)
    return open(path, "rb")


def main(paths):
    events, seen = [], set()
    for path in paths:
        with lines(path) as f:
            for line in f:
                try:
                    e = json.loads(line)
                except ValueError:
                    continue
                if not isinstance(e, dict) or e.get("event_type") not in KNOWN:
                    continue
                i, u, t = e.get("event_id"), e.get("user_id"), e.get("event_time")
                if not (isinstance(i, str) and isinstance(u, str) and isinstance(t, (int, float))):
                    continue
                if i not in seen:
                    seen.add(i)
                    kind, p = e["event_type"], e.get("payload") or {}
                    # Only what the fold reads is kept, as the seed's fold did.
                    price = p.get("price", p.get("amount"))
                    events.append((t, i, u, kind, p.get("item_id"), price, p.get("category")))
    events.sort(key=lambda e: (e[0], e[1]))
    users = {}
    for t, _, u, kind, item, price, category in events:
        s = users.get(u)
        if s is None:
            s = users[u] = {"purchased": set(), "viewed": [], "scores": {}, "spend": 0.0,
                            "session": None, "active": None}
        if kind == "ecommerce.purchase_completed":
            if not isinstance(price, (int, float)) or item is None:
                continue
            s["purchased"].add(item)
            s["spend"] += price
            c = category or "unknown"
            s["scores"][c] = s["scores"].get(c, 0.0) * 0.9 + 1.0
            s["active"] = t
        elif kind == "ecommerce.item_viewed":
            if item is None:
                continue
            s["viewed"].append(item)
            del s["viewed"][:-100]
            c = category or "unknown"
            s["scores"][c] = s["scores"].get(c, 0.0) * 0.95 + 0.3
            s["active"] = t
        elif kind == "session.started":
            s["session"] = t
    views = {u: {"n_purchased_items": len(s["purchased"]), "n_viewed_items": len(s["viewed"]),
                 "total_spend": s["spend"], "session_active": s["session"] is not None,
                 "last_active_time": s["active"],
                 "top_categories": sorted(s["scores"].items(), key=lambda kv: (-kv[1], kv[0]))[:5]}
             for u, s in users.items() if s["purchased"] or s["viewed"] or s["session"] is not None}
    print(json.dumps({"users": len(views), "events": len(events)}))


if __name__ == "__main__":
    main(sys.argv[1:])
