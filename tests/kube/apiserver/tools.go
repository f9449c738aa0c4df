//go:build tools

// Package tools only exists so that `go mod tidy` keeps the kube-apiserver command's dependencies.
package tools

import _ "k8s.io/kubernetes/cmd/kube-apiserver"
