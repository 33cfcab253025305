#!/usr/bin/env python3
"""Plots a run's metrics.jsonl: training and validation loss, and per-layer MaxVio of the MoE layers.

    python3 train/plot_metrics.py runs/tiny/metrics.jsonl out.png

Needs matplotlib (not needed for training: the trainer is C; this is for looking at a run).
"""
import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main(path, out):
    steps, lm, mtp, vio, ev_steps, ev = [], [], [], [], [], []
    with open(path) as f:
        for line in f:
            d = json.loads(line)
            if "eval_lm_loss" in d:
                ev_steps.append(d["step"])
                ev.append(d["eval_lm_loss"])
            elif not d.get("skipped"):
                steps.append(d["step"])
                lm.append(d["lm_loss"])
                mtp.append(d["mtp_loss"][0] if d.get("mtp_loss") else float("nan"))
                vio.append(d.get("max_vio", []))
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    a.plot(steps, lm, lw=1, label="train lm loss")
    a.plot(steps, mtp, lw=1, alpha=0.7, label="train MTP loss (depth 1)")
    a.plot(ev_steps, ev, "o-", label="validation lm loss")
    a.set_xlabel("step")
    a.set_ylabel("cross-entropy (nats / byte)")
    a.set_title(path)
    a.legend()
    a.grid(alpha=0.3)
    for layer in range(len(vio[0]) if vio else 0):
        b.plot(steps, [v[layer] for v in vio], lw=1, label=f"MoE layer {layer}")
    b.set_xlabel("step")
    b.set_ylabel("MaxVio = (max load - mean) / mean")
    b.set_title("expert balance (bias update)")
    b.legend()
    b.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=90)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
