//go:build tools

// Package tools only exists so that `go mod tidy` keeps the dependencies of every command
// tests/kube/build.sh builds from k8s.io/kubernetes: the control plane (kube-apiserver,
// kube-controller-manager, kube-scheduler), the node (kubelet, kubeadm), kubectl and kube-proxy
// (its image is built by tests/kube/addons.sh).
package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-proxy"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubeadm"
	_ "k8s.io/kubernetes/cmd/kubelet"
	_ "k8s.io/kubernetes/cmd/kubectl"
)
