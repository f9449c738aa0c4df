// Test-only wrapper module: pins and verifies (go.sum) the flannel v0.28.10 module that
// tests/kube/addons.sh downloads with `go mod download`, copies, patches (two backends emptied:
// see there) and builds with flannel's own go.mod and go.sum. So only flannel itself is listed.
module cloudsigma.test/kube/flannel

go 1.26.0

require github.com/flannel-io/flannel v0.28.10
