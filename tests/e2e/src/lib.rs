//! Cross-crate end-to-end tests live in tests/: `whole_loop` (the fast loop, with a recording
//! kubeadm stub), `real_node` (a real Kubernetes node, the controller as a host process) and
//! `in_cluster` (the same node, the controller installed with `kubectl apply -k`). This library
//! is their harness.

pub mod cluster;
pub mod control_plane;
pub mod harness;
pub mod image_cache;
pub mod kube_node;
