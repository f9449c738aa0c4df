//go:build tools

// Package tools only exists so that `go mod tidy` keeps etcd's dependencies.
package tools

import _ "go.etcd.io/etcd/server/v3"
