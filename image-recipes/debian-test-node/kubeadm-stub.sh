#!/bin/sh
# Recording kubeadm stub (test images only): Kubernetes packages cannot be fetched in the test
# environment, so this stands in for /usr/bin/kubeadm. It records its argv, the time, and every
# file passed with --config, then succeeds, so the whole-loop test can assert exactly what the
# bootstrap agent asked kubeadm to do. Log: /var/log/kubeadm-stub.log
# The uptime of the exec first, with the shell's own `read` (no process): the boot bench and
# the stub loop measure the agent up to this moment, and a `date` or `cut` started before it
# would add its own start (~0.1-0.3 s in a TCG guest early in boot) to every figure.
read -r uptime _ </proc/uptime
log=/var/log/kubeadm-stub.log
{
  echo "=== kubeadm stub $(date -u +%Y-%m-%dT%H:%M:%S.%NZ) uptime=$uptime"
  echo "argv: $*"
  prev=""
  for a in "$@"; do
    case "$prev" in
      --config) cfg="$a" ;;
      *) case "$a" in --config=*) cfg="${a#--config=}" ;; esac ;;
    esac
    if [ -n "${cfg:-}" ]; then
      echo "--- config $cfg"
      cat "$cfg" 2>&1 || echo "(unreadable)"
      echo "--- end config"
      cfg=""
    fi
    prev="$a"
  done
} >>"$log" 2>&1
case "${1:-}" in
  version) echo "kubeadm version: &version.Info{GitVersion:\"v0.0.0-stub\"}" ;;
esac
exit 0
