#!/usr/bin/env python3
"""Writes the markdown report of a scripts/bench/trees_http.sh run from its raw output.

Usage: trees_http_report.py OUT_DIR   (prints the report)
Reads OUT_DIR/machine.txt, rounds.tsv, memory.tsv, answer-MODEL-ENDPOINT-ROWS.json and
models/expected-ROWS.json (the libraries' own probabilities).
"""
import json
import os
import statistics
import sys

from v2_report import cpu_us, errors, interval, read_tsv, rps

ENDPOINTS = {
    "api": "mldeploy `/api/ml/predict`",
    "v2": "mldeploy V2 JSON",
    "mlserver": "MLServer 1.7.1 V2 JSON",
}
RUNTIME = {"rf300": "scikit-learn", "xgb300": "XGBoost", "lgb300": "LightGBM"}
GOAL = 50.0  # mldeploy at least 50x MLServer's requests per second


def mib(kib):
    return f"{int(kib) / 1024:.1f}"


def answer(out_dir, model, endpoint, rows):
    """(labels or None, probability of class 1 per row) from a saved answer, or None."""
    try:
        body = json.load(open(os.path.join(out_dir, f"answer-{model}-{endpoint}-{rows}.json")))
    except (OSError, ValueError):
        return None
    if endpoint == "api":
        target = body.get("target", {})
        return target.get("y_predicted"), [p[1] for p in target.get("probabilities", [])]
    tensors = {o["name"]: o["data"] for o in body.get("outputs", [])}
    proba = tensors.get("predict_proba")
    if proba is not None:
        return tensors.get("predict"), proba[1::2]
    # MLServer's LightGBM runtime: `predict` is the probability of class 1.
    return None, tensors.get("predict")


def check(out_dir, model, rows):
    expected = json.load(open(os.path.join(out_dir, "models", f"expected-{rows}.json")))[model]
    lib = [p[1] for p in expected]
    lib_labels = [int(p[1] > p[0]) for p in expected]
    got = {e: answer(out_dir, model, e, rows) for e in ENDPOINTS}
    cells = []
    for endpoint in ENDPOINTS:
        a = got[endpoint]
        if a is None or a[1] is None or len(a[1]) != rows:
            cells.append("no answer")
            continue
        labels, p1 = a
        diff = max(abs(x - y) for x, y in zip(p1, lib))
        text = f"max abs diff {diff:.1e}"
        if labels is not None:
            labels = [int(v) for v in labels]
            text += f", labels {sum(x == y for x, y in zip(labels, lib_labels))}/{rows}"
        cells.append(text)
    return cells


def main():
    out_dir = sys.argv[1]
    machine = {}
    for line in open(os.path.join(out_dir, "machine.txt")):
        key, _, value = line.rstrip("\n").partition(": ")
        machine[key] = value
    rounds = read_tsv(os.path.join(out_dir, "rounds.tsv"), ["model", "endpoint", "rows", "round"])
    memory = read_tsv(os.path.join(out_dir, "memory.tsv"), ["model", "system", "phase"])
    models = list(dict.fromkeys(r["model"] for r in rounds))
    bodies = sorted({int(r["rows"]) for r in rounds})
    p = print

    p("### Machine and run\n")
    for key in ("date", "nproc", "cpu", "memory", "kernel", "wrk", "mldeploy", "mlserver",
                "loadavg_before", "loadavg_after"):
        if key in machine:
            p(f"- {key}: `{machine[key]}`")
    p(f"- runs: {machine.get('rounds')} rounds of {machine.get('run_s')} s per model, body and endpoint, "
      f"after a {machine.get('warmup_s')} s warm-up of each; quick: {machine.get('quick')}")
    p()

    p("### Requests per second (`wrk -t2 -c32`, keep-alive, medians over the rounds)\n")
    p("| model | rows | endpoint | req/s | p50 ms | p99 ms [worst] | server CPU per request | non-2xx | socket errors | load avg |")
    p("|---|---|---|---|---|---|---|---|---|---|")
    for model in models:
        for rows in bodies:
            for endpoint, name in ENDPOINTS.items():
                runs = [r for r in rounds if r["model"] == model and r["endpoint"] == endpoint and int(r["rows"]) == rows]
                if not runs:
                    continue
                med = statistics.median
                p50 = med(int(r.get("p50_us", 0)) for r in runs) / 1e3
                p99 = [int(r.get("p99_us", 0)) / 1e3 for r in runs]
                cpu = med(cpu_us(r) for r in runs if int(r.get("requests", 0)))
                loads = [float(r["loadavg"]) for r in runs]
                p(f"| {model} | {rows} | {name} | {med(rps(r) for r in runs):,.0f} | {p50:.2f} | "
                  f"{med(p99):.1f} [{max(p99):.1f}] | {cpu:,.0f} us | {sum(int(r.get('non2xx', 0)) for r in runs)} | "
                  f"{sum(errors(r) for r in runs)} | {min(loads):.1f} to {max(loads):.1f} |")
    p()

    p(f"### mldeploy against MLServer (median of the per-round ratios, 95% interval; goal >= {GOAL:.0f}x)\n")
    p("| model (MLServer runtime) | rows | V2 JSON / MLServer | `/api/ml/predict` / MLServer | goal |")
    p("|---|---|---|---|---|")
    for model in models:
        for rows in bodies:
            by_round = {}
            for r in rounds:
                if r["model"] == model and int(r["rows"]) == rows:
                    by_round.setdefault(r["round"], {})[r["endpoint"]] = rps(r)
            cells, worst = [], None
            for endpoint in ("v2", "api"):
                ratios = [v[endpoint] / v["mlserver"] for v in by_round.values()
                          if v.get("mlserver") and endpoint in v]
                if not ratios:
                    cells.append("-")
                    continue
                med = statistics.median(ratios)
                lo, hi = interval(ratios)
                cells.append(f"{med:.0f}x ({lo:.0f} to {hi:.0f})")
                worst = med if worst is None else min(worst, med)
            verdict = "-" if worst is None else ("met" if worst >= GOAL else f"**missed** ({worst / GOAL:.2f} of it)")
            p(f"| {model} ({RUNTIME.get(model, '?')}) | {rows} | {cells[0]} | {cells[1]} | {verdict} |")
    p()

    p("### Memory of each process tree (`scripts/bench/proc_tree_mem.py`)\n")
    p("| model | system | processes | idle RSS MiB | idle PSS MiB | after the runs RSS MiB | after the runs PSS MiB |")
    p("|---|---|---|---|---|---|---|")
    for model in models:
        for system in ("mldeploy", "mlserver"):
            row = {m["phase"]: m for m in memory if m["model"] == model and m["system"] == system}
            if "idle" not in row:
                continue
            idle, loaded = row["idle"], row.get("loaded", {})
            p(f"| {model} | {system} | {idle.get('procs')} | {mib(idle['rss_kib'])} | {mib(idle['pss_kib'])} | "
              f"{mib(loaded.get('rss_kib', 0))} | {mib(loaded.get('pss_kib', 0))} |")
    p()

    p("### The answers against the library's own predict_proba (probability of class 1; labels from it)\n")
    p("| model | rows | " + " | ".join(ENDPOINTS.values()) + " |")
    p("|---|---|---|---|---|")
    for model in models:
        for rows in bodies:
            p(f"| {model} | {rows} | " + " | ".join(check(out_dir, model, rows)) + " |")


if __name__ == "__main__":
    main()
