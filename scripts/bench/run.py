#!/usr/bin/env python3
"""Issue 10's CPU benchmarks, ours and the Python references side by side, interleaved.

    python3 scripts/bench/run.py [--rounds 2] [--threads N]
                                 [--only vit,primus,metrics,islands,plan,predict]
                                 [--ours-only] [--table FILE]

Builds our side (release; only what the selected benchmarks run), installs the references
(torch, transformers, MONAI, nnunetv2, pinned below) in a virtual environment outside the
repository (MEDDINO_BENCH_VENV, default ~/.cache/meddino/bench-venv; or set
MEDDINO_BENCH_PYTHON to a Python that already has them), generates the data once (MEDDINO_BENCH_DATA, default
~/.cache/meddino/bench-data), then runs every benchmark `--rounds` times, alternating which
side goes first, and prints a Markdown table: both times, the ratio of their medians, the
goal. Peak memory is the whole process tree's proportional set size (PSS), sampled every
50 ms by scripts/bench/peak_tree_rss.py (nnU-Net works in child processes).

| benchmark | ours | reference | time compared |
|---|---|---|---|
| vit | forward_bench, ViT-B/16 448² | vit_forward_torch.py (transformers DINOv3ViTModel) | median pass |
| primus | network_bench forward, Primus_Multiscale ViT-B 448² | primus_torch.py forward | median pass |
| metrics | metrics_bench, 3 × 512²×100, 5 classes | metrics_monai.py (compute_metrics.py's MONAI calls) | from the first read, and the whole command |
| islands | the same, predictions with 0.1 % of voxels set to random labels | the same | the same |
| plan | meddino plan-and-preprocess -c 2d, 12 CT phantoms 64×512² | plan_nnunet.sh (nnUNetv2_plan_and_preprocess) | the whole command |
| predict | network_bench predict, 16×256², patch 224, step 0.5 | primus_torch.py predict (nnU-Net's sliding window) | the sliding window |

Each program's own output is kept in MEDDINO_BENCH_DATA/logs/.
"""

import argparse
import datetime
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
CACHE = Path.home() / ".cache" / "meddino"
VENV = Path(os.environ.get("MEDDINO_BENCH_VENV", CACHE / "bench-venv"))
DATA = Path(os.environ.get("MEDDINO_BENCH_DATA", CACHE / "bench-data"))
TARGET = Path(os.environ.get("CARGO_TARGET_DIR", CACHE / "target"))
# The versions measured in docs/benchmarks.md.
REFERENCES = ["torch==2.15.0", "transformers==5.24.0", "monai==1.6.1", "nnunetv2==2.8.1"]
CT_DATASET = "Dataset501_CtBench"


def run(cmd, log=None, env=None, check=True):
    """Runs `cmd`, echoing it; returns its stdout (also written to `log`)."""
    print("$", " ".join(str(c) for c in cmd), file=sys.stderr, flush=True)
    result = subprocess.run(
        [str(c) for c in cmd], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    )
    if log is not None:
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text(result.stdout)
    if check and result.returncode != 0:
        sys.exit(f"failed ({result.returncode}): {' '.join(map(str, cmd))}\n{result.stdout[-3000:]}")
    return result.stdout


def value(output, key):
    """The last `key=<number>` in `output`."""
    found = re.findall(rf"^{re.escape(key)}=([0-9.eE+-]+)", output, re.MULTILINE)
    if not found:
        sys.exit(f"no {key}= in the output:\n{output[-2000:]}")
    return float(found[-1])


def measured(cmd, log, env=None):
    """Runs `cmd` under peak_tree_rss.py: (its output, wall seconds, peak PSS in MB)."""
    output = run([sys.executable, HERE / "peak_tree_rss.py", "--pss", "--", *cmd], log, env)
    return output, value(output, "wall_s"), value(output, "peak_tree_pss_kb") / 1024


# What each benchmark runs of ours: (package, example) pairs; None for the `meddino` binary.
BUILDS = {
    "vit": [("meddino-backbone", "forward_bench")],
    "primus": [("meddino-train", "network_bench")],
    "metrics": [("meddino-eval", "metrics_bench")],
    "islands": [("meddino-eval", "metrics_bench")],
    "plan": [("meddino", None), ("nnunet-data", "phantom_dataset")],
    "predict": [("meddino-train", "network_bench")],
}


def build(wanted):
    needed = {item for name in wanted for item in BUILDS.get(name, [])}
    if not needed:
        return
    # phantom_dataset makes the plan benchmark's data set.
    cmd = ["cargo", "build", "--release"]
    for package in sorted({p for p, _ in needed}):
        cmd += ["-p", package]
    for package, example in sorted(needed, key=str):
        cmd += ["--bin", "meddino"] if example is None else ["--example", example]
    run(cmd, env={**os.environ, "CARGO_TARGET_DIR": str(TARGET)})


def install_references():
    if "MEDDINO_BENCH_PYTHON" in os.environ:
        return Path(os.environ["MEDDINO_BENCH_PYTHON"])
    python = VENV / "bin" / "python"
    if not python.exists():
        run([sys.executable, "-m", "venv", VENV])
    run([python, "-m", "pip", "install", "--quiet", "--upgrade", "pip"])
    run([python, "-m", "pip", "install", "--quiet", *REFERENCES])
    return python


def prepare_data(wanted):
    """The data folders: {"metrics", "islands"} label maps, and the raw CT data set."""
    examples = TARGET / "release" / "examples"
    folders = {"metrics": DATA / "metrics", "islands": DATA / "metrics-islands"}
    noise = {"metrics": "0", "islands": "0.001"}
    for name, folder in folders.items():
        if name in wanted and not (folder / "dataset.json").exists():
            run([examples / "metrics_bench", "--generate", folder, "--cases", "3", "--size", "512x512x100",
                 "--noise", noise[name]])
    raw = DATA / "raw" / CT_DATASET
    if "plan" in wanted and not (raw / "dataset.json").exists():
        run([examples / "phantom_dataset", raw])
    return folders, raw


class Bench:
    """One goal: how to run each side and what to read from its output."""

    def __init__(self, name, work, goal, ours, reference, memory_goal=None, whole_command_too=False):
        self.name, self.work, self.goal, self.memory_goal = name, work, goal, memory_goal
        self.ours, self.reference, self.whole_command_too = ours, reference, whole_command_too
        self.results = {"ours": [], "reference": []}  # (time, whole command, peak MB) per round


def benches(args, python, metrics, raw):
    ex = TARGET / "release" / "examples"
    meddino = TARGET / "release" / "meddino"
    threads = str(args.threads)

    def plan_ours(log):
        # From scratch every time: the output folder is removed before and after.
        out = DATA / "preprocessed"
        shutil.rmtree(out, ignore_errors=True)
        output, wall, peak = measured(
            [meddino, "plan-and-preprocess", "-d", "501", "-c", "2d", "-j", threads,
             "--raw", raw.parent, "--preprocessed", out], log)
        shutil.rmtree(out, ignore_errors=True)
        return wall, wall, peak

    def plan_reference(log):
        env = {**os.environ, "NNUNET_BIN": str(python.parent)}
        output = run(["bash", HERE / "plan_nnunet.sh", raw, threads], log, env)
        seconds = value(output, "seconds")
        return seconds, seconds, value(output, "peak_tree_pss_kb") / 1024

    def side(cmd, key):
        def go(log):
            output, wall, peak = measured(cmd, log)
            return value(output, key), wall, peak
        return go

    torch = [python]
    return [
        Bench("vit", "ViT-B/16 forward, 448², batch 1, f32", 0.9,
              side([ex / "forward_bench", "--arch", "vit_base", "--size", "448", "--repeats", "3"], "median_s"),
              side([*torch, HERE / "vit_forward_torch.py", "--size", "448", "--repeats", "3", "--threads", threads],
                   "median_s"),
              memory_goal=1.0),
        Bench("primus", "Primus_Multiscale ViT-B forward, 448², batch 1, f32", 0.9,
              side([ex / "network_bench", "--mode", "forward", "--size", "448", "--repeats", "3",
                    "--threads", threads], "median_s"),
              side([*torch, HERE / "primus_torch.py", "--mode", "forward", "--size", "448", "--repeats", "3",
                    "--threads", threads], "median_s"),
              memory_goal=1.0),
        *[Bench(name, work, 0.05,
                side([ex / "metrics_bench", folder / "pred", folder / "labels", folder / "dataset.json"],
                     "seconds"),
                side([*torch, HERE / "metrics_monai.py", folder / "pred", folder / "labels",
                      folder / "dataset.json", "--threads", threads], "seconds"),
                whole_command_too=True)
          for name, folder, work in [
              ("metrics", metrics["metrics"],
               "evaluate 3 label maps 512²×100, 5 classes (Dice, HD95, NSD 1 mm)"),
              ("islands", metrics["islands"],
               "evaluate the same with 0.1 % of prediction voxels scattered as random labels"),
          ]],
        Bench("plan", "plan-and-preprocess `2d`, 12 CT volumes 64×512²", 0.3, plan_ours, plan_reference,
              memory_goal=0.5),
        Bench("predict", "predict 16×256² CT volume, 2-D, patch 224, step 0.5, no TTA", 0.7,
              side([ex / "network_bench", "--mode", "predict", "--threads", threads], "seconds"),
              side([*torch, HERE / "primus_torch.py", "--mode", "predict", "--threads", threads], "seconds")),
    ]


def ratio(ours, reference):
    return statistics.median(ours) / statistics.median(reference)


def table(benches_run, args, python):
    rows = []
    versions = "" if python is None else run(
        [python, "-c", "import importlib.metadata as m\n"
         "def v(p):\n"
         "    try: return f'{p} {m.version(p)}'\n"
         "    except m.PackageNotFoundError: return f'{p} not installed'\n"
         "print(', '.join(v(p) for p in ('torch', 'transformers', 'monai', 'nnunetv2')))"]).strip()
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    rows.append(f"{datetime.date.today()}, {cpu}, {os.cpu_count()} cores, {args.threads} threads, "
                f"{args.rounds} interleaved round(s); references: {versions or 'not run'}")
    rows.append("")
    rows.append("| work | ours | reference | ours ÷ reference | goal | met |")
    rows.append("|---|---:|---:|---:|---:|:---:|")

    def fmt(values, unit):
        return " / ".join(f"{v:.0f} {unit}" if unit == "MB" else f"{v:.3g} {unit}" for v in values)

    def row(work, ours, reference, goal, unit):
        if not reference:
            rows.append(f"| {work} | {fmt(ours, unit)} | – | – | ≤ {goal} | – |")
            return
        r = ratio(ours, reference)
        rows.append(f"| {work} | {fmt(ours, unit)} | {fmt(reference, unit)} | {r:.3f} | ≤ {goal} | "
                    f"{'yes' if r <= goal else 'no'} |")

    for b in benches_run:
        ours, ref = b.results["ours"], b.results["reference"]
        row(b.work, [t for t, _, _ in ours], [t for t, _, _ in ref], b.goal, "s")
        if b.whole_command_too:
            row(f"{b.name}: the whole command (start-up and imports included)",
                [w for _, w, _ in ours], [w for _, w, _ in ref], b.goal, "s")
        if b.memory_goal is not None:
            row(f"{b.name}: peak memory (PSS)", [m for _, _, m in ours], [m for _, _, m in ref],
                b.memory_goal, "MB")
    return "\n".join(rows)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--only", default="vit,primus,metrics,islands,plan,predict")
    parser.add_argument("--ours-only", action="store_true", help="skip the references (no venv)")
    parser.add_argument("--table", type=Path, help="also write the table to this file")
    args = parser.parse_args()
    os.environ["RAYON_NUM_THREADS"] = str(args.threads)
    wanted = args.only.split(",")
    build(wanted)
    python = None if args.ours_only else install_references()
    metrics, raw = prepare_data(wanted)
    selected = [b for b in benches(args, python, metrics, raw) if b.name in wanted]
    logs = DATA / "logs"
    for round_ in range(args.rounds):
        for b in selected:
            sides = ["ours"] if args.ours_only else ["ours", "reference"]
            if round_ % 2:
                sides.reverse()
            for s in sides:
                go = b.ours if s == "ours" else b.reference
                b.results[s].append(go(logs / f"{b.name}-{s}-{round_ + 1}.txt"))
                print(f"round {round_ + 1} {b.name} {s}: {b.results[s][-1]}", file=sys.stderr, flush=True)
    text = table(selected, args, python)
    print(text)
    if args.table:
        args.table.write_text(text + "\n")


if __name__ == "__main__":
    main()
