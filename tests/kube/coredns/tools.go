//go:build tools

// Package tools keeps the dependencies of CoreDNS, which tests/kube/addons.sh builds.
package tools

import _ "github.com/coredns/coredns"
