//! Cross-crate end-to-end tests live in tests/: `cluster` (the demo: two workers on a VLAN with a
//! real CNI, the controller as a host process), `in_cluster` (one node, the controller installed
//! with `kubectl apply -k`), `first_boot` (a grown clone with its own identity) and `whole_loop`
//! (the fast loop, with a recording kubeadm stub). This library is their harness: `harness` (SSH,
//! the emulator's API, builds), `control_plane` (kubeadm's control plane as host processes),
//! `kube_node` (what the Kubernetes loops share), `cluster` (the production topology) and
//! `image_cache` (one node-image build for all loops); `image_matrix` (imgbuild's version matrix
//! over two emulated locations, the base layer and `--verify`: the `image_matrix` loop and the
//! ignored `image_bench`).

pub mod bootstrap_data;
pub mod builds;
pub mod cloud;
pub mod cluster;
pub mod control_plane;
pub mod disk;
pub mod harness;
pub mod image_cache;
pub mod image_matrix;
pub mod kube_node;
pub mod ssh;
