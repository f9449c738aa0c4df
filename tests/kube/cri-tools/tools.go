//go:build tools

// Package tools keeps the dependencies of crictl, which tests/kube/build.sh builds.
package tools

import _ "sigs.k8s.io/cri-tools/cmd/crictl"
