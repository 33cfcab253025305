#!/usr/bin/env bash
# A/B of the cuda kernel sets on configs/bench-1gpu.yaml (MTP 0, BF16): the same short run under each environment
# setting below, printing its throughput line and its last step's losses, so that a new kernel set's speed and its
# agreement with the default (losses equal to 4-5 digits over a few steps) come from one command and one GPU. The
# settings: the defaults, then each opt-in set (DSV3_GG=wg: wgmma grouped GEMMs; DSV3_ATTN_BWD=wg: wgmma attention
# backward; DSV3_MEMOPS=v2: every memory-bound v2 kernel), then all of them. A benchmark: it asserts nothing.
#
#     bash tests/bench/ab_1gpu.sh [build dir]      (STEPS=5 by default; SETTINGS="env ..." replaces the list, ';'-separated)
set -euo pipefail
BUILD=${1:-build}
STEPS=${STEPS:-5}
SETTINGS=${SETTINGS:-"default;DSV3_GG=wg;DSV3_ATTN_BWD=wg;DSV3_MEMOPS=v2;DSV3_GG=wg DSV3_ATTN_BWD=wg DSV3_MEMOPS=v2"}
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
