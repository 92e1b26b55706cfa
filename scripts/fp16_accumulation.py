#!/usr/bin/env python3
"""How much nnU-Net's float16 accumulation of tile logits changes the softmax, against float32.

    python3 scripts/fp16_accumulation.py [--size 512] [--patch 224] [--classes 4] [--seed 0]

nnU-Net 2.5+ (`nnUNetPredictor._internal_predict_sliding_window_return_logits`) accumulates
`prediction * gaussian` and `gaussian` in torch.half, on the CPU as on the GPU, then divides in
half. `meddino predict` accumulates in float32. This runs nnU-Net's own tiling
(`compute_steps_for_sliding_window`, step 0.5) and Gaussian (`compute_gaussian`, σ = patch/8,
peak 10) over one slice twice, once per accumulator dtype, with the same tile outputs: a smooth
logit field of the kind a trained network gives (organ discs, logits saturating at ±12, the
borders where two classes are close) plus a small tile-dependent disagreement (N(0, 0.25), as
overlapping tiles never predict quite the same). It prints the largest softmax difference,
overall and at class borders, and how many argmax labels change. Needs torch and nnunetv2.
"""

import argparse

import numpy as np
import torch
from nnunetv2.inference.sliding_window_prediction import compute_gaussian, compute_steps_for_sliding_window


def logit_field(size, classes, rng):
    """Background plus `classes - 1` discs: each class's logit is its signed distance (pixels)
    to the disc's edge, scaled and clipped as a trained network's saturate."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    logits = np.zeros((classes, size, size), np.float32)
    inside_any = np.full((size, size), -np.inf, np.float32)
    for c in range(1, classes):
        cy, cx = rng.uniform(0.25, 0.75, 2) * size
        r = rng.uniform(0.08, 0.2) * size
        signed = r - np.hypot(y - cy, x - cx)
        logits[c] = np.clip(signed / 2, -12, 12)
        inside_any = np.maximum(inside_any, signed)
    logits[0] = np.clip(-inside_any / 2, -12, 12)
    return torch.from_numpy(logits)


def accumulate(field, patch, dtype, noise_seed):
    size = field.shape[1:]
    gaussian = compute_gaussian((patch, patch), sigma_scale=1.0 / 8, value_scaling_factor=10,
                                dtype=torch.float16, device=torch.device("cpu"))
    steps = compute_steps_for_sliding_window(size, (patch, patch), 0.5)
    logits = torch.zeros(field.shape, dtype=dtype)
    weights = torch.zeros(size, dtype=dtype)
    generator = torch.Generator().manual_seed(noise_seed)
    for sy in steps[0]:
        for sx in steps[1]:
            tile = (slice(sy, sy + patch), slice(sx, sx + patch))
            prediction = field[(slice(None), *tile)].clone()
            prediction += 0.25 * torch.randn(prediction.shape, generator=generator)
            prediction *= gaussian
            logits[(slice(None), *tile)] += prediction
            weights[tile] += gaussian
    return (logits / weights).float()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--patch", type=int, default=224)
    parser.add_argument("--classes", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    field = logit_field(args.size, args.classes, np.random.default_rng(args.seed))
    half = accumulate(field, args.patch, torch.half, args.seed)
    single = accumulate(field, args.patch, torch.float32, args.seed)
    p_half, p_single = half.softmax(0), single.softmax(0)
    difference = (p_half - p_single).abs().amax(0)
    # Class borders: where the two largest probabilities are within 0.5 of each other.
    top2 = p_single.topk(2, dim=0).values
    border = (top2[0] - top2[1]) < 0.5
    changed = (half.argmax(0) != single.argmax(0)).sum().item()
    print(f"{args.size}² slice, patch {args.patch}, {args.classes} classes, seed {args.seed}: "
          f"max softmax difference {difference.max().item():.2e} "
          f"(at class borders {difference[border].max().item():.2e}, elsewhere "
          f"{difference[~border].max().item():.2e}); argmax changed at {changed} of "
          f"{args.size * args.size} pixels")


if __name__ == "__main__":
    main()
