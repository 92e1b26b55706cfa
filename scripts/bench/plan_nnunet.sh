#!/usr/bin/env bash
# Times nnU-Net's nnUNetv2_plan_and_preprocess on a raw data set: the reference side of the
# plan-and-preprocess benchmark (docs/benchmarks.md; what `meddino plan-and-preprocess`
# reproduces, shared/spec/nnunet-reference.md sections 2-4).
#
#   scripts/bench/plan_nnunet.sh RAW/DatasetNNN_Name [PROCESSES]
#
# RAW/DatasetNNN_Name is a raw data set, e.g. from
#   cargo run --release -p nnunet-data --example phantom_dataset -- /tmp/raw/Dataset501_CtBench
# PROCESSES (default 2) is used for both the fingerprint (-npfp) and the preprocessing (-np),
# as `meddino plan-and-preprocess -j 2`. The run is from scratch: nnUNet_raw holds only a
# link to the data set, and nnUNet_preprocessed and nnUNet_results are fresh temporary
# folders, removed afterwards (set KEEP=1 to keep them; the folder is printed).
#
# It runs
#   nnUNetv2_plan_and_preprocess -d NNN -c 2d -npfp P -np P --verify_dataset_integrity
# --verify_dataset_integrity because `meddino plan-and-preprocess` always checks every case
# (docs/reliability.md); nnU-Net does it as a separate pass that reads every image and label
# once more before the fingerprint.
#
# Memory: nnU-Net runs the fingerprint and the preprocessing in worker processes, so the
# peak is the whole process tree's, sampled by scripts/bench/peak_tree_rss.py every 50 ms
# (peak_tree_rss_kb, with peak_tree_pss_kb counting shared pages once); /usr/bin/time's
# peak_rss_kb is the largest single process. The last lines are seconds= and the peaks.
#
# NNUNET_BIN (default ~/.cache/meddino/bench-venv/bin) is where nnUNetv2_plan_and_preprocess
# and the python that runs peak_tree_rss.py live.
set -euo pipefail

if [[ $# -lt 1 || $# -gt 2 ]]; then
    sed -n '2,12p' "$0" >&2
    exit 2
fi
dataset=$(cd "$1" && pwd)
processes=${2:-2}
name=$(basename "$dataset")
if [[ ! $name =~ ^Dataset([0-9]{3})_.+$ ]]; then
    echo "error: $dataset: the folder must be named DatasetNNN_Name" >&2
    exit 2
fi
id=$((10#${BASH_REMATCH[1]}))
bin=${NNUNET_BIN:-$HOME/.cache/meddino/bench-venv/bin}
here=$(cd "$(dirname "$0")" && pwd)

work=$(mktemp -d "${TMPDIR:-/tmp}/plan_nnunet.XXXXXX")
if [[ ${KEEP:-0} == 1 ]]; then
    echo "keeping $work"
else
    trap 'rm -rf "$work"' EXIT
fi
mkdir -p "$work/raw" "$work/preprocessed" "$work/results"
ln -s "$dataset" "$work/raw/$name"
export nnUNet_raw=$work/raw nnUNet_preprocessed=$work/preprocessed nnUNet_results=$work/results

echo "nnunetv2 $("$bin/python" -c 'import importlib.metadata as m; print(m.version("nnunetv2"))'), dataset $name (id $id), $processes processes"
log=$work/measure.txt
/usr/bin/time -f "peak_rss_kb=%M" -o "$work/time.txt" \
    "$bin/python" "$here/peak_tree_rss.py" --pss -- \
    "$bin/nnUNetv2_plan_and_preprocess" -d "$id" -c 2d -npfp "$processes" -np "$processes" \
    --verify_dataset_integrity --no_pbar | tee "$log" | grep -v -E '^(wall_s|peak_tree_(rss|pss)_kb|max_process_rss_kb|samples)='

echo "preprocessed: $(find "$work/preprocessed/$name" -type f | wc -l) files, $(du -sh "$work/preprocessed/$name" | cut -f1)"
sed -n 's/^wall_s=/seconds=/p' "$log"
grep -E '^(peak_tree_(rss|pss)_kb|max_process_rss_kb|samples)=' "$log"
cat "$work/time.txt"
