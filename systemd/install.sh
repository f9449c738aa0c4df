#!/bin/sh
# Install the agent and its unit into a root file system (an image being built, or / on a node).
# usage: systemd/install.sh BINARY [DESTDIR]
#   BINARY   the static cloudsigma-agent (docs/agent.md, "Static build")
#   DESTDIR  root to install into (default /); works offline via `systemctl --root`.
set -eu
bin=${1:?usage: install.sh BINARY [DESTDIR]}
dest=${2:-/}
here=$(dirname "$0")
install -D -m 0755 "$bin" "$dest/usr/local/bin/cloudsigma-agent"
install -D -m 0644 "$here/cloudsigma-bootstrap.service" "$dest/etc/systemd/system/cloudsigma-bootstrap.service"
install -d -m 0755 "$dest/var/lib/cloudsigma-agent" "$dest/etc/cloud"
if [ -f "$here/../docs/agent.md" ]; then
    install -D -m 0644 "$here/../docs/agent.md" "$dest/usr/share/doc/cloudsigma-agent/agent.md"
fi
# cloud-init would run the same user data from the same port: keep it installed but disabled.
touch "$dest/etc/cloud/cloud-init.disabled"
if command -v systemctl >/dev/null 2>&1; then
    systemctl --root="$dest" enable cloudsigma-bootstrap.service
    # No login prompt on the context port.
    systemctl --root="$dest" mask serial-getty@ttyS1.service
else
    install -d "$dest/etc/systemd/system/multi-user.target.wants"
    ln -sf /etc/systemd/system/cloudsigma-bootstrap.service \
        "$dest/etc/systemd/system/multi-user.target.wants/cloudsigma-bootstrap.service"
    ln -sf /dev/null "$dest/etc/systemd/system/serial-getty@ttyS1.service"
fi
echo "installed cloudsigma-agent and cloudsigma-bootstrap.service into $dest"
