#!/usr/bin/env python3
"""Runs storage_ab once per configuration and round, alternating the order
every other round (this disk drifts), and prints each run and the medians.

usage: storage-rounds.py STORAGE_AB ROUNDS SECONDS "CONFIG" ...
CONFIG = "PATH [storage_ab flags]", e.g. "executor --preallocate 0".
"""
import json
import statistics
import subprocess
import sys


def main():
    binary, rounds, seconds, configs = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4:]
    runs = {config: [] for config in configs}
    for r in range(rounds):
        for config in configs if r % 2 == 0 else reversed(configs):
            path, *flags = config.split()
            command = [binary, "--sync", "always", "--paths", path, "--seconds", seconds, "--json", *flags]
            report = json.loads(subprocess.run(command, capture_output=True, text=True, check=True).stdout)[0]
            lat = report["latency_us"]
            runs[config].append((report["ops_per_sec"], lat["p99"], lat["p9999"]))
            print(f"round {r + 1}  {config:60s} ops/s {report['ops_per_sec']:8.0f}  "
                  f"p99 {lat['p99']:6d} us  p99.99 {lat['p9999']:7d} us", flush=True)
    print("medians:")
    for config, values in runs.items():
        ops, p99, p9999 = (statistics.median(v[i] for v in values) for i in range(3))
        print(f"  {config:60s} ops/s {ops:8.0f}  p99 {p99:7.0f} us  p99.99 {p9999:7.0f} us")


if __name__ == "__main__":
    main()
