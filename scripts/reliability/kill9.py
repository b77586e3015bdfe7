#!/usr/bin/env python3
"""kill -9 during training: a SIGKILL at any moment must leave a newest valid checkpoint that resumes.

    scripts/reliability/kill9.py [--trials N] [--bin build/lrsa-train] [--work DIR] [--seed S]

One tiny CPU run (configs/tiny-cpu-smoke.json, a checkpoint after every step, keep_last 2) is
killed with SIGKILL once per trial and continued by the next trial with --resume auto, so the
trials form one resume chain. Half the trials kill at a random delay after the start (up to
1.5 x the time of a clean one-step run); the other half wait until a checkpoint's temporary
directory (.tmp-step-*) appears and kill a random few milliseconds later, so that many kills
land inside publish_checkpoint. After every kill:
  - every published step-* directory must verify against its manifest (sizes and hashes), the
    older ones too (prune_checkpoints renames a directory to .tmp-pruned-* before deleting it);
  - `train --resume auto` with max_steps = newest step + 1 must resume from the newest valid
    checkpoint (no "skipping checkpoint" warning), finish, and publish a checkpoint that verifies.
With --ranks N every run is `mpirun -np N` (data parallel on the CPU) and a random rank is killed.
Exits 1 on the first violation, printing it; else prints the counts.
"""
import argparse
import json
import os
import random
import re
import shutil
import signal
import struct
import subprocess
import sys
import time

M64 = (1 << 64) - 1


def file_hash(path):
    """The checkpoint manifest's 64-bit file hash (src/train/checkpoint.cpp, file_hash)."""
    with open(path, "rb") as f:
        data = f.read()
    h = 0x9E3779B97F4A7C15
    words = len(data) // 8
    for (w,) in struct.iter_unpack("<Q", data[: words * 8]):
        h = ((h ^ w) * 0xFF51AFD7ED558CCD) & M64
        h = ((h << 31) | (h >> 33)) & M64
    for b in data[words * 8 :]:
        h = ((h ^ b) * 0x100000001B3) & M64
    h ^= len(data)
    h = ((h ^ (h >> 33)) * 0xC4CEB9FE1A85EC53) & M64
    return h ^ (h >> 33)


def verify(step_dir):
    """'' when the directory matches its manifest, else the reason (as verify_checkpoint does)."""
    manifest_path = os.path.join(step_dir, "manifest.json")
    if not os.path.exists(manifest_path):
        return "no manifest.json"
    try:
        with open(manifest_path) as f:
            files = json.load(f)["files"]
    except (ValueError, KeyError) as e:
        return f"manifest.json unreadable: {e}"
    for name, info in files.items():
        path = os.path.join(step_dir, name)
        if not os.path.exists(path):
            return f"{name} is missing"
        if os.path.getsize(path) != info["bytes"]:
            return f"{name} has {os.path.getsize(path)} bytes, manifest says {info['bytes']}"
        if f"{file_hash(path):016x}" != info["hash"]:
            return f"{name} is corrupt (hash mismatch)"
    return ""


def step_dirs(root):
    """Published step directories, newest first."""
    if not os.path.isdir(root):
        return []
    names = [n for n in os.listdir(root) if re.fullmatch(r"step-\d{8}", n)]
    return [os.path.join(root, n) for n in sorted(names, reverse=True)]


def rank_pids(mpirun_pid):
    """The lrsa-train processes started by mpirun (its children, found through /proc)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        if ppid == mpirun_pid and name == "lrsa-train":
            pids.append(int(entry))
    return pids


def temp_dirs(root):
    return [n for n in os.listdir(root) if n.startswith(".tmp-")] if os.path.isdir(root) else []


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=100)
    parser.add_argument("--bin", default=os.path.join(os.environ.get("BUILD_DIR", "build"), "lrsa-train"))
    parser.add_argument("--work", default=f"/tmp/lrsa-kill9-{os.getpid()}")
    parser.add_argument("--seed", type=int, default=int(time.time()))
    parser.add_argument("--ranks", type=int, default=0,
                        help="run every training under `mpirun -np RANKS` and SIGKILL one random rank "
                        "(mpirun then ends the others); 0 = one process without mpirun")
    parser.add_argument("--max-delay", type=float, help="longest random kill delay in seconds "
                        "(default: 1.5 x the wall time of a clean one-step run, start-up included)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    work = args.work
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    run_dir = os.path.join(work, "run")
    root = os.path.join(run_dir, "checkpoints")
    data = os.path.join(work, "train.jsonl")
    subprocess.run([args.bin, "make-data", "--kind", "passkey", "--out", data, "--samples", "200",
                    "--context-tokens", "100", "--seed", "1"], check=True, capture_output=True)
    env = dict(os.environ, OMP_NUM_THREADS="1", OMP_WAIT_POLICY="passive")

    mpirun = ["mpirun", "--allow-run-as-root", "--oversubscribe", "-np", str(args.ranks),
              "-x", "OMP_NUM_THREADS", "-x", "OMP_WAIT_POLICY"] if args.ranks > 0 else []

    def train(max_steps):
        return mpirun + [args.bin, "train", "--config", os.path.join(repo, "configs/tiny-cpu-smoke.json"), "--resume", "auto",
                "--set", f"output_dir={run_dir}", "--set", f"data.train={data}", "--set", "data.eval=[]",
                "--set", f"schedule.max_steps={max_steps}", "--set", "schedule.warmup_steps=0",
                "--set", f"batch.tokens_per_step={256 * max(args.ranks, 1)}", "--set", "batch.micro_batch_tokens=256",
                "--set", "checkpoint.every_steps=1",
                "--set", "checkpoint.keep_last=2", "--set", "logging.progress=plain"]

    running = [None]  # the training being killed: stopped (with its ranks) before a failure exits

    def fail(trial, message, log=""):
        proc = running[0]
        if proc and proc.poll() is None:
            for pid in rank_pids(proc.pid):  # OpenMPI puts each rank in a process group of its own
                os.kill(pid, signal.SIGKILL)
            proc.kill()
            proc.wait()
        print(f"kill9: trial {trial}: FAILED: {message} (seed {args.seed}, work dir {work} kept)", file=sys.stderr)
        if log:
            print(log[-3000:], file=sys.stderr)
        sys.exit(1)

    # The hash above must agree with the trainer's: check it on a checkpoint written without a kill.
    start = time.monotonic()
    first = subprocess.run(train(1), env=env, capture_output=True, text=True)
    max_delay = args.max_delay or 1.5 * (time.monotonic() - start)
    if first.returncode != 0 or not step_dirs(root) or verify(step_dirs(root)[0]):
        fail(0, "a clean one-step run did not publish a checkpoint that verifies here: " +
             (verify(step_dirs(root)[0]) if step_dirs(root) else "no checkpoint"), first.stdout + first.stderr)

    counts = {"kills": 0, "in_checkpoint_write": 0, "timed": 0, "aimed": 0}
    for trial in range(1, args.trials + 1):
        aimed = trial % 2 == 0
        counts["aimed" if aimed else "timed"] += 1
        proc = subprocess.Popen(train(10**6), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        running[0] = proc
        if aimed:
            # Wait for a checkpoint write in progress, then kill inside it (or just after it).
            deadline = time.monotonic() + 30
            while not temp_dirs(root) and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.0002)
            time.sleep(rng.uniform(0, 0.005))
        else:
            time.sleep(rng.uniform(0, max_delay))
        if proc.poll() is not None:
            fail(trial, f"training exited with {proc.returncode} before the kill")
        ranks = [proc.pid]
        if args.ranks > 0:  # a kill before mpirun has started the ranks waits for them
            deadline = time.monotonic() + 30
            while len(ranks := rank_pids(proc.pid)) < args.ranks and time.monotonic() < deadline:
                time.sleep(0.001)
            if len(ranks) < args.ranks:
                fail(trial, f"mpirun started {len(ranks)} of {args.ranks} lrsa-train ranks within 30 s")
        os.kill(rng.choice(ranks), signal.SIGKILL)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            fail(trial, "mpirun did not end within 60 s of a rank's SIGKILL")
        running[0] = None
        counts["kills"] += 1
        if temp_dirs(root):
            counts["in_checkpoint_write"] += 1

        published = step_dirs(root)
        for d in published:
            if problem := verify(d):
                fail(trial, f"published checkpoint {d} is invalid: {problem}")
        newest = int(published[0][-8:]) if published else 0
        # Resume from the newest checkpoint, take one step, finish.
        resumed = subprocess.run(train(newest + 1), env=env, capture_output=True, text=True)
        log = resumed.stdout + resumed.stderr
        if resumed.returncode != 0:
            fail(trial, f"resume exited with {resumed.returncode}", log)
        if "skipping checkpoint" in log:
            fail(trial, "resume skipped an invalid published checkpoint", log)
        if published and f"resumed from {published[0]} at step {newest}" not in log:
            fail(trial, f"resume did not start from {published[0]}", log)
        final = step_dirs(root)[0]
        if int(final[-8:]) != newest + 1 or verify(final):
            fail(trial, f"the resumed run's checkpoint {final} is not step {newest + 1} or does not verify", log)
        if temp_dirs(root):
            fail(trial, f"temporary directories left after a clean run: {temp_dirs(root)}")

    print(f"kill9: {counts['kills']} SIGKILLs ({counts['timed']} at a random delay up to {max_delay:.1f}s, "
          f"{counts['aimed']} aimed at a checkpoint write), {counts['in_checkpoint_write']} landed during a "
          f"checkpoint write or prune (.tmp-* left behind); every published checkpoint verified and every resume finished; last step {int(step_dirs(root)[0][-8:])}; seed {args.seed}")
    if not args.keep:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
