//go:build tools

// Package tools keeps the dependencies of the flannel CNI plugin tests/kube/addons.sh builds.
package tools

import _ "github.com/containernetworking/plugins/plugins/meta/flannel"
