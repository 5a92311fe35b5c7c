#!/usr/bin/env python3
"""Report of scripts/bench/hot_path.sh: DIR/runs.tsv -> markdown on stdout.

Per configuration, body and system: median requests/s over the rounds, median and worst p99,
errors; then, per round, each system's requests/s divided by nginx's (same body, same round)
and by ml-deploy's lean class (breast-cancer bodies), and the median of those ratios.
"""
import collections
import statistics
import sys
from pathlib import Path


def main():
    out = Path(sys.argv[1])
    runs = collections.defaultdict(dict)  # (config, body, system) -> round -> fields
    for line in (out / "runs.tsv").read_text().splitlines():
        config, body, rnd, system, summary, _load = line.split("\t")
        fields = dict(kv.split("=") for kv in summary.split())
        runs[(config, body, system)][int(rnd)] = {k: float(v) for k, v in fields.items()}
    print((out / "machine.txt").read_text())

    def rate(f):
        return f["requests"] / (f["duration_us"] / 1e6) if f.get("duration_us") else 0.0

    print("| W x T | body | system | req/s, median of rounds [min-max] | p99 ms, median [worst] | "
          "/ nginx, median of per-round ratios | / ml-deploy lean class, median | errors |")
    print("|---|---|---|---|---|---|---|---|")
    for (config, body, system), rounds in sorted(runs.items(), key=lambda kv: (kv[0][0], kv[0][1], order(kv[0][2]))):
        rates = [rate(f) for f in rounds.values()]
        p99 = [f.get("p99_us", 0) / 1000 for f in rounds.values()]
        errors = sum(f.get(k, 0) for f in rounds.values() for k in ("non2xx", "connect", "read", "write", "timeout"))

        def ratio(other):
            ref = runs.get((config, body, other))
            if not ref or system == other:
                return "-"
            r = [rate(rounds[i]) / rate(ref[i]) for i in rounds if i in ref and rate(ref[i]) > 0]
            if not r:
                return "-"
            return f"{statistics.median(r):.2f}x [{min(r):.2f}-{max(r):.2f}]"

        print(f"| {config} | {body_name(body)} | {system} | {statistics.median(rates):,.0f} "
              f"[{min(rates):,.0f}-{max(rates):,.0f}] | {statistics.median(p99):.2f} [{max(p99):.2f}] | "
              f"{ratio('nginx')} | {ratio('ml-deploy-lean') if body != 'demo' else '-'} | {errors:.0f} |")


def order(system):
    known = ["nginx", "ml-deploy", "ml-deploy-lean", "mldeploy-base", "mldeploy", "hyper-floor", "mldeploy-base-demo", "mldeploy-demo"]
    return known.index(system) if system in known else len(known)


def body_name(body):
    return {"1": "1 row", "32": "32 rows", "demo": "1 row, demo (iris)"}.get(body, body)


if __name__ == "__main__":
    main()
