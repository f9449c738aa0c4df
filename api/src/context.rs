//! Serial-port server-context client (CloudSigma's "cepko" protocol). Not yet implemented.
