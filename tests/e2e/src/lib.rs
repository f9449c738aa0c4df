//! Cross-crate end-to-end tests live in tests/: `whole_loop` (the fast loop, with a recording
//! kubeadm stub) and `real_node` (a real Kubernetes node). This library is their harness.

pub mod control_plane;
pub mod harness;
