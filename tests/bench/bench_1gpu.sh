#!/usr/bin/env bash
# The single-GPU benchmark behind `make bench` (issue 5): configs/bench-1gpu.yaml on the cuda backend in BF16 with
# MTP depth 1 and 0 (tokens/s after the warm-up steps, model TFLOP/s, MFU, device memory: build/train's
# "throughput:" line), then the PyTorch peer (tests/bench/peer_hf.py: transformers' DeepseekV3ForCausalLM at the same
# shape, MTP 0, BF16, AdamW, eager and torch.compile, the same 32 sequences per optimizer step) on the same GPU, and
# the ratio of our MTP-0 tokens/s over each peer mode's.
#
#     bash tests/bench/bench_1gpu.sh [build dir]      (STEPS=8 by default; PEER=0 skips the peer; PEER_ARGS go to peer_hf.py)
set -euo pipefail
BUILD=${1:-build}
STEPS=${STEPS:-8}
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader || true
for mtp in 1 0; do
    "./$BUILD/train" configs/bench-1gpu.yaml --set model.mtp_depth=$mtp --set train.max_steps="$STEPS" \
        --set log.run_dir="$out/mtp$mtp" --resume none >"$out/mtp$mtp.log" 2>&1 ||
        { tail -20 "$out/mtp$mtp.log"; exit 1; }
    echo "ours MTP $mtp: $(grep -o 'throughput: .*' "$out/mtp$mtp.log")"
done
ours=$(grep -o 'throughput: [0-9.]*K' "$out/mtp0.log" | grep -o '[0-9.]*')
if [ "${PEER:-1}" = 0 ]; then exit 0; fi
if ! python3 -c "import torch, transformers" 2>/dev/null; then
    echo "bench: no torch/transformers here: the peer is skipped"
    exit 0
fi
python3 tests/bench/peer_hf.py ${PEER_ARGS:-} | tee "$out/peer.log"
for mode in eager compile; do
    peer=$(awk -v m="$mode" '$1 == "peer" && $2 == m {print $3}' "$out/peer.log")
    [ -n "$peer" ] && awk -v o="$ours" -v p="$peer" -v m="$mode" \
        'BEGIN {printf "ours (MTP 0) / peer %s: %.0f / %.0f tokens/s = %.2fx\n", m, o * 1000, p, o * 1000 / p}'
done
