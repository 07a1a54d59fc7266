//! `xdpgate client device show|enable`, and the device key a profile signs with
//! (`docs/PROTOCOL.md` §15).
use std::path::Path;

use super::tpm::{DEFAULT_TCTI, TpmDeviceKey};
use super::{ClientCommandError, read_profile, write_profile};
use crate::approval::ClientProfile;
use crate::device::DeviceSigner as _;

/// Environment variable that overrides the profile's TCTI (tests and odd setups).
pub const TCTI_ENV: &str = "XDPGATE_TCTI";

/// The TCTI to use: the one given, else `XDPGATE_TCTI`, else the profile's, else the
/// system's TPM.
fn tcti_for(profile: Option<&ClientProfile>, given: Option<&str>) -> String {
    given
        .map(str::to_owned)
        .or_else(|| std::env::var(TCTI_ENV).ok().filter(|t| !t.is_empty()))
        .or_else(|| profile.and_then(|p| p.device_tcti.clone()))
        .unwrap_or_else(|| DEFAULT_TCTI.to_owned())
}

/// The device key of a profile that signs with one (`device_tcti` set), else `None`.
pub(super) fn profile_device_key(
    profile: &ClientProfile,
) -> Result<Option<TpmDeviceKey>, ClientCommandError> {
    if profile.device_tcti.is_none() {
        return Ok(None);
    }
    Ok(Some(TpmDeviceKey::open(&tcti_for(Some(profile), None))?))
}

/// What the user must tell the operator, as printed.
pub fn describe_device(name: &str, key: &TpmDeviceKey) -> String {
    let fp = key.public_key().fingerprint();
    format!("device {name:?}: fingerprint {fp}, PIN {}\n", fp.pin())
}

/// `xdpgate client device show`: the device key's fingerprint and PIN (made in the TPM; the
/// profile is only read for its TCTI, and may be absent).
pub fn show(profile: Option<&Path>, tcti: Option<&str>) -> Result<String, ClientCommandError> {
    let profile = profile.map(read_profile).transpose()?;
    let tcti = tcti_for(profile.as_ref(), tcti);
    let key = TpmDeviceKey::open(&tcti)?;
    let fp = key.public_key().fingerprint();
    Ok(format!(
        "fingerprint {fp}\nPIN {}\npublic key {}\nTPM {tcti}\n",
        fp.pin(),
        crate::tls::to_hex(key.public_key().as_bytes())
    ))
}

/// `xdpgate client device enable`: checks that the TPM makes the key, then makes the profile
/// sign every request with it.
pub fn enable(profile_path: &Path, tcti: Option<&str>) -> Result<String, ClientCommandError> {
    let mut profile = read_profile(profile_path)?;
    let tcti = tcti_for(Some(&profile), tcti);
    let key = TpmDeviceKey::open(&tcti)?;
    profile.device_tcti = Some(tcti.clone());
    write_profile(profile_path, &profile.to_json()?, true)?;
    let fp = key.public_key().fingerprint();
    Ok(format!(
        "{} now signs with the device key in {tcti}\nfingerprint {fp}\nPIN {}\n",
        profile_path.display(),
        fp.pin()
    ))
}
