#!/usr/bin/env bash
# A/B of the cuda kernel sets on configs/bench-1gpu.yaml (MTP 0, BF16): the same short run under each environment
# setting below, printing its throughput line and its last step's losses, so that a kernel set's speed and its
# agreement with another (losses equal to 4-5 digits over a few steps) come from one command and one GPU. Default
# list: the defaults (wgmma grouped GEMMs and attention, memory-bound v2), then each earlier set in their place
# (DSV3_GG=mma, DSV3_ATTN_FWD/BWD=v2, DSV3_MEMOPS=v1), then all earlier sets. A benchmark: it asserts nothing.
#
#     bash tests/bench/ab_1gpu.sh [build dir]      (STEPS=5 by default; SETTINGS="env ..." replaces the list, ';'-separated)
set -euo pipefail
BUILD=${1:-build}
STEPS=${STEPS:-5}
SETTINGS=${SETTINGS:-"default;DSV3_GG=mma;DSV3_ATTN_FWD=v2 DSV3_ATTN_BWD=v2;DSV3_MEMOPS=v1;DSV3_GG=mma DSV3_ATTN_FWD=v2 DSV3_ATTN_BWD=v2 DSV3_MEMOPS=v1"}
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
IFS=';' read -r -a list <<<"$SETTINGS"
i=0
for s in "${list[@]}"; do
    i=$((i + 1))
    envs=()
    [ "$s" = default ] || read -r -a envs <<<"$s"
    if env "${envs[@]}" "./$BUILD/train" configs/bench-1gpu.yaml --set model.mtp_depth=0 \
        --set train.max_steps="$STEPS" --set log.run_dir="$out/r$i" --resume none >"$out/r$i.log" 2>&1; then
        echo "[$s] $(grep -o 'throughput: [^;]*' "$out/r$i.log" | head -1)"
        echo "    last step: $(grep '^step' "$out/r$i.log" | tail -1 | cut -d'|' -f3-4)"
    else
        echo "[$s] FAILED:"
        tail -5 "$out/r$i.log" | sed 's/^/    /'
    fi
done
