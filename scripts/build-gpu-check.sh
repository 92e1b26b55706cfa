#!/usr/bin/env bash
# Builds, on the CPU machine, everything scripts/gpu-check.sh needs on a GPU machine, into
# gpu/ (git-ignored; carry it with the device tool's `carry: ["gpu"]`):
#   gpu/gpu_check.xz   meddino-baselines' gpu_check example (the decoder's kernels and Primus,
#                      the Dino U-Net on them) built with `--features cuda`, linked against
#                      stand-in CUDA libraries (the GPU machine has the real ones)
#   gpu/train_step.xz  meddino-train's training-step benchmark, built the same way
#   gpu/finetune_check.xz
#                      meddino-train's 20-step fine-tune, GPU against CPU, built the same way
#   gpu/attention_check.xz
#                      meddino-backbone's memory-efficient attention against the composite one
#   gpu/forward_bench.xz, gpu/matmul_bench.xz
#                      meddino-backbone's ViT forward and matrix-product benchmarks (issue
#                      10's bf16 rate goal), built the same way
#   gpu/reference/     the few reference files it reads (the whole folder exceeds 64 MiB)
# The binaries are stripped of their debug information before compression (symbols stay):
# 4 × ~6 MiB instead of 4 × ~15 MiB, so gpu/ stays well under the 64 MiB that travels.
# usage: scripts/build-gpu-check.sh   (from the repository root, ../shared beside it)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
reference=${MEDDINO_REFERENCE_DIR:-../shared/reference}
eval "$(bash ../shared/tools/install-nvcc.sh)"
export CUDA_COMPUTE_CAP=90
cargo fetch --quiet
bash ../shared/tools/make-cuda-stubs.sh >/dev/null
# cudarc's build script adds lib/stubs to the link path only if that folder existed when it
# last ran (CI's check may have run it before); lib/ is always on the path, so link the
# stand-ins there too. Their sonames name the real libraries the GPU machine loads.
for stub in "$CUDA_ROOT"/lib/stubs/lib*.so; do
  ln -sf "$stub" "$CUDA_ROOT/lib/"
done
# The same target folder as CI's CUDA check, so candle-kernels is not rebuilt.
export CARGO_TARGET_DIR=${MEDDINO_CACHE_DIR:-$HOME/.cache/meddino}/target-cuda
# `--workspace` resolves features as CI's check does; `-p` alone would change them and
# rebuild candle-kernels (~20 minutes).
examples=(gpu_check train_step finetune_check attention_check forward_bench matmul_bench)
cargo build --workspace --features cuda "${examples[@]/#/--example=}"
mkdir -p gpu/reference/models
stripped=$(mktemp)
trap 'rm -f "$stripped"' EXIT
for example in "${examples[@]}"; do
  strip --strip-debug -o "$stripped" "$CARGO_TARGET_DIR/debug/examples/$example"
  xz -T2 -6 -c "$stripped" > "gpu/$example.xz"
done
for file in manifest.json ms_deform_attn_core.safetensors primus_multiscale.io.safetensors \
            primus_multiscale.weights.safetensors; do
  cp "$reference/models/$file" gpu/reference/models/
done
du -sh gpu
