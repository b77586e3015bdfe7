#!/usr/bin/env python3
"""Tokenizer throughput: our encoder (lrsa-tokenize --bench) vs Hugging Face `tokenizers`,
single-threaded, on the same ~10 MB text, for the Qwen3 and Llama-3 tokenizers in
../shared/tokenizers. Also checks that both produce identical ids on the whole text.

The text is built from local files only: the Python standard library's sources (English prose in
docstrings and comments, and code) plus its CJK test texts (Chinese, Japanese, Korean), so it
depends on the Python version (its size and SHA-256 are printed). Times are CPU time of the
encoding thread (robust on a shared machine), best of --repeat; both run pinned to one core when
`taskset` exists.

Modes: "lines" encodes every line as its own document (HF: encode_batch with one thread), "whole"
encodes the text as one string (HF is very slow on a single 10 MB string).

Usage: python3 scripts/bench/tokenizer_bench.py [--build build] [--shared ../shared] [--skip-hf-whole]
Needs: pip install tokenizers; a built lrsa-tokenize.
"""
import argparse
import glob
import hashlib
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TARGET_BYTES = 10_000_000

HF_SCRIPT = r"""
import json, os, sys, time
os.environ["RAYON_NUM_THREADS"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"
from tokenizers import Tokenizer
path, corpus, mode, repeat, ids_out = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]
text = open(corpus, encoding="utf-8", newline="").read()
t0 = time.process_time()
tok = Tokenizer.from_file(path)
load = time.process_time() - t0
docs = text.splitlines(keepends=True) if mode == "lines" else None
best = 1e30
for _ in range(repeat):
    t0 = time.process_time()
    if mode == "lines":
        ids = [i for e in tok.encode_batch(docs, add_special_tokens=False) for i in e.ids]
    else:
        ids = tok.encode(text, add_special_tokens=False).ids
    best = min(best, time.process_time() - t0)
if ids_out != "-":
    json.dump(ids, open(ids_out, "w"))
print(json.dumps({"tokens": len(ids), "load_cpu_s": load, "encode_cpu_s": best}))
"""


def build_corpus(path):
    std = sysconfig.get_paths()["stdlib"]
    cjk = "".join(open(f, encoding="utf-8").read() for f in sorted(glob.glob(os.path.join(std, "test", "cjkencodings", "*-utf8.txt"))))
    parts, size = [], 0
    for f in sorted(glob.glob(os.path.join(std, "**", "*.py"), recursive=True)):
        if "site-packages" in f or "test" in os.path.relpath(f, std).split(os.sep)[0]:
            continue
        try:
            s = open(f, encoding="utf-8").read()
        except (UnicodeDecodeError, OSError):
            continue
        parts.append(s)
        size += len(s.encode())
        if size >= TARGET_BYTES * 9 // 10:
            break
    text = "".join(parts)
    while len(text.encode()) < TARGET_BYTES:
        text += cjk
    with open(path, "w", encoding="utf-8", newline="") as f:
        f.write(text)
    return len(text.encode()), hashlib.sha256(text.encode()).hexdigest()[:16]


def pinned(cmd):
    return (["taskset", "-c", "0"] if shutil.which("taskset") else []) + cmd


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default=os.path.join(REPO, "build"))
    ap.add_argument("--shared", default=os.path.join(REPO, "..", "shared"))
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--skip-hf-whole", action="store_true")
    args = ap.parse_args()
    tool = os.path.join(args.build, "lrsa-tokenize")
    if not os.path.exists(tool):
        sys.exit(f"{tool} not found: build it (cmake --build {args.build} --target lrsa-tokenize)")
    import tokenizers  # noqa: F401  (fail early with a clear message if missing)

    work = tempfile.mkdtemp(prefix="lrsa-tokbench-")
    corpus = os.path.join(work, "corpus.txt")
    nbytes, digest = build_corpus(corpus)
    print(f"corpus: {nbytes} bytes (sha256 {digest}...), Python {sys.version.split()[0]} stdlib + CJK test texts")
    rows = []
    for name in ("qwen3", "llama3"):
        path = os.path.join(args.shared, "tokenizers", name, "tokenizer.json")
        for mode in ("lines", "whole"):
            ours = json.loads(subprocess.run(
                pinned([tool, "--tokenizer", path, "--input", corpus, "--bench", "--repeat", str(args.repeat)] +
                       (["--lines"] if mode == "lines" else [])), check=True, capture_output=True, text=True).stdout)
            rows.append((name, mode, "lrsa", ours["tokens"], ours["load_cpu_s"], ours["encode_cpu_s"]))
            if mode == "whole" and args.skip_hf_whole:
                continue
            ids_file = os.path.join(work, f"{name}-hf.json") if mode == "whole" else "-"
            hf = json.loads(subprocess.run(
                pinned([sys.executable, "-c", HF_SCRIPT, path, corpus, mode, str(args.repeat), ids_file]),
                check=True, capture_output=True, text=True).stdout)
            rows.append((name, mode, "hf", hf["tokens"], hf["load_cpu_s"], hf["encode_cpu_s"]))
            if mode == "whole":
                ours_ids = json.loads(subprocess.run([tool, "--tokenizer", path, "--input", corpus], check=True,
                                                     capture_output=True, text=True).stdout)
                same = ours_ids == json.load(open(ids_file))
                print(f"{name}: ids on the whole text {'identical' if same else 'DIFFER'} ({len(ours_ids)} tokens)")
                if not same:
                    sys.exit(1)
    print(f"\n| tokenizer | mode | encoder | tokens | load CPU s | encode CPU s | MB/s |")
    print(f"| --- | --- | --- | --- | --- | --- | --- |")
    for name, mode, who, tokens, load, enc in rows:
        print(f"| {name} | {mode} | {who} | {tokens} | {load:.2f} | {enc:.3f} | {nbytes / 1e6 / enc:.2f} |")
    shutil.rmtree(work)


if __name__ == "__main__":
    main()
