#!/usr/bin/env bash
# Enable the CloudSigma bootstrap agent (uploaded by earlier steps) and neutralise cloud-init.
#
# Choice (documented in docs/imgbuild.md): cloud-init is DISABLED with
# /etc/cloud/cloud-init.disabled rather than removed. The agent reads the server context itself
# and does the bootstrap; a running cloud-init would race it on the same user data (the seed's
# problem). Keeping the package lets an operator re-enable it by deleting the file.
set -euo pipefail

test -x /usr/local/bin/cloudsigma-agent
test -f /etc/systemd/system/cloudsigma-bootstrap.service

install -d -m 0755 /var/lib/cloudsigma
systemctl daemon-reload
systemctl enable cloudsigma-bootstrap.service

install -d -m 0755 /etc/cloud
touch /etc/cloud/cloud-init.disabled

# Host keys are removed by sysprep; without cloud-init something must regenerate them before
# sshd starts on the first boot of every node.
cat > /etc/systemd/system/imgbuild-ssh-hostkeys.service <<'UNIT'
[Unit]
Description=Generate missing SSH host keys (image built by imgbuild)
Before=ssh.service sshd.service ssh.socket
ConditionPathExists=!/etc/ssh/ssh_host_ed25519_key

[Service]
Type=oneshot
ExecStart=/usr/bin/ssh-keygen -A

[Install]
WantedBy=multi-user.target
UNIT
systemctl enable imgbuild-ssh-hostkeys.service

/usr/local/bin/cloudsigma-agent --version || true
echo "agent enabled, cloud-init disabled"
