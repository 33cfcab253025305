#!/usr/bin/env python3
"""The PyTorch peer for the single-GPU benchmark: Hugging Face transformers' DeepseekV3ForCausalLM at the shape of
configs/bench-1gpu.yaml (MTP 0), BF16 weights, AdamW, micro-batches of 4 x 4096 random tokens, eager and
torch.compile. By default each optimizer step accumulates 8 micro-batches, the bench config's 32 sequences per step
(--accum 1 is one micro-batch per step, the setting of the issue's reference figures). Prints tokens/s per mode;
`make bench` runs it beside build/train on the same GPU.

    python3 tests/bench/peer_hf.py [--steps 4] [--warmup 2] [--accum 8] [--modes eager,compile]

Needs torch and transformers (the GPU machine has both); reads nothing from the network.
"""
import argparse
import time

import torch
from transformers import DeepseekV3Config, DeepseekV3ForCausalLM

# configs/bench-1gpu.yaml, in transformers' names.
BENCH = dict(vocab_size=32768, hidden_size=1536, intermediate_size=4096, moe_intermediate_size=512,
             num_hidden_layers=12, first_k_dense_replace=1, num_attention_heads=12, num_key_value_heads=12,
             q_lora_rank=512, kv_lora_rank=256, qk_nope_head_dim=128, qk_rope_head_dim=64, v_head_dim=128,
             n_routed_experts=64, num_experts_per_tok=6, n_shared_experts=1, n_group=8, topk_group=4,
             routed_scaling_factor=2.5, norm_topk_prob=True, max_position_embeddings=4096, rope_theta=10000.0,
             tie_word_embeddings=False, attention_bias=False, rms_norm_eps=1e-6)
B, T = 4, 4096


def run(mode, steps, warmup, accum):
    torch.manual_seed(0)
    cfg = DeepseekV3Config(**BENCH)
    model = DeepseekV3ForCausalLM(cfg).to(device="cuda", dtype=torch.bfloat16)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1)
    ids = torch.randint(0, cfg.vocab_size, (B, T + 1), device="cuda")
    inp, tgt = ids[:, :T], ids[:, 1:]

    def micro():
        logits = model(input_ids=inp).logits
        loss = torch.nn.functional.cross_entropy(logits.float().view(-1, cfg.vocab_size), tgt.reshape(-1)) / accum
        loss.backward()
        return loss

    fwd_bwd = torch.compile(micro) if mode == "compile" else micro

    def fn():
        for _ in range(accum):
            loss = fwd_bwd()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    t0 = time.time()
    for _ in range(steps):
        loss = fn()
    torch.cuda.synchronize()
    dt = time.time() - t0
    n_params = sum(p.numel() for p in model.parameters())
    print(f"peer {mode:8s} {B * T * accum * steps / dt:10.0f} tokens/s  ({steps} steps of {accum} x {B}x{T}, "
          f"{dt / steps * 1e3:.1f} ms/step,"
          f" loss {loss.item():.3f}, {n_params / 1e9:.3f}B params, peak {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB)",
          flush=True)
    del model, opt
    torch.cuda.empty_cache()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--accum", type=int, default=8)
    ap.add_argument("--modes", default="eager,compile")
    a = ap.parse_args()
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name()}", flush=True)
    for mode in a.modes.split(","):
        run(mode, a.steps, a.warmup, a.accum)


if __name__ == "__main__":
    main()
