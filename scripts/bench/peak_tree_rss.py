"""Runs a command and reports its wall time and the peak memory of its whole process tree.

`/usr/bin/time -f %M` reports the largest single process, which undercounts programs that
spawn workers (nnU-Net's plan-and-preprocess runs its fingerprint and preprocessing in a
multiprocessing pool). This samples /proc every `--interval` seconds (default 0.05), sums
the resident set size of the command and all its descendants, and keeps the largest sum.

    python scripts/bench/peak_tree_rss.py [--interval 0.05] [--pss] -- CMD [ARGS...]

After the command exits it prints, on stdout:

* ``wall_s=``: wall time from start to exit;
* ``peak_tree_rss_kb=``: the largest sampled sum of VmRSS over the tree. Pages shared by
  several processes (copy-on-write after fork, shared libraries) count once per process,
  so this can exceed the memory the tree really holds;
* ``peak_tree_pss_kb=`` (only with ``--pss``): the same with the proportional set size,
  which splits shared pages between their users; reading it walks each process's page
  tables, so it costs more per sample;
* ``max_process_rss_kb=``: the largest peak RSS of any single process of the tree, from the
  kernel (what ``/usr/bin/time -f %M`` reports), exact but not a sum; for a tiny command it
  is this script's own size, which the command's process had before its exec;
* ``samples=``: how many samples were taken.

A peak shorter than the interval can be missed. The exit status is the command's.
"""

import argparse
import os
import resource
import subprocess
import sys
import time

PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024


def children_of(pid):
    """Direct children of `pid` (all its threads), or None if the kernel lacks the file."""
    found = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                found.extend(int(c) for c in f.read().split())
        except FileNotFoundError:
            if not os.path.exists(f"/proc/{pid}/task/{tid}"):
                continue  # the thread ended meanwhile
            return None
        except OSError:
            continue
    return found


def parents_by_scan():
    """pid -> ppid for every process, from /proc/<pid>/stat."""
    parents = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        # The command name may hold spaces and parentheses: ppid follows the last ')'.
        fields = stat[stat.rfind(")") + 2 :].split()
        parents[int(entry)] = int(fields[1])
    return parents


def tree(root):
    """`root` and all its descendants that are alive now."""
    pids, queue = [], [root]
    by_scan = None
    while queue:
        pid = queue.pop()
        pids.append(pid)
        kids = children_of(pid)
        if kids is None:
            if by_scan is None:
                parents = parents_by_scan()
                by_scan = {}
                for child, parent in parents.items():
                    by_scan.setdefault(parent, []).append(child)
            kids = by_scan.get(pid, [])
        queue.extend(kids)
    return pids


def rss_kb(pid):
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * PAGE_KB
    except (OSError, IndexError, ValueError):
        return 0


def pss_kb(pid):
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except (OSError, IndexError, ValueError):
        pass
    return 0


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--interval", type=float, default=0.05, help="seconds between samples (default 0.05)")
    parser.add_argument("--pss", action="store_true", help="also sum the proportional set size")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="the command to run (after --)")
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command given")

    start = time.perf_counter()
    child = subprocess.Popen(command)
    peak_rss = peak_pss = samples = 0
    try:
        while child.poll() is None:
            pids = tree(child.pid)
            peak_rss = max(peak_rss, sum(rss_kb(p) for p in pids))
            if args.pss:
                peak_pss = max(peak_pss, sum(pss_kb(p) for p in pids))
            samples += 1
            time.sleep(args.interval)
    except KeyboardInterrupt:
        child.terminate()
        child.wait()
    wall = time.perf_counter() - start
    # ru_maxrss of waited-for descendants (orphans reparented elsewhere are not counted).
    max_process = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    sys.stderr.flush()
    print(f"wall_s={wall:.3f}")
    print(f"peak_tree_rss_kb={peak_rss}")
    if args.pss:
        print(f"peak_tree_pss_kb={peak_pss}")
    print(f"max_process_rss_kb={max_process}")
    print(f"samples={samples}")
    sys.exit(child.returncode if child.returncode >= 0 else 128 - child.returncode)


if __name__ == "__main__":
    main()
