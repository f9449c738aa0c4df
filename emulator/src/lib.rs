//! CloudSigma emulator. Not yet implemented.
