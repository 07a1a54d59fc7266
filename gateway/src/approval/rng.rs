//! The one source of randomness: the operating system's, through `ring`.

use ring::rand::{SecureRandom as _, SystemRandom};

/// The operating system's random generator failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the operating system random generator failed")]
pub struct RngError;

/// Fills a fixed-size array with random bytes.
pub(crate) fn random_array<const N: usize>() -> Result<[u8; N], RngError> {
    let mut out = [0u8; N];
    SystemRandom::new().fill(&mut out).map_err(|_| RngError)?;
    Ok(out)
}

/// Fills a vector of `len` random bytes.
pub(crate) fn random_vec(len: usize) -> Result<Vec<u8>, RngError> {
    let mut out = vec![0u8; len];
    SystemRandom::new().fill(&mut out).map_err(|_| RngError)?;
    Ok(out)
}

/// Adapts `ring`'s generator to the `rand_core` 0.10 traits that the `rsa` crate's key
/// generation asks for.
#[derive(Debug)]
pub(crate) struct RsaRng(SystemRandom);

impl RsaRng {
    pub(crate) fn new() -> Self {
        Self(SystemRandom::new())
    }
}

impl rsa::rand_core::TryRng for RsaRng {
    type Error = RngError;

    fn try_next_u32(&mut self) -> Result<u32, Self::Error> {
        let mut b = [0u8; 4];
        self.try_fill_bytes(&mut b)?;
        Ok(u32::from_le_bytes(b))
    }

    fn try_next_u64(&mut self) -> Result<u64, Self::Error> {
        let mut b = [0u8; 8];
        self.try_fill_bytes(&mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Self::Error> {
        self.0.fill(dst).map_err(|_| RngError)
    }
}

impl rsa::rand_core::TryCryptoRng for RsaRng {}
