//! The Kubernetes manifests in configs/kubernetes, run through scripts/check_kubernetes.py: the
//! Kubernetes kinds strictly against kubernetes-validate's schemas, the KServe kinds field by
//! field, and mldeploy's own rules (probes, drain timing, workers per core, KServe's port and
//! model mount). Broken copies must be refused, so a check that stopped checking fails here too.
//!
//! Needs python3 with kubernetes-validate (installed by scripts/setup-test-deps.sh). Without it
//! the tests are skipped with a message, unless MLDEPLOY_REQUIRE_PYTHON=1 (CI), which fails them.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The script's exit status when a Python package it needs is missing.
const MISSING_DEPENDENCY: i32 = 77;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn manifests() -> PathBuf {
    repo().join("configs/kubernetes")
}

/// Run the check on `dir`; `None` when python3 or its packages are missing and not required.
fn check(dir: &Path) -> Option<Output> {
    let out = Command::new("python3").arg(repo().join("scripts/check_kubernetes.py")).arg(dir).output();
    let why = match out {
        Ok(o) if o.status.code() != Some(MISSING_DEPENDENCY) => return Some(o),
        Ok(o) => String::from_utf8_lossy(&o.stderr).trim().to_string(),
        Err(e) => format!("python3 cannot run: {e}"),
    };
    assert!(
        std::env::var("MLDEPLOY_REQUIRE_PYTHON").as_deref() != Ok("1"),
        "MLDEPLOY_REQUIRE_PYTHON=1 but the Kubernetes check cannot run: {why}"
    );
    eprintln!("SKIPPED: the Kubernetes check cannot run: {why}");
    None
}

fn output_text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// A copy of configs/kubernetes with the first `from` in `file` replaced by `to`.
fn broken_copy(case: &str, file: &str, from: &str, to: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("kubernetes").join(case);
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    let mut found = false;
    for entry in fs::read_dir(manifests()).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_owned();
        let mut text = fs::read_to_string(&path).unwrap();
        if name == file {
            assert!(text.contains(from), "{file} no longer contains {from:?}: update case {case}");
            text = text.replacen(from, to, 1);
            found = true;
        }
        fs::write(dir.join(name), text).unwrap();
    }
    assert!(found, "configs/kubernetes/{file} is missing (case {case})");
    dir
}

#[test]
fn manifests_pass_the_check() {
    let Some(out) = check(&manifests()) else { return };
    let text = output_text(&out);
    assert!(out.status.success(), "configs/kubernetes refused:\n{text}");
    for resource in [
        "ConfigMap/mldeploy-config",
        "Deployment/mldeploy",
        "Service/mldeploy",
        "PodDisruptionBudget/mldeploy",
        "ServingRuntime/mldeploy",
        "InferenceService/",
    ] {
        assert!(
            text.lines().any(|l| l.starts_with("ok: ") && l.contains(resource)),
            "{resource} not checked:\n{text}"
        );
    }
}

/// Each case breaks one thing; the check must exit 1 and name the problem.
#[test]
fn broken_manifests_are_refused() {
    const CASES: &[(&str, &str, &str, &str, &str)] = &[
        // (case, file, from, to, expected in the report)
        (
            "misspelt-field",
            "deployment.yaml",
            "          livenessProbe:",
            "          livenesProbe:",
            "'livenesProbe' was unexpected",
        ),
        (
            "no-protocol-versions",
            "kserve-servingruntime.yaml",
            "  protocolVersions:\n    - v2\n",
            "",
            "spec.protocolVersions",
        ),
        (
            "grace-period-too-short",
            "deployment.yaml",
            "terminationGracePeriodSeconds: 45",
            "terminationGracePeriodSeconds: 30",
            "terminationGracePeriodSeconds = 30 must exceed",
        ),
        (
            "loopback-bind",
            "deployment.yaml",
            "bind = [\"0.0.0.0:8080\"]",
            "bind = [\"127.0.0.1:8080\"]",
            "loopback",
        ),
        ("workers-not-cores", "kserve-servingruntime.yaml", "value: \"1\"", "value: \"4\"", "workers = 4"),
        (
            "unquoted-format-version",
            "kserve-servingruntime.yaml",
            "version: \"1\"",
            "version: 1",
            "version must be a string",
        ),
        (
            "protocol-the-runtime-lacks",
            "kserve-inferenceservice.yaml",
            "protocolVersion: v2",
            "protocolVersion: v1",
            "protocolVersion v1 is not among runtime",
        ),
    ];
    let mut failures = Vec::new();
    for &(case, file, from, to, expected) in CASES {
        let dir = broken_copy(case, file, from, to);
        let Some(out) = check(&dir) else { return };
        let text = output_text(&out);
        if out.status.code() != Some(1) || !text.contains(expected) || text.contains("Traceback") {
            failures.push(format!(
                "{case}: expected exit 1 naming {expected:?}, got {:?}:\n{text}",
                out.status.code()
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
