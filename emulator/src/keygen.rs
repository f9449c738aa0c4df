//! SSH key pairs the way `/keypairs/` makes and describes them.
//!
//! [V docs keypairs.rst] "If you omit the public and private keys when creating a keypair, a new
//! rsa keypair will be automatically generated"; [V dumps/request_autogen_keypair_create]
//! `"algorithm_type": "rsa"  # or "ed25519"`; [V dumps/response_autogen_keypair_create] the RSA
//! private key is PKCS#1 PEM (`-----BEGIN RSA PRIVATE KEY-----`), the public key an OpenSSH line
//! without comment, and `fingerprint` the MD5 of the public key blob as colon hex (checked
//! against both dumps: response_autogen_keypair_create and response_pub_key_only_keypair_create).
//! [D] RSA keys are 2048 bits (the dump's key is); an ed25519 private key is in the OpenSSH
//! format (`-----BEGIN OPENSSH PRIVATE KEY-----`, what `ssh-keygen -t ed25519` writes; no dump
//! shows one).
//!
//! A private key never goes to a log or an error message: the errors here name the algorithm and
//! what failed, never key material.

use md5::{Digest, Md5};
use rsa::pkcs1::EncodeRsaPrivateKey;
use ssh_key::{public::KeyData, LineEnding, PublicKey};

/// A freshly made pair: the OpenSSH public line and the PEM private key.
pub struct Pair {
    pub public_key: String,
    pub private_key: String,
}

/// The algorithms `algorithm_type` may name ([V dumps/request_autogen_keypair_create]).
pub const ALGORITHMS: &[&str] = &["rsa", "ed25519"];

/// RSA modulus size in bits ([D], as the dump's key).
const RSA_BITS: usize = 2048;

/// Why no pair was made: the caller answers an unknown algorithm as the client's mistake (400)
/// and a failure as the emulator's (500).
#[derive(Debug, thiserror::Error)]
pub enum KeygenError {
    #[error("algorithm_type {0:?} is not one of {list}", list = ALGORITHMS.join(", "))]
    UnknownAlgorithm(String),
    /// `what` failed (e.g. "generating an RSA key"); `detail` is the library's message, never
    /// key material.
    #[error("{what} failed: {detail}")]
    Failed { what: &'static str, detail: String },
}

fn failed(what: &'static str) -> impl FnOnce(String) -> KeygenError {
    move |detail| KeygenError::Failed { what, detail }
}

/// [`generate`] on tokio's blocking pool: an RSA key takes CPU time (a fraction of a second
/// optimised, seconds without), which would stall every other request and timer of the runtime
/// if made on it.
pub async fn generate_blocking(algorithm: &str) -> Result<Pair, KeygenError> {
    let algorithm = algorithm.to_string();
    tokio::task::spawn_blocking(move || generate(&algorithm))
        .await
        .map_err(|e| failed("the key generation task")(e.to_string()))?
}

/// Makes a pair of `algorithm` (`rsa` or `ed25519`; [`ALGORITHMS`]). Blocks for the time the
/// key takes: from async code call [`generate_blocking`].
pub fn generate(algorithm: &str) -> Result<Pair, KeygenError> {
    let mut rng = rand::rngs::OsRng;
    match algorithm {
        "ed25519" => {
            let key = ssh_key::PrivateKey::random(&mut rng, ssh_key::Algorithm::Ed25519)
                .map_err(|e| failed("generating an ed25519 key")(e.to_string()))?;
            let private_key = key
                .to_openssh(LineEnding::LF)
                .map_err(|e| failed("encoding the ed25519 private key")(e.to_string()))?
                .to_string();
            let public_key = key
                .public_key()
                .to_openssh()
                .map_err(|e| failed("encoding the ed25519 public key")(e.to_string()))?;
            Ok(Pair {
                public_key,
                private_key,
            })
        }
        "rsa" => {
            let key = rsa::RsaPrivateKey::new(&mut rng, RSA_BITS)
                .map_err(|e| failed("generating an RSA key")(e.to_string()))?;
            let private_key = key
                .to_pkcs1_pem(rsa::pkcs1::LineEnding::LF)
                .map_err(|e| failed("encoding the RSA private key")(e.to_string()))?
                .to_string();
            let public = ssh_key::public::RsaPublicKey::try_from(key.to_public_key())
                .map_err(|e| failed("converting the RSA public key")(e.to_string()))?;
            let public_key = PublicKey::new(KeyData::Rsa(public), "")
                .to_openssh()
                .map_err(|e| failed("encoding the RSA public key")(e.to_string()))?;
            Ok(Pair {
                public_key,
                private_key,
            })
        }
        other => Err(KeygenError::UnknownAlgorithm(other.to_string())),
    }
}

/// `aa:bb:…` — MD5 of the base64-decoded key blob of an OpenSSH public key line (the classic
/// `ssh-keygen -l -E md5` form, without its `MD5:` prefix), or `None` when the line has no
/// decodable blob.
pub fn fingerprint(public_key: &str) -> Option<String> {
    use base64::Engine;
    let blob = public_key.split_whitespace().nth(1)?;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(blob)
        .ok()?;
    let digest = Md5::digest(&bytes);
    Some(
        digest
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The public keys and fingerprints of the docs' dumps response_autogen_keypair_create and
    /// response_pub_key_only_keypair_create.
    #[test]
    fn fingerprint_matches_the_docs_dumps() {
        let autogen = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQCzjTryYVIZObTbmhqdVKmK3JmOL/ZLcDSNElbWS7jtx36lEGWP2TZzbMLjM8EvYR5jxE0ys39GosgFTQuwf0tnqbtB4VXCDYfRJZ2HiOgXPNwtGSTyyG/HniXboCFpzU7CHzIRGfK6bWZujhUikmMFTHZd3oe6RcMi8Ftb9/F7co7usws1K2TEAJK5GYZf5Sm0xzUzQHfB2keYYSwuImftGzUIzyBBLqIjzwTLB/66x1oczN/zDayMLvCaUp9g0pTCdChQIyHCjrjokJ0Trvbnzg5d2Yb5qo72s1zGFu2JWKiMuuRxsu2wch2fiVS9Tl07H+JQv4fm9G90fBOkdlpj";
        assert_eq!(
            fingerprint(autogen).unwrap(),
            "99:1e:71:ea:d1:43:80:55:14:ca:27:5c:64:69:3b:10"
        );
        let pub_only = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAAAgQDFGtYDl+/Oua9uBXqwcbE84QUBBbDdMMzaZ6MAGg1Bmus9VEW0P8kK6npZ0SaUnB2xRrBNwCv0Q0uZBJ70UicgsrhBjCXIVa7K6yQYrFzMxfN8saNAjJvGDdWGSvcMxJdpYwXiOQhFan36eJCCwQjni7I538Ii9chPD8/tyJcBIw== a comment";
        assert_eq!(
            fingerprint(pub_only).unwrap(),
            "e8:ee:43:72:38:09:6d:1e:8e:46:9e:76:80:a3:0a:01"
        );
        assert_eq!(fingerprint("ssh-rsa !!!"), None);
    }

    #[test]
    fn ed25519_pair_is_a_matching_openssh_pair() {
        let p = generate("ed25519").unwrap();
        assert!(
            p.public_key.starts_with("ssh-ed25519 AAAA"),
            "{}",
            p.public_key
        );
        assert!(p
            .private_key
            .starts_with("-----BEGIN OPENSSH PRIVATE KEY-----"));
        let private = ssh_key::PrivateKey::from_openssh(&p.private_key).unwrap();
        assert_eq!(
            private.public_key().to_openssh().unwrap(),
            p.public_key,
            "the private key belongs to the public one"
        );
        // two calls make two different keys
        assert_ne!(generate("ed25519").unwrap().public_key, p.public_key);
    }

    #[test]
    fn rsa_pair_is_pkcs1_pem_and_matches() {
        use rsa::pkcs1::DecodeRsaPrivateKey;
        let p = generate("rsa").unwrap();
        assert!(p.public_key.starts_with("ssh-rsa AAAA"), "{}", p.public_key);
        assert!(p.private_key.starts_with("-----BEGIN RSA PRIVATE KEY-----"));
        let private = rsa::RsaPrivateKey::from_pkcs1_pem(&p.private_key).unwrap();
        let public = ssh_key::public::RsaPublicKey::try_from(private.to_public_key()).unwrap();
        assert_eq!(
            PublicKey::new(KeyData::Rsa(public), "")
                .to_openssh()
                .unwrap(),
            p.public_key
        );
        assert_eq!(rsa::traits::PublicKeyParts::size(&private) * 8, RSA_BITS);
    }

    #[test]
    fn unknown_algorithm_is_refused_by_name() {
        let e = generate("dsa").err().unwrap();
        assert!(
            matches!(&e, KeygenError::UnknownAlgorithm(a) if a == "dsa"),
            "{e:?}"
        );
        let e = e.to_string();
        assert!(e.contains("\"dsa\"") && e.contains("rsa, ed25519"), "{e}");
    }
}
