//! The device key in a TPM 2.0 (`docs/PROTOCOL.md` §15.2), through `tss-esapi` over the
//! system's `libtss2`.
//!
//! The key is a *primary* key of the owner (storage) hierarchy made from a fixed template, so
//! the TPM derives it from its owner seed each time: nothing is stored on disk, and the same
//! key comes back after the client's files are wiped or the OS is reinstalled (until the TPM
//! is cleared, which changes the seed). The private part never leaves the TPM; the client
//! hashes the transcript and the TPM signs the digest (ECDSA, SHA-256).
use std::str::FromStr as _;

use tss_esapi::{
    Context, TctiNameConf,
    attributes::ObjectAttributesBuilder,
    constants::tss::{TPM2_RH_NULL, TPM2_ST_HASHCHECK},
    handles::KeyHandle,
    interface_types::{
        algorithm::{HashingAlgorithm, PublicAlgorithm},
        ecc::EccCurve,
        resource_handles::Hierarchy,
    },
    structures::{
        Digest, EccParameter, EccPoint, EccScheme, HashScheme, HashcheckTicket, Public,
        PublicBuilder, PublicEccParametersBuilder, Signature, SignatureScheme,
    },
    tss2_esys::TPMT_TK_HASHCHECK,
};

use crate::device::{
    DEVICE_SIGNATURE_LEN, DeviceKeyError, DevicePublicKey, DeviceSignError, DeviceSigner,
    TPM_TEMPLATE_UNIQUE, signature_from_parts,
};

/// The TCTI used when the profile names none: the kernel's TPM resource manager.
pub const DEFAULT_TCTI: &str = "device:/dev/tpmrm0";

/// The TPM could not be reached or refused to make or use the key.
#[derive(Debug, thiserror::Error)]
pub enum TpmError {
    /// The TCTI string does not parse (`device:/dev/tpmrm0`, `swtpm:host=…,port=…`,
    /// `mssim:…`, `tabrmd:…`).
    #[error("TCTI {tcti:?}: {source}")]
    Tcti {
        /// The string given.
        tcti: String,
        /// Why.
        source: tss_esapi::Error,
    },
    /// A TPM command failed.
    #[error("TPM {what}: {source}")]
    Command {
        /// Which step.
        what: &'static str,
        /// The TSS error.
        source: tss_esapi::Error,
    },
    /// The TPM returned a key that is not a P-256 point.
    #[error("the TPM's key is unusable: {0}")]
    Key(#[from] DeviceKeyError),
    /// The TPM returned something else than an ECC key.
    #[error("the TPM returned a key of another type")]
    WrongKeyType,
}

impl From<TpmError> for DeviceSignError {
    fn from(err: TpmError) -> Self {
        DeviceSignError::Tpm(err.to_string())
    }
}

fn command(what: &'static str) -> impl FnOnce(tss_esapi::Error) -> TpmError {
    move |source| TpmError::Command { what, source }
}

/// The fixed template of the device key (`docs/PROTOCOL.md` §15.2): ECC NIST P-256, name
/// algorithm SHA-256, attributes fixedTPM | fixedParent | sensitiveDataOrigin | userWithAuth
/// | sign (not restricted, not decrypt), scheme ECDSA-SHA256, no KDF, empty auth and policy,
/// `unique.x` = "xdpgate-device-v1" and `unique.y` empty.
pub fn device_key_template() -> Result<Public, tss_esapi::Error> {
    let attributes = ObjectAttributesBuilder::new()
        .with_fixed_tpm(true)
        .with_fixed_parent(true)
        .with_sensitive_data_origin(true)
        .with_user_with_auth(true)
        .with_sign_encrypt(true)
        .with_decrypt(false)
        .with_restricted(false)
        .build()?;
    let ecc = PublicEccParametersBuilder::new_unrestricted_signing_key(
        EccScheme::EcDsa(HashScheme::new(HashingAlgorithm::Sha256)),
        EccCurve::NistP256,
    )
    .build()?;
    PublicBuilder::new()
        .with_public_algorithm(PublicAlgorithm::Ecc)
        .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
        .with_object_attributes(attributes)
        .with_ecc_parameters(ecc)
        .with_ecc_unique_identifier(EccPoint::new(
            EccParameter::try_from(TPM_TEMPLATE_UNIQUE.to_vec())?,
            EccParameter::default(),
        ))
        .build()
}

/// The device key, made (again) in the TPM and held loaded while this value lives.
pub struct TpmDeviceKey {
    context: Context,
    handle: KeyHandle,
    public: DevicePublicKey,
}

impl std::fmt::Debug for TpmDeviceKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TpmDeviceKey")
            .field("public", &self.public)
            .finish_non_exhaustive()
    }
}

impl TpmDeviceKey {
    /// Connects to the TPM at `tcti` and makes the device key from the fixed template
    /// (the same key every time, for this TPM's owner seed).
    #[tracing::instrument(level = "debug")]
    pub fn open(tcti: &str) -> Result<Self, TpmError> {
        let conf = TctiNameConf::from_str(tcti).map_err(|source| TpmError::Tcti {
            tcti: tcti.to_owned(),
            source,
        })?;
        let mut context = Context::new(conf).map_err(command("connecting"))?;
        let template = device_key_template().map_err(command("building the template"))?;
        let primary = context
            .execute_with_nullauth_session(|ctx| {
                ctx.create_primary(Hierarchy::Owner, template, None, None, None, None)
            })
            .map_err(command("creating the device key"))?;
        let public = match &primary.out_public {
            Public::Ecc { unique, .. } => {
                DevicePublicKey::from_coordinates(unique.x().value(), unique.y().value())?
            }
            _ => return Err(TpmError::WrongKeyType),
        };
        Ok(Self {
            context,
            handle: primary.key_handle,
            public,
        })
    }

    fn sign_digest(&mut self, digest: &[u8]) -> Result<[u8; DEVICE_SIGNATURE_LEN], TpmError> {
        let handle = self.handle;
        let digest = Digest::try_from(digest.to_vec()).map_err(command("wrapping the digest"))?;
        // A null ticket: the key is not restricted, so the TPM needs no proof that it hashed
        // the message itself.
        let ticket = HashcheckTicket::try_from(TPMT_TK_HASHCHECK {
            tag: TPM2_ST_HASHCHECK,
            hierarchy: TPM2_RH_NULL,
            digest: Default::default(),
        })
        .map_err(command("building the hash ticket"))?;
        let scheme = SignatureScheme::EcDsa {
            hash_scheme: HashScheme::new(HashingAlgorithm::Sha256),
        };
        let signature = self
            .context
            .execute_with_nullauth_session(|ctx| ctx.sign(handle, digest, scheme, ticket))
            .map_err(command("signing"))?;
        match signature {
            Signature::EcDsa(ecc) => {
                signature_from_parts(ecc.signature_r().value(), ecc.signature_s().value())
                    .map_err(|_| TpmError::WrongKeyType)
            }
            _ => Err(TpmError::WrongKeyType),
        }
    }
}

impl DeviceSigner for TpmDeviceKey {
    fn public_key(&self) -> &DevicePublicKey {
        &self.public
    }

    fn sign(&mut self, message: &[u8]) -> Result<[u8; DEVICE_SIGNATURE_LEN], DeviceSignError> {
        let digest = ring::digest::digest(&ring::digest::SHA256, message);
        Ok(self.sign_digest(digest.as_ref())?)
    }
}

impl Drop for TpmDeviceKey {
    fn drop(&mut self) {
        // A transient object: free the TPM's slot (it is made again next time).
        if let Err(err) = self.context.flush_context(self.handle.into()) {
            tracing::debug!(error = %err, "flushing the device key failed");
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    /// A swtpm on two free loopback ports with its own state, killed on drop.
    struct TestTpm {
        child: std::process::Child,
        port: u16,
        _state: tempfile::TempDir,
    }

    impl TestTpm {
        fn start() -> TestTpm {
            let state = tempfile::tempdir().unwrap();
            let port = (0..50)
                .find_map(|_| {
                    let a = std::net::TcpListener::bind("127.0.0.1:0").ok()?;
                    let port = a.local_addr().ok()?.port();
                    let _b =
                        std::net::TcpListener::bind(("127.0.0.1", port.checked_add(1)?)).ok()?;
                    Some(port)
                })
                .expect("two free loopback ports");
            let child = std::process::Command::new("swtpm")
                .args(["socket", "--tpm2", "--tpmstate"])
                .arg(format!("dir={}", state.path().display()))
                .args([
                    "--server",
                    &format!("type=tcp,port={port},bindaddr=127.0.0.1"),
                ])
                .args([
                    "--ctrl",
                    &format!("type=tcp,port={},bindaddr=127.0.0.1", port + 1),
                ])
                .args(["--flags", "not-need-init,startup-clear"])
                .stdin(std::process::Stdio::null())
                .spawn()
                .unwrap_or_else(|e| {
                    panic!("cannot start swtpm ({e}): apt-get install swtpm (cargo xtask setup)")
                });
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
            while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
                assert!(std::time::Instant::now() < deadline, "swtpm did not listen");
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            TestTpm {
                child,
                port,
                _state: state,
            }
        }

        fn tcti(&self) -> String {
            format!("swtpm:host=127.0.0.1,port={}", self.port)
        }
    }

    impl Drop for TestTpm {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    #[test]
    fn the_tpm_makes_the_same_key_again_and_its_signatures_verify() {
        let tpm = TestTpm::start();
        let mut key = TpmDeviceKey::open(&tpm.tcti()).unwrap();
        let public = key.public_key().clone();
        let signature = key.sign(b"transcript D").unwrap();
        drop(key);
        assert!(public.verify(b"transcript D", &signature));
        assert!(!public.verify(b"transcript E", &signature));
        let ring_key = ring::signature::UnparsedPublicKey::new(
            &ring::signature::ECDSA_P256_SHA256_FIXED,
            public.as_bytes(),
        );
        assert!(ring_key.verify(b"transcript D", &signature).is_ok());
        // Made again from the template: the same key (nothing was stored).
        let again = TpmDeviceKey::open(&tpm.tcti()).unwrap();
        assert_eq!(again.public_key(), &public);
        // Another TPM (other seeds): another key.
        let other = TestTpm::start();
        let theirs = TpmDeviceKey::open(&other.tcti()).unwrap();
        assert_ne!(theirs.public_key(), &public);
    }

    #[test]
    fn a_bad_tcti_or_an_absent_tpm_is_an_error() {
        assert!(matches!(
            TpmDeviceKey::open("nonsense:x"),
            Err(TpmError::Tcti { .. })
        ));
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        assert!(TpmDeviceKey::open(&format!("swtpm:host=127.0.0.1,port={port}")).is_err());
    }
}
