#!/usr/bin/env bash
# Run ON the GPU machine: the duration of every kernel a command launches, from Nsight Compute
# (one metric, gpu__time_duration.sum, so one pass per kernel; the clocks and caches are left
# alone, as METHOD.md asks). Kernels run one at a time under ncu, so the times are each
# kernel's own, without overlap or launch gaps; the table is for finding where time goes, not
# for throughput figures.
#   bash scripts/gpu/kernel_times.sh [--filter REGEX] [--csv FILE] -- COMMAND [ARGS]...
# --filter: profile only kernels whose function name matches REGEX (the others run unprofiled).
# --csv:    keep ncu's raw CSV in FILE.
# Prints one line per launch (id, grid, block, microseconds, kernel), then a summary per kernel
# name in order of first launch (launches, total and mean microseconds).
set -euo pipefail
filter=""
csv=""
while [ $# -gt 0 ]; do
  case $1 in
    --filter) filter=$2; shift 2 ;;
    --csv) csv=$2; shift 2 ;;
    --) shift; break ;;
    *) echo "kernel_times.sh: unknown argument '$1' (expected --filter, --csv or -- COMMAND)" >&2; exit 2 ;;
  esac
done
[ $# -gt 0 ] || { echo "kernel_times.sh: no command given after --" >&2; exit 2; }
ncu_bin=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -n 1 || true)
[ -n "$ncu_bin" ] || { echo "kernel_times.sh: ncu (Nsight Compute) not found" >&2; exit 2; }
raw=${csv:-$(mktemp)}
args=(--clock-control none --cache-control none --metrics gpu__time_duration.sum --csv --print-units base
  --print-kernel-base function)
[ -z "$filter" ] || args+=(--kernel-name "regex:$filter")
rc=0
"$ncu_bin" "${args[@]}" "$@" >"$raw" || rc=$?
if [ $rc -ne 0 ]; then
  echo "kernel_times.sh: ncu or the command exited with $rc; the end of its output:" >&2
  tail -n 20 "$raw" >&2
fi
python3 - "$raw" <<'EOF'
import csv, sys
rows, header = [], None
with open(sys.argv[1], newline="") as f:
    for rec in csv.reader(f):
        if header is None:
            if "Kernel Name" in rec and "Metric Value" in rec:
                header = {name: i for i, name in enumerate(rec)}
            continue
        if len(rec) == len(header) and rec[header["Metric Name"]] == "gpu__time_duration.sum":
            rows.append(rec)
if header is None:
    sys.exit("kernel_times.sh: ncu printed no kernel table (see its output above)")
summary = {}
print(f"{'id':>5} {'grid':>14} {'block':>12} {'us':>10}  kernel")
for rec in rows:
    name = rec[header["Kernel Name"]]
    unit = rec[header["Metric Unit"]]
    us = float(rec[header["Metric Value"]].replace(",", "")) / (1000.0 if unit in ("ns", "nsecond") else 1.0)
    print(f"{rec[header['ID']]:>5} {rec[header['Grid Size']]:>14} {rec[header['Block Size']]:>12} {us:10.2f}  {name[:100]}")
    n, total = summary.get(name, (0, 0.0))
    summary[name] = (n + 1, total + us)
print(f"\n{'launches':>8} {'total us':>12} {'mean us':>10}  kernel")
for name, (n, total) in summary.items():
    print(f"{n:>8} {total:12.2f} {total / n:10.2f}  {name[:100]}")
EOF
exit $rc
