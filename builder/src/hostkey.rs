//! The builder server's SSH host key, made by imgbuild for each build so that the first SSH
//! contact is already verified (issue 21 item 4): with trust-on-first-use, whoever answered first
//! on the build server's address would have received every recipe secret.
//!
//! The pair goes to the server in its cloud-init user-data (meta `cloudinit-user-data`, read by
//! cloud-init's CloudSigma datasource, `cloudinit/sources/DataSourceCloudSigma.py`): cloud-init's
//! cc_ssh module (`cloudinit/config/cc_ssh.py`) deletes the image's host keys
//! (`ssh_deletekeys`, default true) and writes each `ssh_keys` entry to its file —
//! `ed25519_private` → `/etc/ssh/ssh_host_ed25519_key`, `ed25519_public` → `….pub` — and, when
//! `ssh_keys` is given, generates no other key. cloud-init.service runs `Before=sshd.service`,
//! so sshd starts with this key. imgbuild's known_hosts for the build holds exactly the public
//! half, and ssh runs with `StrictHostKeyChecking=yes`.
//!
//! The private half is a secret of the build: never printed (`Debug` is redacted), zeroed when
//! dropped, and gone with the server (deleted at the end of every build) and from the guest at
//! clean-guest (host keys and cloud-init's copies of the user-data are removed).

use ssh_key::{Algorithm, LineEnding, PrivateKey};
use zeroize::Zeroizing;

/// The server meta key cloud-init's CloudSigma datasource reads the user-data from.
pub const USER_DATA_META: &str = "cloudinit-user-data";

pub struct HostKey {
    private: Zeroizing<String>,
    public: String,
}

impl std::fmt::Debug for HostKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostKey")
            .field("public", &self.public)
            .field("private", &"<redacted>")
            .finish()
    }
}

impl HostKey {
    /// A new ed25519 pair (microseconds: no need to leave the async runtime).
    pub fn generate() -> Result<HostKey, String> {
        let key = PrivateKey::random(&mut rand::rngs::OsRng, Algorithm::Ed25519)
            .map_err(|e| format!("generating the builder server's ed25519 host key failed: {e}"))?;
        let private = key
            .to_openssh(LineEnding::LF)
            .map_err(|e| format!("encoding the builder server's host key failed: {e}"))?;
        let public = key
            .public_key()
            .to_openssh()
            .map_err(|e| format!("encoding the builder server's public host key failed: {e}"))?;
        Ok(HostKey {
            private: Zeroizing::new(private.to_string()),
            public,
        })
    }

    /// The public key as one OpenSSH line (`ssh-ed25519 AAAA…`), for known_hosts.
    pub fn public(&self) -> &str {
        &self.public
    }

    /// The cloud-config that installs this pair as the server's only host key.
    pub fn user_data(&self) -> Zeroizing<String> {
        let mut s = String::from("#cloud-config\nssh_deletekeys: true\nssh_keys:\n");
        s.push_str("  ed25519_private: |\n");
        for line in self.private.lines() {
            s.push_str("    ");
            s.push_str(line);
            s.push('\n');
        }
        s.push_str(&format!("  ed25519_public: {}\n", self.public));
        Zeroizing::new(s)
    }

    /// The bootstrap data of a `--verify` server, for the image's agent (cloud-init is disabled
    /// in the image): a marker file that proves the agent applied data from the server context,
    /// and this pair as sshd's only host key — under its own name, so that the image's
    /// first-boot host key generation (`ssh_host_*`, checked by the recipe) stays visible — with
    /// sshd reloaded to use it. It joins nothing.
    pub fn verify_user_data(&self, marker_path: &str, marker: &str) -> Zeroizing<String> {
        let mut s = String::from("#cloud-config\nwrite_files:\n");
        s.push_str(&format!(
            "  - path: {marker_path}\n    permissions: '0644'\n    content: {marker}\n"
        ));
        s.push_str(&format!(
            "  - path: {VERIFY_HOST_KEY}\n    permissions: '0600'\n    content: |\n"
        ));
        for line in self.private.lines() {
            s.push_str("      ");
            s.push_str(line);
            s.push('\n');
        }
        s.push_str(&format!(
            "  - path: /etc/ssh/sshd_config.d/00-imgbuild-verify.conf\n    permissions: '0644'\n    content: |\n      HostKey {VERIFY_HOST_KEY}\n"
        ));
        // the last command as Cluster API's kubeadm bootstrap data ends (CABPK appends it): the
        // image's agent reports success only when the data wrote this marker
        s.push_str(&format!(
            "runcmd:\n  - systemctl reload ssh || systemctl reload sshd\n  - mkdir -p {dir} && echo success > {CAPI_SUCCESS_MARKER}\n",
            dir = CAPI_SUCCESS_MARKER.rsplit_once('/').map_or("/run", |(d, _)| d)
        ));
        Zeroizing::new(s)
    }
}

/// The file Cluster API's kubeadm bootstrap data writes when its commands succeeded; the node
/// agent (agent/src/paths.rs `MARKER`) fails the bootstrap when the data did not write it.
pub const CAPI_SUCCESS_MARKER: &str = "/run/cluster-api/bootstrap-success.complete";

/// Where a `--verify` server keeps the host key imgbuild gave it.
pub const VERIFY_HOST_KEY: &str = "/etc/ssh/imgbuild_verify_host_key";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_data_carries_the_pair_and_debug_hides_the_private_half() {
        let k = HostKey::generate().unwrap();
        assert!(k.public().starts_with("ssh-ed25519 "));
        let ud = k.user_data();
        assert!(ud.starts_with("#cloud-config\n"));
        // what cloud-init reads: the YAML's ssh_keys map, the private key byte for byte
        let v: serde_yaml::Value = serde_yaml::from_str(&ud).unwrap();
        let keys = &v["ssh_keys"];
        assert_eq!(keys["ed25519_public"].as_str(), Some(k.public()));
        let private = keys["ed25519_private"].as_str().unwrap();
        assert_eq!(private, k.private.as_str());
        let parsed = PrivateKey::from_openssh(private).unwrap();
        assert_eq!(parsed.public_key().to_openssh().unwrap(), k.public());
        let dbg = format!("{k:?}");
        assert!(
            !dbg.contains("PRIVATE KEY") && dbg.contains("<redacted>"),
            "{dbg}"
        );
        // a new key each time
        assert_ne!(HostKey::generate().unwrap().public(), k.public());
    }

    /// The verify data ends as Cluster API's does: without the success marker the image's agent
    /// reports `failure` (found on a real VM: the recipe check on bootstrap.json failed).
    #[test]
    fn verify_user_data_writes_the_marker_the_agent_requires() {
        let k = HostKey::generate().unwrap();
        let ud = k.verify_user_data("/var/lib/x/marker", "m");
        let v: serde_yaml::Value = serde_yaml::from_str(&ud).unwrap();
        let runcmd: Vec<&str> = v["runcmd"]
            .as_sequence()
            .unwrap()
            .iter()
            .filter_map(|c| c.as_str())
            .collect();
        assert_eq!(
            runcmd.last().copied(),
            Some("mkdir -p /run/cluster-api && echo success > /run/cluster-api/bootstrap-success.complete")
        );
        assert!(runcmd[0].contains("systemctl reload ssh"));
        let files = v["write_files"].as_sequence().unwrap();
        assert_eq!(files[0]["path"].as_str(), Some("/var/lib/x/marker"));
    }
}
