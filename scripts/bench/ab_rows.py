#!/usr/bin/env python3
"""Every lrsa-bench row of an A/B side by side (dev/ab.sh bench).

    python3 scripts/bench/ab_rows.py --baseline A1.jsonl A2.jsonl --tree B1.jsonl B2.jsonl

Reads the JSON lines `lrsa-bench ... --json` writes, one file per run, and prints one line per row
(op, model, T): each run's time for the baseline and for the tree, the change of their means, and,
where the row has a reference (LRSA against the fastest dense of its run), each run's time against
it: issue 5's LRSA / dense ratio on the fwd+bwd rows.
"""
import argparse
import json
import statistics
import sys


def read_runs(paths):
    """Per file: {(op, config, tokens): row}, rows in the order of the first file."""
    runs, order = [], []
    for path in paths:
        rows = {}
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as e:
                    sys.exit(f"ab_rows.py: {path}:{n}: not a JSON line ({e.msg})")
                if record.get("kind") != "row":
                    continue
                key = (record["op"], record["config"], record["tokens"])
                rows[key] = record
                if key not in order:
                    order.append(key)
        runs.append(rows)
    return runs, order


def ms(row):
    return row["ms"]


def ratio(row):
    ref = row.get("ref_ms")
    return row["ms"] / ref if ref else None


def column(runs, key, value):
    values = [value(rows[key]) for rows in runs if key in rows]
    return ", ".join(f"{v:.4f}" for v in values if v is not None) or "-"


def mean_ms(runs, key):
    values = [rows[key]["ms"] for rows in runs if key in rows]
    return statistics.mean(values) if values else None


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", nargs="+", required=True, help="the baseline's JSON lines, a file per run")
    parser.add_argument("--tree", nargs="+", required=True, help="the tree's JSON lines, a file per run")
    args = parser.parse_args()
    base, base_order = read_runs(args.baseline)
    tree, tree_order = read_runs(args.tree)
    order = base_order + [key for key in tree_order if key not in base_order]
    print(f"{'op':28} {'model':10} {'T':>7}  baseline ms | tree ms | change of the means")
    for key in order:
        op, config, tokens = key
        before, after = mean_ms(base, key), mean_ms(tree, key)
        change = f"{100.0 * (after / before - 1.0):+.1f}%" if before and after else "-"
        print(f"{op:28} {config:10} {tokens:7}  {column(base, key, ms)} | {column(tree, key, ms)} | {change}")
        if any(ratio(rows[key]) for rows in base + tree if key in rows):
            ref = next(rows[key]["ref"] for rows in base + tree if key in rows)
            print(f"{'':28} {'':10} {'':7}  against {ref}: {column(base, key, ratio)} | {column(tree, key, ratio)}")


if __name__ == "__main__":
    main()
