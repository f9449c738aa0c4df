#!/usr/bin/env bash
# Checks specific to the test image: the kubeadm stub is in place and records its calls.
set -euo pipefail
test -x /usr/bin/kubeadm
kubeadm version
grep -q "argv: version" /var/log/kubeadm-stub.log
# the build's own call must not look like a node's bootstrap to the e2e test
: > /var/log/kubeadm-stub.log
echo "kubeadm stub ok"
