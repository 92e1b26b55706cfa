#!/usr/bin/env bash
# Fuzzes the readers of untrusted input with cargo fuzz (libFuzzer), each target for a
# bounded time, and prints a table: target, seconds, executions, corpus size, crashes.
# Not part of CI (it needs nightly and takes as long as you give it).
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET ...]     (default 60 s, all four targets)
#
# Targets (fuzz/fuzz_targets/, entry points in src/fuzzing.rs): nifti (images and label
# maps, .nii and .nii.gz), dataset_json, plans_json (every configuration resolved and used),
# checkpoint (safetensors training checkpoints and state dicts, PyTorch .pth).
# Seed corpora come from the reference data (MEDDINO_REFERENCE_DIR, default
# ../shared/reference). A crash leaves its input in fuzz/artifacts/<target>/: fix the
# reader, then copy the input to fuzz/regressions/<target>/ with the extension of its format
# (.nii, .nii.gz, .json, .pth, .safetensors) so tests/fuzzing.rs keeps it fixed.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
seconds=${1:-60}
shift || true
targets=("$@")
[[ ${#targets[@]} -gt 0 ]] || targets=(nifti dataset_json plans_json checkpoint)
reference=${MEDDINO_REFERENCE_DIR:-../shared/reference}

rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
cargo +nightly fuzz --version >/dev/null 2>&1 || cargo install cargo-fuzz --locked
export CARGO_TARGET_DIR=${MEDDINO_CACHE_DIR:-$HOME/.cache/meddino}/target-fuzz

# Seeds: each target's first byte selects a format where it reads more than one.
seed() { # seed TARGET NAME PREFIX_BYTE FILE
  local out="fuzz/corpus/$1/$2"
  if [[ -n $3 ]]; then { printf "\\x$3"; cat "$4"; } > "$out"; else cp "$4" "$out"; fi
}
mkdir -p fuzz/corpus/{nifti,dataset_json,plans_json,checkpoint}
if [[ -d $reference ]]; then
  for file in "$reference"/nifti/files/*.nii; do seed nifti "$(basename "$file")" 00 "$file"; done
  for file in "$reference"/nifti/files/*.nii.gz; do
    gunzip -c "$file" > "fuzz/corpus/nifti/.tmp"; seed nifti "$(basename "$file" .gz)-gz" 01 fuzz/corpus/nifti/.tmp
  done
  rm -f fuzz/corpus/nifti/.tmp
  for file in "$reference"/nnunet/raw/*/dataset.json; do seed dataset_json "$(basename "$(dirname "$file")").json" "" "$file"; done
  seed plans_json nnUNetPlans.json "" "$reference/nnunet/expected/nnUNetPlans.json"
  seed checkpoint ms_deform_attn_core.safetensors 00 "$reference/models/ms_deform_attn_core.safetensors"
  seed checkpoint hub_tiny.pth 01 "$reference/models/hub_tiny.pth"
fi

cargo +nightly fuzz build -O
printf '\n%-14s %8s %12s %8s %8s\n' target seconds executions corpus crashes
status=0
for target in "${targets[@]}"; do
  log=$(mktemp)
  # -rss_limit_mb: the checkpoint reader may legitimately allocate what a header promises.
  cargo +nightly fuzz run -O "$target" "fuzz/corpus/$target" -- \
    -max_total_time="$seconds" -rss_limit_mb=4096 -timeout=30 -print_final_stats=1 >"$log" 2>&1 || status=1
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  crashes=$(find "fuzz/artifacts/$target" -type f 2>/dev/null | wc -l)
  printf '%-14s %8s %12s %8s %8s\n' "$target" "$seconds" "${runs:-?}" "$(ls "fuzz/corpus/$target" | wc -l)" "$crashes"
  if [[ $crashes -gt 0 ]]; then
    echo "  crash inputs in fuzz/artifacts/$target/; the log's last lines:"; tail -n 25 "$log" | sed 's/^/    /'
  fi
  rm -f "$log"
done
exit $status
