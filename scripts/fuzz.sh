#!/usr/bin/env bash
# Fuzzes request decoding and validation (crates/mldeploy-model/fuzz, cargo-fuzz + libFuzzer)
# for a number of seconds: the fault suite's long mode, not part of scripts/test.sh.
#
#   scripts/fuzz.sh [SECONDS] [TARGET]     # defaults: 300 decode_validate
#
# Installs cargo-fuzz when it is missing. The corpus grows in
# crates/mldeploy-model/fuzz/corpus/TARGET (seeded from seeds/TARGET); an input that fails
# is written to crates/mldeploy-model/fuzz/artifacts/TARGET and the script exits non-zero.
# Extra libFuzzer flags go in FUZZ_ARGS (for example FUZZ_ARGS="-jobs=2 -workers=2").
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION="${1:-300}"
TARGET="${2:-decode_validate}"
export CARGO_BUILD_JOBS="${CARGO_BUILD_JOBS:-2}"

log() { printf 'fuzz: %s\n' "$*" >&2; }

if ! cargo fuzz --version >/dev/null 2>&1; then
    log "installing cargo-fuzz"
    cargo install --locked cargo-fuzz
fi

# cargo-fuzz builds with nightly-only flags (-Zsanitizer=address and friends); this lets a
# stable toolchain accept them.
export RUSTC_BOOTSTRAP=1

cd crates/mldeploy-model/fuzz
mkdir -p "corpus/$TARGET" "seeds/$TARGET"
dict=()
if [ -f "$TARGET.dict" ]; then
    dict=("-dict=$TARGET.dict")
fi
log "running $TARGET for ${DURATION}s on $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//'))"
# shellcheck disable=SC2086 # FUZZ_ARGS is a list of flags.
cargo fuzz run "$TARGET" "corpus/$TARGET" "seeds/$TARGET" -- \
    -max_total_time="$DURATION" -print_final_stats=1 "${dict[@]}" ${FUZZ_ARGS:-}
log "corpus: $(find "corpus/$TARGET" -type f | wc -l) inputs in corpus/$TARGET"
