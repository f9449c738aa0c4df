#!/usr/bin/env bash
# One node-image build in CI: what examples/ci/github-actions.yml and gitlab-ci.yml run (docs/ci.md).
#
#   examples/ci/build-image.sh [RECIPE]          (default ubuntu-k8s)
#
# Environment:
#   AGENT_BINARY         the static cloudsigma-agent this pipeline built (required): the image
#                        embeds exactly it, and its sha256 is part of the image's fingerprint
#   CLOUDSIGMA_API_URL   or CLOUDSIGMA_REGION: where to build
#   CLOUDSIGMA_USERNAME, CLOUDSIGMA_PASSWORD   CI secrets; the password is handed over by name
#                        (--password-from-env), never as an argument, and never printed
#   IMGBUILD             the imgbuild binary (default: imgbuild on PATH)
#   IMAGE_MANIFEST       where the JSON manifest goes (default image.json)
#   IMGBUILD_ARGS        extra imgbuild flags, whitespace-separated (e.g. --var kubernetes_version=1.34.2,
#                        or a version matrix: --matrix kubernetes_version=1.33.5,1.34.1 --jobs 2)
#
# Exit status: imgbuild's (0 built or cached, 1 failed and cleaned up, 2 usage/config/recipe error,
# 3 failed with leftovers: run `imgbuild clean`, 4 a matrix with some combinations failed (each
# cleaned up; the manifest is kept and says which), 143 cancelled by SIGTERM after cleanup).
# stdout: the image uuid (a matrix: one drive uuid per built or reused combination). A cancelled
# job (SIGTERM or SIGINT to this script) is passed on to imgbuild as one SIGTERM and waited for,
# so its cleanup runs to the end instead of being cut off.
set -euo pipefail
recipe=${1:-ubuntu-k8s}
imgbuild=${IMGBUILD:-imgbuild}
manifest=${IMAGE_MANIFEST:-image.json}
# Missing inputs are configuration errors: exit 2, as imgbuild's own.
for v in AGENT_BINARY CLOUDSIGMA_USERNAME CLOUDSIGMA_PASSWORD; do
    if [ -z "${!v:-}" ]; then
        echo "build-image.sh: $v is not set (AGENT_BINARY: the agent this pipeline built; the others: CI secrets)" >&2
        exit 2
    fi
done
# Absolute, so that the log names the very file (imgbuild takes a relative --var path from the
# current directory as well).
AGENT_BINARY=$(realpath -m "$AGENT_BINARY")
# shellcheck disable=SC2206 # IMGBUILD_ARGS is a list of flags
extra=(${IMGBUILD_ARGS:-})

"$imgbuild" --version >&2
# Recipe errors fail fast (exit 2) before anything is created.
"$imgbuild" validate "$recipe" --var "agent_binary=$AGENT_BINARY" >&2

# The build runs in the background so that this shell can forward a cancellation: bash defers a
# trapped signal until its foreground child exits, and the runner may kill the job soon after.
"$imgbuild" "$recipe" --plain --output json \
    --username "$CLOUDSIGMA_USERNAME" --password-from-env CLOUDSIGMA_PASSWORD \
    --var "agent_binary=$AGENT_BINARY" "${extra[@]}" > "$manifest.tmp" &
child=$!
# Forward the first signal only: runners escalate (GitHub: SIGINT, then SIGTERM seconds later),
# and a third signal would make imgbuild abandon the rest of its cleanup.
forwarded=
forward() {
    if [ -z "$forwarded" ]; then
        forwarded=1
        kill -TERM "$child" 2>/dev/null || true
    fi
}
trap forward TERM INT
rc=0
wait "$child" || rc=$?
# A trapped signal ends `wait` early (rc > 128): wait on until imgbuild has cleaned up and exited.
while kill -0 "$child" 2>/dev/null; do
    rc=0
    wait "$child" || rc=$?
done
trap - TERM INT
matrix=
grep -q '"combinations"' "$manifest.tmp" 2>/dev/null && matrix=1
# a matrix's manifest is kept when some combinations failed (exit 4): it says which
if [ "$rc" -ne 0 ] && ! { [ "$rc" -eq 4 ] && [ -n "$matrix" ]; }; then
    rm -f "$manifest.tmp"
    echo "build-image.sh: imgbuild exited $rc" >&2
    exit "$rc"
fi
mv "$manifest.tmp" "$manifest"
if [ -n "$matrix" ]; then
    # jq-free: each combination's image drive, in the manifest's order
    sed -n 's/^ *"drive_uuid": *"\([^"]*\)".*/\1/p' "$manifest"
    [ "$rc" -eq 0 ] || echo "build-image.sh: imgbuild exited $rc (some combinations failed; see $manifest)" >&2
    exit "$rc"
fi
# jq-free: the uuid is the manifest's first field.
sed -n 's/.*"image_uuid": *"\([^"]*\)".*/\1/p' "$manifest" | head -n 1
