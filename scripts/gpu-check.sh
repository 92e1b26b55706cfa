#!/usr/bin/env bash
# GPU verification of meddino-decoder (and the Dino U-Net of meddino-baselines), run on a GPU machine (H100/H200, CUDA 13, driver 580,
# python3 with torch, no Rust, no network) from the repository root, after
# scripts/build-gpu-check.sh prepared gpu/ on the CPU machine and gpu/ was carried over:
#   1. the CUDA deformable-attention op against the f64 reference (forward and the three
#      gradients, in f64, f32 and bf16), Primus_Multiscale on GPU against CPU, and the op's
#      forward+backward time at the Dino U-Net's size (gpu_check, Rust);
#   2. the same op written with PyTorch (grid_sample, autograd) timed at the same size on the
#      same GPU (scripts/msda_torch_bench.py);
#   3. a table of both;
#   4. seconds per training step of the MedDINOv3 network (ViT-B/16 + Primus_Multiscale,
#      AdamW, f32) on the GPU at 224², 448² and 896², batch 2 (train_step, Rust), with the
#      896² step's peak GPU memory sampled through nvidia-smi;
#   4b. a 20-step fine-tune on the GPU against the same run on the CPU (finetune_check, Rust);
#   5. issue 10's GPU goals: the bf16 matrix-product peak (matmul_bench, Rust, and one
#      torch.matmul), the ViT-B/16 forward at 896² in bf16 (forward_bench, Rust), the same
#      training step in PyTorch with bf16 autocast (scripts/bench/primus_torch.py), and one
#      Markdown table "work | ours | reference | ratio | goal | met" (n/a where a part is
#      missing or failed).
# Exit status: non-zero when a check fails or a program crashes (a missed goal is not a failure).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
[[ -f gpu/gpu_check.xz ]] || { echo "gpu/gpu_check.xz missing: run scripts/build-gpu-check.sh on the CPU machine and carry gpu/" >&2; exit 2; }
python=${PYTHON:-python3}

# The real CUDA 13 libraries: the driver's libcuda is on the loader path; cuBLAS, cuRAND,
# NVRTC and the runtime come with the Python CUDA packages beside torch.
site=$("$python" -c 'import site; print(" ".join(site.getsitepackages()))')
# (getsitepackages may name folders that do not exist: find's failure there is not ours.)
libs=$(for dir in $site; do find "$dir" -path '*nvidia*' \( -name 'libcublas.so.13*' -o -name 'libcurand.so.10*' \
        -o -name 'libnvrtc.so.13*' -o -name 'libcudart.so.13*' -o -name 'libcublasLt.so.13*' \) -printf '%h\n' 2>/dev/null || true; done \
      | sort -u | paste -sd:)
[[ -n $libs ]] || { echo "no CUDA 13 libraries found under $site" >&2; exit 2; }
export LD_LIBRARY_PATH=$libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# unpack NAME: gpu/NAME.xz → $work/NAME (false when gpu/ lacks it).
unpack() {
  [[ -f gpu/$1.xz ]] || { echo "gpu/$1.xz missing: its rows are n/a" >&2; return 1; }
  "$python" -c 'import lzma, sys; open(sys.argv[2], "wb").write(lzma.open(sys.argv[1]).read())' "gpu/$1.xz" "$work/$1"
  chmod +x "$work/$1"
}
unpack gpu_check
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader || true

status=0
"$work/gpu_check" gpu/reference | tee "$work/rust.txt" || status=$?
"$python" scripts/msda_torch_bench.py | tee "$work/torch.txt" || status=$?

ours=$(sed -n 's/^msda_fwd_bwd_ms=//p' "$work/rust.txt")
torch=$(sed -n 's/^torch_msda_fwd_bwd_ms=//p' "$work/torch.txt")
echo
echo "deformable attention, f32 forward+backward, Lq 5376 (512² image: 1/8+1/16+1/32), 16 heads × 24, 4 points"
printf '%-40s %12s\n' "implementation" "median ms"
printf '%-40s %12s\n' "meddino CUDA kernels" "${ours:-n/a}"
printf '%-40s %12s\n' "PyTorch grid_sample + autograd" "${torch:-n/a}"

idle_mib=$(nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits 2>/dev/null | head -n 1 || true)
# step_896 [ENV=VALUE …]: train_step at 896², batch 2, in a process of its own while
# nvidia-smi samples the GPU's memory in use every 20 ms; appends its table to
# train_step.txt and sets peak_mib to the peak above what was in use before (the process's
# CUDA context included).
step_896() {
  local samples=$work/memory.txt sampler
  nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 20 > "$samples" 2>/dev/null &
  sampler=$!
  env "$@" "$work/train_step" --device cuda --sizes 896 --batch 2 --steps 3 | tee -a "$work/train_step.txt" || status=$?
  kill "$sampler" 2>/dev/null || true
  wait "$sampler" 2>/dev/null || true
  peak_mib=$(awk -v idle="${idle_mib:-0}" '$1 + 0 > max { max = $1 + 0 } END { if (max) print max - idle }' "$samples")
  echo "896², batch 2${1:+ with $*}: peak GPU memory in use ${peak_mib:-n/a} MiB (sampled, above the idle ${idle_mib:-n/a} MiB)"
}
if unpack train_step; then
  echo
  "$work/train_step" --device cuda --sizes 224,448 --batch 2 --steps 3 | tee "$work/train_step.txt" || status=$?
  step_896
  ours_mib=$peak_mib
  ours_step=$(sed -n 's/^| 896² | \([0-9.]*\) |.*/\1/p' "$work/train_step.txt")
fi

# The memory-efficient attention against the composite one, and both timed; then the
# training step at 896² once more with the composite attention (the step before the op).
if unpack attention_check; then
  echo
  "$work/attention_check" --device cuda | tee "$work/attention.txt" || status=$?
fi
if [[ -x $work/train_step ]]; then
  echo
  step_896 MEDDINO_FLASH_ATTENTION=0
fi

# A 20-step fine-tune on the GPU against the same run on the CPU (f32 both).
if unpack finetune_check; then
  echo
  "$work/finetune_check" --device cuda --steps 20 | tee "$work/finetune.txt" || status=$?
fi

# Issue 18's GPU goals (issue 10's, with the deformable attention's ratio at issue 18's ≤ 1.0). Each part prints its key=value lines; a missing value is n/a.
echo
if unpack matmul_bench; then
  "$work/matmul_bench" --device cuda --dtype bf16 --repeats 10 | tee "$work/matmul.txt" || status=$?
fi
# The same square product through PyTorch (cuBLAS too), so that the peak is not only what
# candle's call of cuBLAS reaches.
"$python" - <<'PY' | tee "$work/torch_matmul.txt" || status=$?
import torch
n, repeats = 8192, 20
a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
for _ in range(3):
    a @ b
start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
start.record()
for _ in range(repeats):
    a @ b
end.record()
torch.cuda.synchronize()
ms = start.elapsed_time(end) / repeats
print(f"torch {n}x{n}x{n} bf16 matmul: {ms:.3f} ms")
print(f"torch_peak_gflops={2 * n**3 / ms / 1e6:.1f}")
PY
if unpack forward_bench; then
  "$work/forward_bench" --arch vit_base --size 896 --batch 1 --dtype bf16 --device cuda --repeats 10 \
    | tee "$work/forward.txt" || status=$?
  # Where the time goes: the ViT forward at three sizes (the linear layers grow with the
  # tokens N, the attention with N²), and at the training step's f32, batch 2 (the step's
  # forward phase minus this is the decoder and the loss).
  echo "ViT-B/16 forward, median s: bf16 batch 1 at 224² / 448² / 896², f32 batch 2 at 896²:"
  for size in 224 448; do
    printf 'vit_bf16_%s_s=' "$size"
    "$work/forward_bench" --arch vit_base --size "$size" --batch 1 --dtype bf16 --device cuda --repeats 5 2>/dev/null \
      | sed -n 's/^median_s=//p' || status=$?
  done
  echo "vit_bf16_896_s=$(sed -n 's/^median_s=//p' "$work/forward.txt")"
  printf 'vit_f32_b2_896_s='
  "$work/forward_bench" --arch vit_base --size 896 --batch 2 --dtype f32 --device cuda --repeats 5 2>/dev/null \
    | sed -n 's/^median_s=//p' || status=$?
  echo "forward_bench with MEDDINO_FLASH_ATTENTION=0 (the composite attention):"
  MEDDINO_FLASH_ATTENTION=0 "$work/forward_bench" --arch vit_base --size 896 --batch 1 --dtype bf16 --device cuda \
    --repeats 5 | grep -E '^(median_s|gflops)=' || status=$?
fi
"$python" scripts/bench/primus_torch.py --mode train-step --device cuda --size 896 --batch 2 --steps 5 \
  --classes 4 --amp bf16 | tee "$work/torch_train.txt" || status=$?

value() { [[ -f $2 ]] && sed -n "s/^$1=//p" "$2" | tail -n 1; true; }
peak_candle=$(value peak_gflops "$work/matmul.txt")
peak_torch=$(value torch_peak_gflops "$work/torch_matmul.txt")
vit_gflop=$(value gflop "$work/forward.txt")
vit_s=$(value median_s "$work/forward.txt")
vit_gflops=$(value gflops "$work/forward.txt")
torch_step=$(value median_s "$work/torch_train.txt")
torch_mib=$(value peak_gpu_mib "$work/torch_train.txt")
# The peak: the larger of the two bf16 matrix-product rates.
peak=$(awk -v a="$peak_candle" -v b="$peak_torch" 'BEGIN { if (a == "" && b == "") exit; print (a + 0 > b + 0 ? a : b) }')

# row WORK OURS REFERENCE GOAL_OP GOAL: ratio = ours / reference, "met" when ratio GOAL_OP GOAL.
row() {
  awk -v work="$1" -v ours="$2" -v ref="$3" -v op="$4" -v goal="$5" 'BEGIN {
    ratio = "n/a"; met = "n/a"
    if (ours != "" && ref != "" && ref + 0 > 0) {
      r = ours / ref; ratio = sprintf("%.3f", r)
      met = ((op == ">=" && r >= goal) || (op == "<=" && r <= goal)) ? "yes" : "no"
    }
    printf "| %s | %s | %s | %s | %s %s | %s |\n", work, (ours == "" ? "n/a" : ours), (ref == "" ? "n/a" : ref), ratio, (op == ">=" ? "≥" : "≤"), goal, met
  }'
}
echo
echo "issue 18, GPU goals ($(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n 1))"
echo "ViT-B/16 896², batch 1: ${vit_gflop:-n/a} GFLOP per forward in ${vit_s:-n/a} s (bf16);" \
     "bf16 matmul peak: candle ${peak_candle:-n/a}, torch ${peak_torch:-n/a} GFLOP/s"
echo
echo "| work | ours | reference | ratio | goal | met |"
echo "|---|---:|---:|---:|---:|---|"
row "ViT-B/16 forward, 896², batch 1, bf16: GFLOP/s vs the bf16 matmul peak" "$vit_gflops" "$peak" ">=" 0.5
row "deformable attention forward+backward, Dino U-Net size, f32: ms, ours vs PyTorch grid_sample" "$ours" "$torch" "<=" 1.0
row "training step, MedDINOv3 ViT-B + Primus_Multiscale, 896², batch 2, AdamW: s (ours f32, PyTorch bf16 autocast)" "${ours_step:-}" "$torch_step" "<=" 1.0
row "peak GPU memory of that step: MiB (ours: sampled in use incl. the CUDA context; PyTorch: max_memory_allocated)" "${ours_mib:-}" "$torch_mib" "<=" 1.0
exit $status
