//go:build tools

// Package tools only exists so that `go mod tidy` keeps the dependencies of the node commands
// tests/kube/build.sh --kube-version v1.33.N builds from k8s.io/kubernetes: kubelet, kubeadm and
// kubectl, and kube-proxy, whose image tests/kube/addons.sh --kube-version v1.33.N builds (the
// rest of the node, containerd, runc, crictl, the CNI plugins and the other add-ons, is shared
// between versions).
package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-proxy"
	_ "k8s.io/kubernetes/cmd/kubeadm"
	_ "k8s.io/kubernetes/cmd/kubectl"
	_ "k8s.io/kubernetes/cmd/kubelet"
)
