# shellcheck shell=bash
# Sourced by tests/kube/build.sh and tests/kube/addons.sh: one cached `go build`.
# Needs $cache (the cache dir) and the Go environment those scripts set.
#
# go_build OUT NAME MODULE_DIR PACKAGE VERSION LDFLAGS [SRC_DIR [EXTRA...]]
#   builds PACKAGE of the wrapper module MODULE_DIR (inside SRC_DIR when given: a patched copy of a
#   module) to OUT/NAME, unless the stamp says this exact input was built: the version, the
#   wrapper's go.mod and go.sum, the EXTRA files (e.g. the script that patches SRC_DIR) and the
#   ldflags. Stamps live apart from the outputs (node-artifacts/ is uploaded into the image as it
#   is); the binary is renamed into place, so a half-written one is never picked up.
go_build() {
    local out=$1 name=$2 dir=$3 pkg=$4 version=$5 ldflags=$6 src=${7:-$3}
    local extra=("${@:8}")
    local who="tests/kube/${0##*/}"
    : "${cache:?go_build needs \$cache, the cache dir}"
    local stamp="$cache/stamps/${out#"$cache"/}/$name.stamp"
    mkdir -p "$out" "${stamp%/*}"
    # go.sum is committed; tidy only fills it in when it is missing (first creation).
    if [[ ! -s "$dir/go.sum" ]]; then (cd "$dir" && go mod tidy); fi
    local stamp_want
    stamp_want="$version $(cat "$dir/go.mod" "$dir/go.sum" "${extra[@]}" | sha256sum | cut -d' ' -f1) $ldflags"
    if [[ -x "$out/$name" && -f "$stamp" && "$(cat "$stamp")" == "$stamp_want" ]]; then
        echo "$who: $name $version cached in $out"
        return 0
    fi
    echo "$who: building $name $version (cold: minutes) ..."
    local start=$SECONDS
    (cd "$src" && go build -trimpath -ldflags "$ldflags" -o "$out/.$name.tmp" "$pkg")
    mv -f "$out/.$name.tmp" "$out/$name"
    printf '%s' "$stamp_want" > "$stamp.tmp" && mv -f "$stamp.tmp" "$stamp"
    echo "$who: built $name in $((SECONDS - start)) s"
}
