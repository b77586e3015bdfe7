#!/usr/bin/env python3
"""The PyTorch + Hugging Face Transformers side of scripts/bench/train_e2e.py: trains a randomly
initialized Qwen2.5-shaped model on one sequence of T tokens per step the way users would
(bf16 weights, SDPA attention, fused AdamW, optional gradient checkpointing) and prints one JSON
line: tokens/s, step time, peak device memory and MFU, or status "oom".

  python3 scripts/bench/train_torch.py --shape 0.5b --tokens 16384 [--checkpointing] [--steps 6]
                                       [--answer-tokens N]

MFU uses the same FLOP count as lrsa-train: 6 x matmul parameters x T + 14 x visible
(query, key) pairs x Hq x D per layer, over 989 TFLOP/s (H100/H200 dense bf16 datasheet).
"""
import argparse
import json
import statistics
import sys
import time

try:
    import torch
    import transformers
except ImportError as e:
    sys.exit(f"train_torch.py: {e.name} is not installed (pip install torch transformers)")

# Qwen2.5 shapes (tied embeddings, vocabulary 151936), as in configs/bench/*.json.
SHAPES = {
    "0.5b": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                 num_key_value_heads=2),
    "1.5b": dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                 num_key_value_heads=2),
}
PEAK_FLOPS = 989e12


def build_model(shape, tokens, checkpointing):
    config = transformers.Qwen2Config(vocab_size=151936, tie_word_embeddings=True, rope_theta=1e6,
                                      max_position_embeddings=max(tokens, 32768), use_cache=False,
                                      **SHAPES[shape])
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    model = transformers.Qwen2ForCausalLM(config).to(device="cuda", dtype=torch.bfloat16)
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    return model, config


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", choices=sorted(SHAPES), default="0.5b")
    ap.add_argument("--tokens", type=int, required=True, help="sequence length T (one sequence per step)")
    ap.add_argument("--checkpointing", action="store_true", help="gradient checkpointing of every layer")
    ap.add_argument("--steps", type=int, default=6, help="optimizer steps; the first one is not timed")
    ap.add_argument("--answer-tokens", type=int, default=0,
                    help="QA loss: only the last N tokens are labelled (-100 before them), as in lrsa-train's "
                         "passkey runs; 0 (default): every token")
    ap.add_argument("--profile", action="store_true",
                    help="profile one more step (torch.profiler) and add its top CUDA ops to the JSON line")
    args = ap.parse_args()
    T = args.tokens
    result = {"impl": "pytorch", "shape": args.shape, "tokens": T, "attention": "dense",
              "checkpointing": args.checkpointing, "answer_tokens": args.answer_tokens, "torch": torch.__version__,
              "transformers": transformers.__version__}
    try:
        model, config = build_model(args.shape, T, args.checkpointing)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, betas=(0.9, 0.95), weight_decay=0.0, fused=True)
        ids = torch.randint(0, config.vocab_size, (1, T), device="cuda", generator=torch.Generator("cuda").manual_seed(1))

        labels = ids.clone()
        if args.answer_tokens > 0:
            labels[:, :T - args.answer_tokens] = -100

        def train_step():
            loss = model(input_ids=ids, labels=labels).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            return loss

        torch.cuda.reset_peak_memory_stats()
        times = []
        for _ in range(args.steps):
            torch.cuda.synchronize()
            start = time.perf_counter()
            loss = train_step()
            torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
        if args.profile:
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
                train_step()
                torch.cuda.synchronize()
            result["profile"] = prof.key_averages().table(sort_by="cuda_time_total", row_limit=15)
        step = statistics.median(times[1:] if len(times) > 1 else times)
        params = sum(p.numel() for p in model.parameters())  # tied lm_head counted once
        head_dim = config.hidden_size // config.num_attention_heads
        flops = 6.0 * params * T + config.num_hidden_layers * 14.0 * (T * (T + 1) / 2) * config.num_attention_heads * head_dim
        result.update(status="ok", step_s=step, tokens_per_s=T / step, mfu=flops / step / PEAK_FLOPS,
                      peak_gib=torch.cuda.max_memory_allocated() / 2**30,
                      reserved_gib=torch.cuda.max_memory_reserved() / 2**30, loss=float(loss))
    except torch.OutOfMemoryError:
        result.update(status="oom")
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
