//! Redaction of secrets in command lines before they are logged. The bootstrap data carries a
//! bootstrap token, CA cert hash and certificate key; none of them may reach a log or the status.

const SECRET_FLAGS: &[&str] = &[
    "--token",
    "--discovery-token",
    "--tls-bootstrap-token",
    "--discovery-token-ca-cert-hash",
    "--certificate-key",
    "--password",
    "--agent-token",
    "--server-token",
];

/// Redact a shell line word by word: values of secret flags (`--token X`, `--token=X`), env
/// assignments whose name mentions a token/password/secret/key, kubeadm bootstrap tokens
/// (`abcdef.0123456789abcdef`) and `sha256:<hex>` hashes anywhere.
pub fn redact_line(line: &str) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut redact_next = false;
    for word in line.split(' ') {
        if redact_next && !word.is_empty() {
            out.push("<redacted>".into());
            redact_next = false;
            continue;
        }
        let bare = word.trim_matches(|c| c == '\'' || c == '"');
        if SECRET_FLAGS.contains(&bare) {
            out.push(word.to_string());
            redact_next = true;
            continue;
        }
        if let Some((k, _)) = bare.split_once('=') {
            let kl = k.to_ascii_lowercase();
            if SECRET_FLAGS.contains(&k)
                || (!k.starts_with('-')
                    && ["token", "password", "secret", "key"]
                        .iter()
                        .any(|s| kl.contains(s)))
            {
                out.push(format!("{k}=<redacted>"));
                continue;
            }
        }
        if looks_secret(bare) {
            out.push("<redacted>".into());
            continue;
        }
        out.push(word.to_string());
    }
    out.join(" ")
}

fn looks_secret(w: &str) -> bool {
    if let Some(hex) = w.strip_prefix("sha256:") {
        return hex.len() >= 32 && hex.bytes().all(|b| b.is_ascii_hexdigit());
    }
    // kubeadm bootstrap token: [a-z0-9]{6}.[a-z0-9]{16}
    let b = w.as_bytes();
    b.len() == 23
        && b[6] == b'.'
        && b.iter()
            .enumerate()
            .all(|(i, c)| i == 6 || c.is_ascii_lowercase() || c.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_kubeadm_secrets() {
        let l = "kubeadm join 10.0.0.1:6443 --token abcdef.0123456789abcdef --discovery-token-ca-cert-hash sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef --certificate-key=deadbeef";
        let r = redact_line(l);
        assert!(!r.contains("abcdef.0123"), "{r}");
        assert!(!r.contains("0123456789abcdef0123"), "{r}");
        assert!(!r.contains("deadbeef"), "{r}");
        assert!(
            r.starts_with("kubeadm join 10.0.0.1:6443 --token <redacted>"),
            "{r}"
        );
        assert_eq!(
            redact_line("RKE2_TOKEN=s3cr3t sh install.sh"),
            "RKE2_TOKEN=<redacted> sh install.sh"
        );
        assert_eq!(
            redact_line("echo abcdef.0123456789abcdef"),
            "echo <redacted>"
        );
        assert_eq!(
            redact_line("kubeadm join --config /run/kubeadm/kubeadm-join-config.yaml"),
            "kubeadm join --config /run/kubeadm/kubeadm-join-config.yaml"
        );
    }
}
