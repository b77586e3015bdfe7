#!/usr/bin/env python3
"""Checks that what `lrsa-train export` writes is a Hugging Face model that computes what
lrsa-train computes: train a few steps with lrsa-train, export the checkpoint, load it with
transformers' AutoModelForCausalLM, and compare the per-token NLL of the same token sequences
against `lrsa-train eval --per-token-out` (dense attention). Needs torch and transformers (the
GPU machine has them).

  python3 scripts/check_hf_export.py --binary build-gpu/lrsa-train [--cuda] [--work DIR]

Without --cuda: a tiny Qwen2 (tied embeddings) and a tiny Llama (untied), fp32 on the CPU on both
sides; every per-token NLL must agree to 1e-4. With --cuda, in addition: the Qwen2.5-0.5B shape in
bf16 on the GPU (one training step, then 2 sequences of 4096 tokens), judged by the tolerance rule:
our error against transformers in fp32 on the same weights must be at most twice transformers'
own bf16 error (mean absolute per-token NLL error), plus the mean losses.
Prints one PASS/FAIL line per model; exits 1 on a FAIL.
"""
import argparse
import json
import os
import random
import shutil
import subprocess
import sys

try:
    import torch
    import transformers
except ImportError as e:
    sys.exit(f"check_hf_export.py: {e.name} is not installed (pip install torch transformers)")

FP32_TOLERANCE = 1e-4  # fp32 on both sides; differences come from summation order only
TINY = dict(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, rms_norm_eps=1e-6, rope_theta=10000.0, max_position_embeddings=256)
QWEN25_05B = dict(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                  num_attention_heads=14, num_key_value_heads=2, rms_norm_eps=1e-6, rope_theta=1e6,
                  max_position_embeddings=32768)
# name: (architecture, shape, tied embeddings, device, dtype, sequences, tokens per sequence)
CASES = {
    "tiny-qwen2": ("qwen2", TINY, True, "cpu", "f32", 8, 64),
    "tiny-llama": ("llama", TINY, False, "cpu", "f32", 8, 64),
    "qwen2.5-0.5b-shape": ("qwen2", QWEN25_05B, True, "cuda", "bf16", 2, 4096),
}


def run_config(name, work, data):
    arch, shape, tied, device, dtype, _, tokens = CASES[name]
    return {
        "output_dir": os.path.join(work, name),
        "model": dict(shape, architecture=arch, tie_word_embeddings=tied, dtype=dtype),
        "tokenizer": {"path": "builtin:bytes"},
        "data": {"train": data, "eval": data, "format": "tokenized", "max_seq_len": tokens, "shuffle": False},
        "attention": {"mode": "dense"},
        "optim": {"lr": 3e-3 if device == "cpu" else 1e-4},
        "schedule": {"warmup_steps": 0, "max_steps": 2 if device == "cpu" else 1},
        "batch": {"tokens_per_step": 2 * tokens, "micro_batch_tokens": tokens},
        "precision": {"param_dtype": dtype},
        "logging": {"every_steps": 1, "progress": "plain"},
        "seed": 7,
        "device": device,
    }


def reference_nll(model, ids):
    x = torch.tensor([ids], device=model.device)
    logits = model(input_ids=x).logits[0, :-1].float()
    return torch.nn.functional.cross_entropy(logits, x[0, 1:], reduction="none").cpu().double()


def check(binary, name, work):
    _, shape, _, device, _, count, tokens = CASES[name]
    rng = random.Random(0)
    # Ids of the built-in byte tokenizer (the data layer checks ids against the tokenizer).
    samples = [[rng.randrange(256) for _ in range(tokens)] for _ in range(count)]
    data = os.path.join(work, f"{name}-tokens.jsonl")
    with open(data, "w") as f:
        for ids in samples:
            f.write(json.dumps({"input_ids": ids}) + "\n")
    config_path = os.path.join(work, f"{name}.json")
    with open(config_path, "w") as f:
        json.dump(run_config(name, work, data), f, indent=1)
    run = lambda *args: subprocess.run([binary, *args], check=True, stdout=subprocess.DEVNULL)
    run("train", "--config", config_path)
    checkpoints = os.path.join(work, name, "checkpoints")
    last = os.path.join(checkpoints, sorted(os.listdir(checkpoints))[-1])
    hf_dir = os.path.join(work, f"{name}-hf")
    run("export", "--checkpoint", last, "--out", hf_dir)
    nll_path = os.path.join(work, f"{name}-nll.jsonl")
    run("eval", "--config", config_path, "--weights", hf_dir, "--per-token-out", nll_path)
    ours = {line["index"]: torch.tensor(line["nll"], dtype=torch.float64) for line in map(json.loads, open(nll_path))}
    for i in range(count):
        if i not in ours or len(ours[i]) != tokens - 1:
            print(f"{name}: FAIL sample {i}: lrsa-train gave {len(ours.get(i, []))} NLLs, expected {tokens - 1}")
            return False

    torch_device = "cuda" if device == "cuda" else "cpu"
    load = lambda dtype: transformers.AutoModelForCausalLM.from_pretrained(hf_dir, dtype=dtype).to(torch_device).eval()
    with torch.no_grad():
        exact = load(torch.float32)
        reference = [reference_nll(exact, ids) for ids in samples]
        del exact
        ours_err = max((ours[i] - reference[i]).abs().mean().item() for i in range(count))
        ours_loss = torch.cat([ours[i] for i in range(count)]).mean().item()
        ref_loss = torch.cat(reference).mean().item()
        if device == "cpu":
            worst = max((ours[i] - reference[i]).abs().max().item() for i in range(count))
            ok = worst <= FP32_TOLERANCE
            detail = f"max |NLL difference| {worst:.2e} (tolerance {FP32_TOLERANCE:g})"
        else:
            same_precision = load(torch.bfloat16)
            hf_err = max((reference_nll(same_precision, ids) - reference[i]).abs().mean().item()
                         for i, ids in enumerate(samples))
            ok = ours_err <= 2 * hf_err
            detail = (f"mean |NLL error| vs transformers fp32: ours (bf16) {ours_err:.2e}, transformers bf16 "
                      f"{hf_err:.2e} (rule: ours <= 2x)")
    print(f"{name}: {'PASS' if ok else 'FAIL'} {detail}; mean loss ours {ours_loss:.5f}, transformers fp32 "
          f"{ref_loss:.5f}; {count} x {tokens} tokens, transformers {transformers.__version__}", flush=True)
    return ok


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--binary", default="build/lrsa-train")
    ap.add_argument("--cuda", action="store_true", help="also the Qwen2.5-0.5B shape in bf16 on the GPU")
    ap.add_argument("--work", default="/tmp/hf-export-check")
    args = ap.parse_args()
    shutil.rmtree(args.work, ignore_errors=True)
    os.makedirs(args.work)
    names = [n for n in CASES if args.cuda or CASES[n][3] == "cpu"]
    results = [check(os.path.abspath(args.binary), name, args.work) for name in names]
    sys.exit(0 if all(results) else 1)


if __name__ == "__main__":
    main()
