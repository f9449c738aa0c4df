//! The Cluster API bootstrap data the loops give their nodes, as CABPK renders it.

/// Cluster API kubeadm bootstrap data for a worker as CABPK renders it (`## template: jinja`, the
/// JoinConfiguration in write_files, the join and the success marker in runcmd), with the given
/// join credentials, kubelet flags (name, value) beyond the provider-id, extra files
/// (path, mode, content) and our SSH key for the checks.
/// [`cabpk_worker_data`] for the loops whose `kubeadm` is the recording stub: placeholder join
/// credentials (nothing is joined), no extra flags or files.
pub fn stub_worker_data(pubkey: &str) -> String {
    cabpk_worker_data(
        "10.10.0.2:6443",
        "abcdef.0123456789abcdef",
        "sha256:5b5ea6b2e6c4f5d0e0e5b7f7f0c2f7a4d5e3a1b2c3d4e5f60718293a4b5c6d7e",
        &[],
        &[],
        pubkey,
    )
}

pub fn cabpk_worker_data(
    endpoint: &str,
    token: &str,
    ca_cert_hash: &str,
    kubelet_args: &[(&str, &str)],
    files: &[(&str, &str, &str)],
    pubkey: &str,
) -> String {
    let args: String = kubelet_args
        .iter()
        .map(|(n, v)| format!("        - name: {n}\n          value: {v}\n"))
        .collect();
    let files: String = files
        .iter()
        .map(|(path, mode, content)| {
            format!(
                "-   path: {path}\n    owner: root:root\n    permissions: '{mode}'\n    content: \"{}\"\n",
                content.replace('"', "\\\"")
            )
        })
        .collect();
    format!(
        r#"## template: jinja
#cloud-config

write_files:
-   path: /run/kubeadm/kubeadm-join-config.yaml
    owner: root:root
    permissions: '0640'
    content: |
      ---
      apiVersion: kubeadm.k8s.io/v1beta4
      discovery:
        bootstrapToken:
          apiServerEndpoint: {endpoint}
          caCertHashes:
          - {ca_cert_hash}
          token: {token}
      kind: JoinConfiguration
      nodeRegistration:
        criSocket: unix:///var/run/containerd/containerd.sock
        kubeletExtraArgs:
{args}        - name: provider-id
          value: cloudsigma://{{{{ ds.meta_data.instance_id }}}}
        name: '{{{{ ds.meta_data.local_hostname }}}}'
{files}-   path: /run/cluster-api/placeholder
    owner: root:root
    permissions: '0640'
    content: "This placeholder file is used to create the /run/cluster-api sub directory in a way that is compatible with both Linux and Windows (mkdir -p /run/cluster-api does not work with Windows)"
-   path: /home/debian/.ssh/authorized_keys
    owner: root:root
    permissions: '0644'
    content: "{pubkey}"
runcmd:
  - kubeadm join --config /run/kubeadm/kubeadm-join-config.yaml  && echo success > /run/cluster-api/bootstrap-success.complete
"#
    )
}

#[cfg(test)]
mod tests {
    /// The rendered data is what CABPK writes: args before the provider-id, extra files before the
    /// placeholder, quotes in file content escaped for the double-quoted YAML scalar.
    #[test]
    fn cabpk_worker_data_shape() {
        let d = super::cabpk_worker_data(
            "10.0.2.2:6443",
            "abcdef.0123456789abcdef",
            "sha256:00",
            &[("cloud-provider", "external")],
            &[("/etc/x.json", "0644", r#"{"a":"b"}"#)],
            "ssh-ed25519 AAAA k",
        );
        assert!(d.starts_with("## template: jinja\n#cloud-config\n"), "{d}");
        assert!(d.contains("        kubeletExtraArgs:\n        - name: cloud-provider\n          value: external\n        - name: provider-id\n          value: cloudsigma://{{ ds.meta_data.instance_id }}\n"), "{d}");
        assert!(d.contains("-   path: /etc/x.json\n    owner: root:root\n    permissions: '0644'\n    content: \"{\\\"a\\\":\\\"b\\\"}\"\n-   path: /run/cluster-api/placeholder\n"), "{d}");
        let plain = super::cabpk_worker_data("e:1", "t", "h", &[], &[], "k");
        assert!(
            plain.contains("        kubeletExtraArgs:\n        - name: provider-id\n"),
            "{plain}"
        );
        assert!(plain.contains("name: '{{ ds.meta_data.local_hostname }}'\n-   path: /run/cluster-api/placeholder\n"), "{plain}");
    }
}
