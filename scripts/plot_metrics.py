#!/usr/bin/env python3
"""Plots a training run's loss, learning rate and throughput from its metrics.jsonl to a PNG.

    scripts/plot_metrics.py RUN [--out PNG] [--smooth N]

RUN is the run's output_dir (its metrics.jsonl is read) or a metrics.jsonl path. The trainer
writes one JSON line per step: step, loss, lr, grad_norm, tokens, trained_tokens, tokens_per_s,
mfu, peak_bytes, skipped. The PNG (default: next to metrics.jsonl, metrics.png) has three
panels: loss (raw and a moving average, skipped steps marked), learning rate, tokens/s.
Needs matplotlib (Debian: apt-get install python3-matplotlib; or pip install matplotlib).
"""
import argparse
import json
import os
import sys


def read_metrics(path):
    rows = []
    with open(path) as f:
        lines = f.read().splitlines()
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as e:
            # A run killed mid-write leaves a cut last line; anything earlier is a real problem.
            if number == len(lines):
                print(f"plot_metrics: {path}:{number}: ignoring a cut last line", file=sys.stderr)
                break
            sys.exit(f"plot_metrics: {path}:{number}: not JSON: {e}")
        missing = [k for k in ("step", "loss", "lr", "tokens_per_s") if k not in row]
        if missing:
            sys.exit(f"plot_metrics: {path}:{number}: missing field(s) {', '.join(missing)}")
        rows.append(row)
    if not rows:
        sys.exit(f"plot_metrics: {path} has no metrics lines")
    return rows


def moving_average(values, n):
    """Centered: step i averages steps i - n/2 .. i + n/2 (fewer at the ends), so it does not lag."""
    out = []
    for i in range(len(values)):
        window = values[max(0, i - n // 2) : i + n // 2 + 1]
        out.append(sum(window) / len(window))
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run", help="output_dir of a run, or its metrics.jsonl")
    parser.add_argument("--out", help="PNG path (default: metrics.png next to metrics.jsonl)")
    parser.add_argument("--smooth", type=int, default=20, help="centered moving-average window for the loss (steps)")
    args = parser.parse_args()
    path = os.path.join(args.run, "metrics.jsonl") if os.path.isdir(args.run) else args.run
    if not os.path.isfile(path):
        sys.exit(f"plot_metrics: {path} does not exist")
    out = args.out or os.path.join(os.path.dirname(os.path.abspath(path)), "metrics.png")
    try:
        import matplotlib
        matplotlib.use("Agg")  # files only, no display needed
        import matplotlib.pyplot as plt
    except ImportError:
        sys.exit(f"plot_metrics: matplotlib is not installed for {sys.executable}: apt-get install "
                 f"python3-matplotlib (for /usr/bin/python3) or {sys.executable} -m pip install matplotlib")

    rows = read_metrics(path)
    steps = [r["step"] for r in rows]
    loss = [r["loss"] for r in rows]
    fig, (ax_loss, ax_lr, ax_tps) = plt.subplots(3, 1, figsize=(9, 9), sharex=True)
    ax_loss.plot(steps, loss, color="tab:blue", alpha=0.35, linewidth=0.8, label="loss")
    if len(rows) > args.smooth > 1:
        ax_loss.plot(steps, moving_average(loss, args.smooth), color="tab:blue", label=f"mean of {args.smooth}")
    skipped = [r["step"] for r in rows if r.get("skipped")]
    for s in skipped:
        ax_loss.axvline(s, color="tab:red", alpha=0.4, linewidth=0.8)
    ax_loss.set_ylabel("loss (per trained token)")
    ax_loss.legend(loc="upper right")
    ax_loss.set_title(f"{path}: {len(rows)} steps" + (f", {len(skipped)} skipped (red)" if skipped else ""))
    ax_lr.plot(steps, [r["lr"] for r in rows], color="tab:green")
    ax_lr.set_ylabel("learning rate")
    ax_tps.plot(steps, [r["tokens_per_s"] for r in rows], color="tab:orange")
    ax_tps.set_ylabel("tokens/s")
    ax_tps.set_xlabel("step")
    for ax in (ax_loss, ax_lr, ax_tps):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    print(f"plot_metrics: {len(rows)} steps from {path} -> {out}")


if __name__ == "__main__":
    main()
