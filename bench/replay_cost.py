#!/usr/bin/env python3
"""What one more batch costs through `replay`, measured from outside: a warm connection, the batch read, checked,
applied and reported by the release binary, as a user runs it.

    python3 bench/replay_cost.py BINARY DATABASE_URL EVENT.json... [--runs N]

Times `BINARY replay --database-url URL FILE` (the first file alone) and `BINARY replay … FILE…` (every file), the
two alternating, N runs each (default 7); the cost per extra batch is (median of all files − median of one file) /
(files − 1), which leaves out start-up, connecting and the first batch's table check. Prints the medians and that
cost. Make the files with gen-event, e.g. `for s in 1 2 3 4 5 6 7 8; do target/release/gen-event json --seed $s
> /tmp/b$s.json; done`.
"""
import statistics
import subprocess
import sys
import time


def timed(cmd):
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def main():
    args = sys.argv[1:]
    runs = 7
    if "--runs" in args:
        at = args.index("--runs")
        runs = int(args[at + 1])
        del args[at : at + 2]
    binary, url, files = args[0], args[1], args[2:]
    if len(files) < 2:
        raise SystemExit("replay_cost.py: give at least two event files")
    base = [binary, "replay", "--database-url", url]
    timed(base + files)  # the table exists and the files are in the page cache before anything is timed
    one, all_ = [], []
    for _ in range(runs):
        one.append(timed(base + files[:1]))
        all_.append(timed(base + files))
    m1, mn = statistics.median(one), statistics.median(all_)
    per = (mn - m1) / (len(files) - 1)
    print(f"replay of 1 file: median {m1 * 1e3:.1f} ms; of {len(files)} files: median {mn * 1e3:.1f} ms; "
          f"per extra batch: {per * 1e3:.1f} ms ({runs} runs each, alternating)")


if __name__ == "__main__":
    main()
