//! Async REST client for CloudSigma API 2.0. Not yet implemented.
