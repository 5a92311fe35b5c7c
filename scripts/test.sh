#!/usr/bin/env bash
# The whole test suite: installs what the tests need (idempotently), then runs format and lint
# checks and every unit and integration test of the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup-test-deps.sh

# The suite must not skip what CI can provide: missing Python packages or broker fail loudly.
export MLDEPLOY_REQUIRE_PYTHON=1
export MLDEPLOY_REQUIRE_KAFKA=1
JOBS="${CARGO_BUILD_JOBS:-2}"

cargo fmt --all -- --check
cargo clippy -j"$JOBS" --workspace --all-targets --quiet -- -D warnings
# The Python-model tests run mldeploy-python, which `--workspace --bins` builds.
# Integration tests start several multi-process servers: run test binaries one after another,
# and each binary's tests two at a time, so a 2-core machine is not oversubscribed.
# The Kafka tests also run the example model's binary.
cargo build -j"$JOBS" --workspace --bins
# Benches are compiled by clippy above; criterion's harness takes no test-runner flags.
cargo test -j"$JOBS" --workspace --lib --bins --tests -- --test-threads=2
