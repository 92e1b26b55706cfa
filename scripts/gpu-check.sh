#!/usr/bin/env bash
# GPU verification of meddino-decoder, run on a GPU machine (H100/H200, CUDA 13, driver 580,
# python3 with torch, no Rust, no network) from the repository root, after
# scripts/build-gpu-check.sh prepared gpu/ on the CPU machine and gpu/ was carried over:
#   1. the CUDA deformable-attention op against the f64 reference (forward and the three
#      gradients, in f64, f32 and bf16), Primus_Multiscale on GPU against CPU, and the op's
#      forward+backward time at the Dino U-Net's size (gpu_check, Rust);
#   2. the same op written with PyTorch (grid_sample, autograd) timed at the same size on the
#      same GPU (scripts/msda_torch_bench.py);
#   3. a table of both;
#   4. seconds per training step of the MedDINOv3 network (ViT-B/16 + Primus_Multiscale,
#      AdamW, f32) on the GPU at 224², 448² and 896², batch 2 (train_step, Rust).
# Exit status: non-zero when a check fails.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
[[ -f gpu/gpu_check.xz ]] || { echo "gpu/gpu_check.xz missing: run scripts/build-gpu-check.sh on the CPU machine and carry gpu/" >&2; exit 2; }
python=${PYTHON:-python3}

# The real CUDA 13 libraries: the driver's libcuda is on the loader path; cuBLAS, cuRAND,
# NVRTC and the runtime come with the Python CUDA packages beside torch.
site=$("$python" -c 'import site; print(" ".join(site.getsitepackages()))')
libs=$(for dir in $site; do find "$dir" -path '*nvidia*' \( -name 'libcublas.so.13*' -o -name 'libcurand.so.10*' \
        -o -name 'libnvrtc.so.13*' -o -name 'libcudart.so.13*' -o -name 'libcublasLt.so.13*' \) -printf '%h\n' 2>/dev/null; done | sort -u | paste -sd:)
[[ -n $libs ]] || { echo "no CUDA 13 libraries found under $site" >&2; exit 2; }
export LD_LIBRARY_PATH=$libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$python" -c 'import lzma, sys; open(sys.argv[2], "wb").write(lzma.open(sys.argv[1]).read())' gpu/gpu_check.xz "$work/gpu_check"
chmod +x "$work/gpu_check"
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

if [[ -f gpu/train_step.xz ]]; then
  "$python" -c 'import lzma, sys; open(sys.argv[2], "wb").write(lzma.open(sys.argv[1]).read())' gpu/train_step.xz "$work/train_step"
  chmod +x "$work/train_step"
  echo
  "$work/train_step" --device cuda --sizes 224,448,896 --batch 2 --steps 3 || status=$?
fi
exit $status
