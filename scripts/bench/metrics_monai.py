"""Times MONAI scoring a folder of predictions the way MedDINOv3's metrics script does.

Reproduces `compute_segmentation_metrics` of MedDINOv3's `nnUNet/nnunetv2/compute_metrics.py`
as described in shared/spec/meddinov3-reference.md section 5 (MONAI's definitions:
shared/spec/nnunet-reference.md section 8.3):

* cases are the file names present in both folders, sorted; each pair is read with
  SimpleITK, no resampling; spacing is the label image's, reversed to (z, y, x);
* for each foreground class c of dataset.json: a class absent from the label gets NaN for
  every metric; otherwise Dice = 2|P∩G| / (|P|+|G|) in numpy, and the masks become boolean
  tensors of shape [1, 1, Z, Y, X] (one channel, so ``include_background=True``) for
  ``compute_hausdorff_distance(include_background=True, percentile=95, spacing=(sz, sy, sx))``
  and ``compute_surface_dice(class_thresholds=[1.0], include_background=True,
  spacing=(sz, sy, sx))`` (defaults otherwise: euclidean, ``use_subvoxels=False``).

SimpleITK takes the spacing from the header's pixdim even when it takes the direction from
the sform, so a file whose sform scales disagree with pixdim (SimpleITK then warns
"unexpected scales in sform") is scored at the pixdim spacing.

The reference runs the MONAI calls on ``cuda``; here they run on the CPU (MONAI then uses
scipy's exact Euclidean distance transform), one case after another as the reference does,
with torch limited to ``--threads`` threads.

Prints one line per case with the means over classes of Dice, HD95 and NSD (the columns of
``metrics_bench``), the per-class means over cases (NaN skipped, as the reference's
summary), the split between reading and scoring, and last ``seconds=<total wall time>``:
as metrics_bench's, it starts before the first file is read and so leaves out the Python
imports (printed separately).

    python scripts/bench/metrics_monai.py DIR/pred DIR/labels DIR/dataset.json [--threads 2]
"""

import argparse
import json
import math
import os
import time
import warnings


def class_names(dataset_json):
    """The foreground labels of dataset.json as (name, value), in file order."""
    with open(dataset_json) as f:
        labels = json.load(f)["labels"]
    return [(name, int(value)) for name, value in labels.items() if int(value) != 0]


def score_case(pred_array, label_array, spacing_zyx, classes, compute_hausdorff_distance, compute_surface_dice):
    """Dice, HD95 and NSD at 1 mm per class, exactly as compute_metrics.py computes them."""
    import numpy as np
    import torch

    device = torch.device("cpu")
    scores = []
    for _, c in classes:
        label_c = label_array == c
        pred_c = pred_array == c
        if label_c.sum() == 0:
            scores.append((math.nan, math.nan, math.nan))
            continue
        dice = 2.0 * np.logical_and(pred_c, label_c).sum() / (pred_c.sum() + label_c.sum())
        pred_oh = torch.as_tensor(pred_c, dtype=torch.bool).unsqueeze(0).unsqueeze(0).to(device)
        label_oh = torch.as_tensor(label_c, dtype=torch.bool).unsqueeze(0).unsqueeze(0).to(device)
        hd95 = compute_hausdorff_distance(
            y_pred=pred_oh, y=label_oh, include_background=True, percentile=95, spacing=spacing_zyx
        ).cpu().numpy()[0][0]
        nsd = compute_surface_dice(
            y_pred=pred_oh, y=label_oh, class_thresholds=[1.0], include_background=True, spacing=spacing_zyx
        ).cpu().numpy()[0][0]
        scores.append((float(dice), float(hd95), float(nsd)))
    return scores


def nanmean(values):
    kept = [v for v in values if not math.isnan(v)]
    return sum(kept) / len(kept) if kept else math.nan


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("pred", help="folder of predicted label maps")
    parser.add_argument("labels", help="folder of reference label maps (same file names)")
    parser.add_argument("dataset_json", help="dataset.json naming the labels")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--file-ending", default=".nii.gz")
    args = parser.parse_args()

    t_import = time.perf_counter()
    import SimpleITK as sitk
    import torch
    from monai.metrics import compute_hausdorff_distance, compute_surface_dice

    torch.set_num_threads(args.threads)
    # MONAI warns about a deprecated argument it passes itself, and about every empty
    # prediction; neither changes a value.
    warnings.filterwarnings("ignore", category=FutureWarning, module="monai")
    warnings.filterwarnings("ignore", category=UserWarning, module="monai")
    # As in metrics_bench, the clock starts before the first file is read (imports apart).
    start = time.perf_counter()

    classes = class_names(args.dataset_json)
    pred_files = {f for f in os.listdir(args.pred) if f.endswith(args.file_ending)}
    label_files = {f for f in os.listdir(args.labels) if f.endswith(args.file_ending)}
    files = sorted(pred_files & label_files)

    read_s = score_s = 0.0
    per_case = []
    for name in files:
        t0 = time.perf_counter()
        pred_img = sitk.ReadImage(os.path.join(args.pred, name))
        label_img = sitk.ReadImage(os.path.join(args.labels, name))
        pred_array = sitk.GetArrayFromImage(pred_img)
        label_array = sitk.GetArrayFromImage(label_img)
        spacing = label_img.GetSpacing()
        if pred_array.shape != label_array.shape:
            raise ValueError(f"Shape mismatch between prediction and label for {name}.")
        t1 = time.perf_counter()
        scores = score_case(
            pred_array,
            label_array,
            (spacing[2], spacing[1], spacing[0]),
            classes,
            compute_hausdorff_distance,
            compute_surface_dice,
        )
        t2 = time.perf_counter()
        read_s += t1 - t0
        score_s += t2 - t1
        per_case.append((name, pred_array.shape, scores))
    total = time.perf_counter() - start

    # Plain means over classes, as metrics_bench prints them (NaN propagates there too).
    print(f"{'case':<28} {'mean dice':>10} {'mean hd95':>10} {'mean nsd':>10}")
    for name, _, scores in per_case:
        means = [sum(s[m] for s in scores) / len(scores) for m in range(3)]
        print(f"{name:<28} {means[0]:>10.4f} {means[1]:>10.3f} {means[2]:>10.4f}")
    print(f"{'class':<28} {'dice':>10} {'hd95':>10} {'nsd':>10}   (mean over cases, NaN skipped)")
    for k, (class_name, value) in enumerate(classes):
        means = [nanmean([scores[k][m] for _, _, scores in per_case]) for m in range(3)]
        print(f"{f'{value} {class_name}':<28} {means[0]:>10.4f} {means[1]:>10.3f} {means[2]:>10.4f}")
    shape = list(per_case[0][1]) if per_case else []
    print(
        f"{len(files)} cases {shape}, {len(classes)} classes, MONAI on cpu, {torch.get_num_threads()} torch threads: "
        f"imports {start - t_import:.3f} s (not in seconds=), read {read_s:.3f} s, score {score_s:.3f} s"
    )
    print(f"seconds={total:.3f}")


if __name__ == "__main__":
    main()
