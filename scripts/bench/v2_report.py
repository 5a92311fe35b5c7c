#!/usr/bin/env python3
"""Writes the markdown report of a scripts/bench/v2.sh run from its raw output.

Usage: v2_report.py OUT_DIR   (prints the report)
Reads OUT_DIR/machine.txt, long.tsv, interleaved.tsv, memory.tsv and answer-VARIANT-ROWS.*.
"""
import json
import os
import random
import statistics
import struct
import sys

NAMES = {
    "api": "mldeploy `/api/ml/predict`",
    "v2-json": "mldeploy V2 JSON",
    "v2-binary": "mldeploy V2 binary",
    "mlserver": "MLServer 1.7.1 V2 JSON",
}
GOAL = 0.90  # V2 within 10% of /api/ml/predict


def fields(parts):
    out = {}
    for part in parts:
        if "=" in part:
            key, value = part.split("=", 1)
            out[key] = value
    return out


def read_tsv(path, keys):
    rows = []
    if not os.path.exists(path):
        return rows
    for line in open(path):
        parts = line.rstrip("\n").split("\t")
        row = dict(zip(keys, parts))
        row.update(fields(" ".join(parts[len(keys):]).split()))
        rows.append(row)
    return rows


def rps(row):
    duration = int(row.get("duration_us", 0))
    return int(row.get("requests", 0)) / (duration / 1e6) if duration else 0.0


def errors(row):
    return sum(int(row.get(k, 0)) for k in ("connect", "read", "write", "timeout"))


def cpu_us(row):
    return float(row["cpu_s"]) / int(row["requests"]) * 1e6


def interval(ratios):
    """95% percentile-bootstrap interval of the median (fixed seed)."""
    rng = random.Random(1)
    boot = sorted(statistics.median(rng.choices(ratios, k=len(ratios))) for _ in range(2000))
    return boot[49], boot[1949]


def decode(out_dir, variant, rows):
    """Predicted classes (and probabilities of class 1 when answered) from a saved answer."""
    base = os.path.join(out_dir, f"answer-{variant}-{rows}")
    try:
        body = open(base + ".body", "rb").read()
        headers = open(base + ".headers", encoding="latin-1").read().lower()
    except OSError:
        return None
    if variant == "api":
        target = json.loads(body)["target"]
        return target["y_predicted"], [p[1] for p in target["probabilities"]]
    header_length = None
    for line in headers.splitlines():
        if line.startswith("inference-header-content-length:"):
            header_length = int(line.split(":", 1)[1])
    header = json.loads(body[:header_length] if header_length is not None else body)
    blobs = body[header_length:] if header_length is not None else b""
    offset, tensors = 0, {}
    for output in header["outputs"]:
        size = output.get("parameters", {}).get("binary_data_size")
        if size is None:
            tensors[output["name"]] = output["data"]
            continue
        code = {"INT64": "q", "FP64": "d", "FP32": "f", "INT32": "i"}[output["datatype"]]
        count = size // struct.calcsize(code)
        tensors[output["name"]] = list(struct.unpack(f"<{count}{code}", blobs[offset:offset + size]))
        offset += size
    classes = tensors.get("predict")
    proba = tensors.get("predict_proba")
    return classes, (proba[1::2] if proba else None)


def main():
    out_dir = sys.argv[1]
    machine = {}
    for line in open(os.path.join(out_dir, "machine.txt")):
        key, _, value = line.rstrip("\n").partition(": ")
        machine[key] = value
    long_runs = read_tsv(os.path.join(out_dir, "long.tsv"), ["variant", "rows", "rep"])
    rounds = read_tsv(os.path.join(out_dir, "interleaved.tsv"), ["variant", "rows", "round"])
    memory = read_tsv(os.path.join(out_dir, "memory.tsv"), ["system", "phase"])
    bodies = sorted({int(r["rows"]) for r in long_runs + rounds})
    p = print

    p("### Machine and run\n")
    for key in ("date", "nproc", "cpu", "memory", "kernel", "wrk", "mldeploy", "mlserver", "exporter",
                "loadavg_before", "loadavg_after"):
        if key in machine:
            p(f"- {key}: `{machine[key]}`")
    p(f"- runs: part 1 {machine.get('reps')} x {machine.get('long_s')} s per endpoint and body "
      f"(after a {machine.get('warmup_s')} s warm-up); part 2 {machine.get('rounds')} rounds of "
      f"{machine.get('run_s')} s runs per body; quick: {machine.get('quick')}")
    p()

    p("### The four endpoints (`wrk -t2 -c32`, keep-alive)\n")
    p("| rows | endpoint | req/s per run | req/s mean | p50 ms | p99 ms | non-2xx | socket errors | load avg |")
    p("|---|---|---|---|---|---|---|---|---|")
    for rows in bodies:
        for variant in NAMES:
            runs = [r for r in long_runs if r["variant"] == variant and int(r["rows"]) == rows]
            if not runs:
                continue
            per_run = [rps(r) for r in runs]
            p(f"| {rows} | {NAMES[variant]} | {' / '.join(f'{x:,.0f}' for x in per_run)} | "
              f"{statistics.mean(per_run):,.0f} | "
              f"{statistics.mean(int(r['p50_us']) for r in runs) / 1000:.2f} | "
              f"{max(int(r['p99_us']) for r in runs) / 1000:.2f} | "
              f"{sum(int(r['non2xx']) for r in runs)} | {sum(errors(r) for r in runs)} | "
              f"{'/'.join(r['loadavg'] for r in runs)} |")
    p("\np50 is the mean over the runs, p99 the worst run's; errors are summed over the runs.\n")

    for rows in bodies:
        api = statistics.mean(rps(r) for r in long_runs if r["variant"] == "api" and int(r["rows"]) == rows)
        mls = [rps(r) for r in long_runs if r["variant"] == "mlserver" and int(r["rows"]) == rows]
        if mls:
            v2 = statistics.mean(rps(r) for r in long_runs if r["variant"] == "v2-json" and int(r["rows"]) == rows)
            p(f"- {rows} row(s): mldeploy V2 JSON / MLServer V2 JSON = {v2 / statistics.mean(mls):.1f}x "
              f"(mldeploy `/api/ml/predict` / MLServer = {api / statistics.mean(mls):.1f}x)")
    p()

    p("### mldeploy's endpoints interleaved\n")
    p("| rows | endpoint | req/s, median | p50 ms, median | p99 ms, median [worst] | server CPU per request, median | "
      "req/s V2 / api, median of per-round ratios (95% interval) | CPU per request V2 / api, same | "
      "goal: req/s ratio >= 0.90 |")
    p("|---|---|---|---|---|---|---|---|---|")
    for rows in bodies:
        by_round = {}
        for r in rounds:
            if int(r["rows"]) == rows:
                by_round.setdefault(int(r["round"]), {})[r["variant"]] = r
        complete = [v for v in by_round.values() if all(k in v for k in ("api", "v2-json", "v2-binary"))]
        for variant in ("api", "v2-json", "v2-binary"):
            runs = [v[variant] for v in complete]
            if not runs:
                continue
            cpu = [cpu_us(r) for r in runs if int(r["requests"])]
            cell = cpu_cell = ""
            verdict = ""
            if variant != "api":
                ratios = sorted(rps(v[variant]) / rps(v["api"]) for v in complete if rps(v["api"]))
                low, high = interval(ratios)
                median = statistics.median(ratios)
                cell = f"{median:.3f} ({low:.3f} to {high:.3f}), {len(ratios)} rounds"
                cpu_ratios = sorted(cpu_us(v[variant]) / cpu_us(v["api"]) for v in complete
                                    if int(v["api"]["requests"]) and int(v[variant]["requests"]))
                c_low, c_high = interval(cpu_ratios)
                cpu_cell = f"{statistics.median(cpu_ratios):.3f} ({c_low:.3f} to {c_high:.3f})"
                if low >= GOAL:
                    verdict = "met"
                elif median >= GOAL:
                    verdict = "met by the median; the interval reaches below"
                else:
                    verdict = f"**missed** by {(GOAL - median) * 100:.1f} points"
            p(f"| {rows} | {NAMES[variant]} | {statistics.median(rps(r) for r in runs):,.0f} | "
              f"{statistics.median(int(r['p50_us']) for r in runs) / 1000:.2f} | "
              f"{statistics.median(int(r['p99_us']) for r in runs) / 1000:.2f} "
              f"[{max(int(r['p99_us']) for r in runs) / 1000:.2f}] | "
              f"{statistics.median(cpu):.1f} us | {cell} | {cpu_cell} | {verdict} |")
        errs = sum(int(r["non2xx"]) + errors(r) for v in complete for r in v.values())
        p(f"| {rows} | (non-2xx and socket errors, all runs) | {errs} | | | | | | |")
    p("\nServer CPU: utime + stime of the master and its workers (all threads) during the run, "
      "over the requests answered.\n")

    instructions = os.path.join(out_dir, "instructions.txt")
    if os.path.exists(instructions):
        counts = {}
        for line in open(instructions).readlines()[1:]:
            variant, rows, count = line.split()
            counts[(variant, int(rows))] = int(count.replace(",", ""))
        p(f"### Instructions per request (callgrind, {machine.get('callgrind_requests')} and "
          f"{3 * int(machine.get('callgrind_requests', 0))} requests, one worker)\n")
        p("| rows | endpoint | instructions per request | V2 / api |")
        p("|---|---|---|---|")
        for (variant, rows), count in sorted(counts.items(), key=lambda kv: (kv[0][1], list(NAMES).index(kv[0][0]))):
            api = counts.get(("api", rows))
            ratio = f"{count / api:.3f}" if api and variant != "api" else ""
            p(f"| {rows} | {NAMES[variant]} | {count:,} | {ratio} |")
        p()

    p("### Memory of the whole process tree (/proc/PID/smaps_rollup)\n")
    p("| system | processes | idle RSS MiB | idle PSS MiB | after part 1 RSS MiB | after part 1 PSS MiB |")
    p("|---|---|---|---|---|---|")
    for system, label in (("mldeploy", "mldeploy (master + 2 workers)"),
                          ("mlserver", "MLServer (HTTP process + 2 workers + resource tracker)")):
        idle = next((m for m in memory if m["system"] == system and m["phase"] == "idle"), None)
        loaded = next((m for m in memory if m["system"] == system and m["phase"] == "loaded"), None)
        if not idle:
            continue
        mib = lambda m, k: f"{int(m[k]) / 1024:.1f}" if m else "?"
        p(f"| {label} | {idle['procs']} | {mib(idle, 'rss_kib')} | {mib(idle, 'pss_kib')} | "
          f"{mib(loaded, 'rss_kib')} | {mib(loaded, 'pss_kib')} |")
    p()

    p("### Same answers\n")
    for rows in bodies:
        answers = {v: decode(out_dir, v, rows) for v in NAMES}
        reference = answers.get("api")
        for variant, answer in answers.items():
            if variant == "api":
                continue
            if answer is None or reference is None or answer[0] is None:
                p(f"- {rows} row(s), {NAMES[variant]}: no answer to compare")
                continue
            same = sum(int(a) == int(b) for a, b in zip(answer[0], reference[0]))
            text = f"- {rows} row(s), {NAMES[variant]}: classes agree with `/api/ml/predict` on {same} of {len(reference[0])} rows"
            if answer[1] is not None:
                diff = max(abs(a - b) for a, b in zip(answer[1], reference[1]))
                text += f"; probabilities differ by at most {diff:.1e}"
            p(text)
    p()


if __name__ == "__main__":
    main()
