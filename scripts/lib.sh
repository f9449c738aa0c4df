# shellcheck shell=bash
# Sourced by the project's scripts: the rules they would otherwise each write again.

# Where slow builds are cached, outside the clone: $CLOUDSIGMA_K8S_CACHE, empty or unset meaning
# ~/.cache/cloudsigma-k8s (the same rule as test-support's cache_dir() in Rust).
CLOUDSIGMA_K8S_CACHE=${CLOUDSIGMA_K8S_CACHE:-$HOME/.cache/cloudsigma-k8s}
export CLOUDSIGMA_K8S_CACHE

# The release target: glibc linked in (crt-static), so binaries run on any x86_64 Linux and in an
# image without libc.
STATIC_TRIPLE=x86_64-unknown-linux-gnu

# static_build PACKAGE:BIN...: release builds for $STATIC_TRIPLE into $CARGO_TARGET_DIR (or
# target/). With --target, RUSTFLAGS reaches only the target's crates, not build scripts and
# proc-macros (which must stay dynamic).
static_build() {
    local args=() pb
    for pb in "$@"; do args+=(-p "${pb%%:*}" --bin "${pb#*:}"); done
    RUSTFLAGS='-C target-feature=+crt-static' \
        cargo build --release --locked --target "$STATIC_TRIPLE" "${args[@]}" >&2
}

# static_bin BIN: where static_build put it.
static_bin() {
    echo "${CARGO_TARGET_DIR:-target}/$STATIC_TRIPLE/release/$1"
}

# check_static FILE: static for real (no program interpreter, no shared library) or a message and
# status 1.
check_static() {
    if readelf -lW "$1" | grep -q INTERP || readelf -dW "$1" | grep -q '(NEEDED)'; then
        echo "$1 is dynamically linked; a static binary is needed (built with static_build)" >&2
        return 1
    fi
}
