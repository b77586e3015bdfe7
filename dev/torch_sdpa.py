"""dev/torch_sdpa.py: PyTorch SDPA (cuDNN and flash backends) on the dev harnesses' shapes, timed in the
same call as them: dense causal attention, 14:2 heads (K/V expanded to 14), d64, bf16.

    python3 dev/torch_sdpa.py
"""
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel


def timed(fn, repeats=10):
    fn()
    start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    start.record()
    for _ in range(repeats):
        fn()
    stop.record()
    torch.cuda.synchronize()
    return start.elapsed_time(stop) / repeats


def main():
    for tokens in (16384, 32768):
        q = torch.randn(1, 14, tokens, 64, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        k = torch.randn(1, 14, tokens, 64, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        v = torch.randn(1, 14, tokens, 64, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        grad = torch.randn_like(q)
        pairs = tokens * (tokens + 1) / 2
        for backend in (SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION):
            with sdpa_kernel(backend):
                forward_ms = timed(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True))
                both_ms = timed(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True).backward(grad))
            backward_ms = both_ms - forward_ms
            print(f"torch {backend.name:16s} T={tokens:6d} 14 heads d64 causal: forward {forward_ms:.3f} ms "
                  f"({4 * pairs * 64 * 14 / forward_ms / 1e9:.1f} TFLOP/s), backward {backward_ms:.3f} ms "
                  f"({10 * pairs * 64 * 14 / backward_ms / 1e9:.1f} TFLOP/s)", flush=True)


if __name__ == "__main__":
    main()
