#!/usr/bin/env python3
"""Turns the raw outputs of scripts/bench.sh into one markdown report.

Usage: report.py OUT_DIR   (prints markdown; bench.sh writes it to OUT_DIR/results.md)
Reads machine.txt, commands.tsv, load.tsv, memory.tsv, lifecycle.tsv, reload.tsv and the sample
responses response-SYSTEM-32.json. Missing parts are reported as missing, never invented.
"""
import json
import os
import statistics
import sys

GOAL_VS_ML_DEPLOY = 25.0
GOAL_VS_NGINX = 0.6
GOAL_P99_MS = 5.0
GOAL_MEMORY_SHARE = 0.1
GOAL_PYTHON_VS_ML_DEPLOY = 10.0


def read_lines(path):
    if not os.path.exists(path):
        return []
    with open(path) as handle:
        return [line.rstrip("\n") for line in handle if line.strip()]


def key_values(fields):
    values = {}
    for field in fields:
        for part in field.split():
            if "=" in part:
                key, value = part.split("=", 1)
                values[key] = value
    return values


def number(value, default=0.0):
    try:
        return float(value)
    except (TypeError, ValueError):
        return default


def socket_errors(run):
    return sum(int(number(run.get(k))) for k in ("connect", "read", "write", "timeout"))


def rate(run):
    seconds = number(run.get("duration_us")) / 1e6
    return number(run.get("requests")) / seconds if seconds else 0.0


def fmt_ratio(numerator, denominator):
    if not numerator or not denominator:
        return "n/a"
    return f"{numerator / denominator:.2f}x"


def verdict(ok):
    return "met" if ok else "**missed**"


def main():
    out = sys.argv[1]
    lines = []
    emit = lines.append

    emit("## Machine and run")
    emit("")
    for line in read_lines(os.path.join(out, "machine.txt")):
        key, _, value = line.partition(": ")
        emit(f"- {key}: `{value}`")
    emit("")
    emit("Server commands (W x T = workers x threads of the configuration):")
    emit("")
    for line in read_lines(os.path.join(out, "commands.tsv")):
        system, _, command = line.partition("\t")
        emit(f"- {system}: `{command}`")
    emit("")

    # ---- load runs
    runs = {}
    for line in read_lines(os.path.join(out, "load.tsv")):
        config, rows, rep, system, *rest = line.split("\t")
        runs.setdefault((config, rows, system), []).append((int(rep), key_values(rest)))
    configs = sorted({key[0] for key in runs}, key=lambda c: [int(x) for x in c.split("x")])
    rows_list = sorted({key[1] for key in runs}, key=int)
    systems = [s for s in ("mldeploy", "mldeploy-python", "ml-deploy", "nginx") if any(k[2] == s for k in runs)]

    emit("## Throughput and latency (wrk, keep-alive, 32 connections)")
    emit("")
    emit("| W x T | rows | system | req/s per run | req/s mean | p50 ms | p99 ms | non-2xx | socket errors | load avg |")
    emit("|---|---|---|---|---|---|---|---|---|---|")
    means = {}
    for config in configs:
        for rows in rows_list:
            for system in systems:
                reps = sorted(runs.get((config, rows, system), []), key=lambda r: r[0])
                if not reps:
                    continue
                rates = [rate(r) for _, r in reps]
                mean = statistics.mean(rates)
                p50 = statistics.mean(number(r.get("p50_us")) / 1000 for _, r in reps)
                p99 = max(number(r.get("p99_us")) / 1000 for _, r in reps)
                non2xx = sum(int(number(r.get("non2xx"))) for _, r in reps)
                sock = sum(socket_errors(r) for _, r in reps)
                loads = "/".join(r.get("loadavg", "?") for _, r in reps)
                means[(config, rows, system)] = (mean, p99, non2xx + sock)
                per_run = " / ".join(f"{x:,.0f}" for x in rates)
                emit(f"| {config} | {rows} | {system} | {per_run} | {mean:,.0f} | {p50:.2f} | "
                     f"{p99:.2f} | {non2xx} | {sock} | {loads} |")
    emit("")
    emit("p50 is the mean over the runs, p99 the worst run's; errors are summed over the runs.")
    emit("")

    if "mldeploy" in systems:
        emit("## Ratios and goals")
        emit("")
        emit("| W x T | rows | mldeploy / ml-deploy (goal >= 25x) | mldeploy / nginx (goal >= 0.6x) | mldeploy p99 ms (goal < 5 ms, 1 row) |")
        emit("|---|---|---|---|---|")
        for config in configs:
            for rows in rows_list:
                mine = means.get((config, rows, "mldeploy"))
                if not mine:
                    continue
                py = means.get((config, rows, "ml-deploy"))
                ngx = means.get((config, rows, "nginx"))
                vs_py = fmt_ratio(mine[0], py[0] if py else None)
                vs_ngx = fmt_ratio(mine[0], ngx[0] if ngx else None)
                if py:
                    vs_py += " " + verdict(mine[0] / py[0] >= GOAL_VS_ML_DEPLOY)
                if ngx:
                    vs_ngx += " " + verdict(mine[0] / ngx[0] >= GOAL_VS_NGINX)
                p99 = f"{mine[1]:.2f}"
                if rows == "1":
                    p99 += " " + verdict(mine[1] < GOAL_P99_MS)
                emit(f"| {config} | {rows} | {vs_py} | {vs_ngx} | {p99} |")
        emit("")

    if "mldeploy-python" in systems:
        emit("## The same Python class: mldeploy-python / ml-deploy")
        emit("")
        emit("| W x T | rows | req/s ratio (goal >= 10x) | mldeploy-python p99 ms | ml-deploy p99 ms |")
        emit("|---|---|---|---|---|")
        for config in configs:
            for rows in rows_list:
                mine = means.get((config, rows, "mldeploy-python"))
                py = means.get((config, rows, "ml-deploy"))
                if not mine or not py:
                    continue
                ratio = fmt_ratio(mine[0], py[0]) + " " + verdict(mine[0] / py[0] >= GOAL_PYTHON_VS_ML_DEPLOY)
                emit(f"| {config} | {rows} | {ratio} | {mine[1]:.2f} | {py[1]:.2f} |")
        emit("")

    # ---- memory
    memory = {}
    for line in read_lines(os.path.join(out, "memory.tsv")):
        config, system, phase, *rest = line.split("\t")
        memory[(config, system, phase)] = key_values(rest)
    if memory:
        emit("## Memory of the whole process tree (master + workers, /proc/PID/smaps_rollup)")
        emit("")
        emit("| W x T | system | processes | idle RSS MiB | idle PSS MiB | after load RSS MiB | after load PSS MiB |")
        emit("|---|---|---|---|---|---|---|")
        for config in configs:
            for system in systems:
                idle = memory.get((config, system, "idle"), {})
                loaded = memory.get((config, system, "loaded"), {})
                if not idle and not loaded:
                    continue

                def mib(values, key):
                    return f"{number(values.get(key)) / 1024:.1f}" if values else "n/a"

                emit(f"| {config} | {system} | {idle.get('procs', '?')} | {mib(idle, 'rss_kib')} | "
                     f"{mib(idle, 'pss_kib')} | {mib(loaded, 'rss_kib')} | {mib(loaded, 'pss_kib')} |")
        emit("")
        if "mldeploy-python" in systems and "ml-deploy" in systems:
            emit("| W x T | PSS mldeploy-python / ml-deploy, idle | after load |")
            emit("|---|---|---|")
            for config in configs:
                cells = []
                for phase in ("idle", "loaded"):
                    mine = number(memory.get((config, "mldeploy-python", phase), {}).get("pss_kib"))
                    theirs = number(memory.get((config, "ml-deploy", phase), {}).get("pss_kib"))
                    cells.append(f"{mine / theirs:.2f}" if theirs else "n/a")
                emit(f"| {config} | {cells[0]} | {cells[1]} |")
            emit("")
        if "mldeploy" in systems and "ml-deploy" in systems:
            emit("| W x T | PSS mldeploy / ml-deploy, idle | after load | goal < 0.1 |")
            emit("|---|---|---|---|")
            for config in configs:
                cells = []
                worst = 0.0
                for phase in ("idle", "loaded"):
                    mine = number(memory.get((config, "mldeploy", phase), {}).get("pss_kib"))
                    theirs = number(memory.get((config, "ml-deploy", phase), {}).get("pss_kib"))
                    share = mine / theirs if theirs else 0.0
                    worst = max(worst, share)
                    cells.append(f"{share:.3f}" if theirs else "n/a")
                emit(f"| {config} | {cells[0]} | {cells[1]} | {verdict(worst < GOAL_MEMORY_SHARE)} |")
            emit("")

    # ---- lifecycle
    lifecycle = {}
    for line in read_lines(os.path.join(out, "lifecycle.tsv")):
        system, mode, *rest = line.split("\t")
        lifecycle.setdefault((system, mode), []).append(key_values(rest))
    if lifecycle:
        emit("## Start-up and worker replacement")
        emit("")
        emit("| system | start to READY ms (4 workers), median [min-max] | kill -9 of the only worker: new child ms, median [min-max] | kill -9: serving again ms, median [min-max] | kills 0.5 s apart on one server: serving again ms, per kill |")
        emit("|---|---|---|---|---|")

        def spread(values, digits=0):
            if not values:
                return "n/a"
            return (f"{statistics.median(values):.{digits}f} "
                    f"[{min(values):.{digits}f}-{max(values):.{digits}f}]")

        for system in ("mldeploy", "ml-deploy"):
            starts = [number(v["startup_ms"]) for v in lifecycle.get((system, "startup"), [])
                      if "startup_ms" in v]
            rounds = [v for v in lifecycle.get((system, "respawn"), []) if "round" in v]
            repeated = [v for v in lifecycle.get((system, "respawn-repeated"), []) if "round" in v]
            if not starts and not rounds:
                continue
            child = [number(v["child_ms"]) for v in rounds if v.get("child_ms") not in (None, "none")]
            serve = [number(v["serve_ms"]) for v in rounds if "serve_ms" in v]
            serial = ", ".join(f"{number(v.get('serve_ms')):.0f}" for v in repeated) or "n/a"
            emit(f"| {system} | {spread(starts)} | {spread(child, 1)} | {spread(serve, 1)} | {serial} |")
        emit("")
        emit("READY: mldeploy's first 200 on GET /ready; ml-deploy has no readiness route, so its "
             "first 200 on a prediction. Kill -9: a server with one worker, so the first 200 after "
             "the kill comes from the replacement (the request waits in the listen backlog); a "
             "fresh server for each kill, then one server killed repeatedly.")
        emit("")

    # ---- reload under load
    reloads = read_lines(os.path.join(out, "reload.tsv"))
    if reloads:
        emit("## Reload and recycling under load (4 x 2, 1-row bodies, keep-alive, 32 connections)")
        emit("")
        emit("| system | what | signals | requests | req/s | non-2xx | socket errors (connect/read/write/timeout) | worker pids seen | first workers gone at the end |")
        emit("|---|---|---|---|---|---|---|---|---|")
        for line in reloads:
            system, kind, *rest = line.split("\t")
            values = key_values(rest)
            before = set(filter(None, values.get("workers_before", "").split(",")))
            after = set(filter(None, values.get("workers_after", "").split(",")))
            replaced = f"{len(before - after)} of {len(before)}" if before else "n/a"
            what = "HUP x10 during the run" if kind == "hup" else "--max-requests recycling"
            errs = "/".join(str(int(number(values.get(k)))) for k in ("connect", "read", "write", "timeout"))
            emit(f"| {system} | {what} | {values.get('signals', '0')} | "
                 f"{int(number(values.get('requests'))):,} | {rate(values):,.0f} | "
                 f"{int(number(values.get('non2xx')))} | {socket_errors(values)} ({errs}) | {values.get('worker_pids_seen', '?')} | {replaced} |")
        emit("")
        emit("Recycling: mldeploy (and mldeploy-python) run with --max-requests 2000 --max-requests-jitter 200; ml-deploy "
             "with 200/20, since at its rate 2000 would not recycle a worker within the run. "
             "Worker pids are sampled every 50 ms, so short-lived ones may be missed.")
        emit("")

    # ---- do both serve the same model?
    answers = {}
    for system in ("mldeploy", "mldeploy-python", "ml-deploy"):
        path = os.path.join(out, f"response-{system}-32.json")
        if os.path.exists(path):
            try:
                with open(path) as handle:
                    answers[system] = find_labels(json.load(handle))
            except ValueError:
                answers[system] = None
    if len(answers) >= 2 and "ml-deploy" in answers:
        emit("## Same model on both sides")
        emit("")
        mine = "mldeploy" if "mldeploy" in answers else "mldeploy-python"
        a, b = answers.get(mine), answers.get("ml-deploy")
        if a is not None and b is not None and len(a) == len(b):
            same = sum(1 for x, y in zip(a, b) if int(number(x, -1)) == int(number(y, -2)))
            emit(f"Predicted classes for the 32-row body agree on {same} of {len(a)} rows ({mine} and ml-deploy).")
        else:
            emit("Could not compare the predicted classes (see response-*-32.json).")
        emit("")

    print("\n".join(lines))


def find_labels(document):
    """The list of predicted classes in a response, wherever the server put it."""
    for key in ("y_predicted", "predictions", "prediction", "labels", "label", "predicted", "classes"):
        found = find_key(document, key)
        if isinstance(found, list):
            return [x[0] if isinstance(x, list) and len(x) == 1 else x for x in found]
    return None


def find_key(document, key):
    if isinstance(document, dict):
        if key in document:
            return document[key]
        for value in document.values():
            found = find_key(value, key)
            if found is not None:
                return found
    elif isinstance(document, list):
        for value in document:
            found = find_key(value, key)
            if found is not None:
                return found
    return None


if __name__ == "__main__":
    main()
