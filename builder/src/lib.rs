//! imgbuild: CloudSigma-native node images from recipes. See docs/imgbuild.md.

pub mod build;
pub mod cleanup;
pub mod cloud;
pub mod progress;
pub mod recipe;
pub mod secrets;
pub mod transport;
