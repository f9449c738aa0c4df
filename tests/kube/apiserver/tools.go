//go:build tools

// Package tools only exists so that `go mod tidy` keeps the dependencies of the commands
// tests/kube/build.sh builds: kube-apiserver, and kubectl (for kustomize and the RBAC checks).
package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kubectl"
)
