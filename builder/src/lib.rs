//! imgbuild: CloudSigma-native node images from recipes. See docs/imgbuild.md.

pub mod build;
pub mod cleanup;
pub mod cloud;
pub mod hostkey;
pub mod matrix;
pub mod naming;
pub mod phase;
pub mod plan;
pub mod progress;
pub mod recipe;
pub mod secrets;
pub mod transport;
