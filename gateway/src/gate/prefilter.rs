//! Upkeep of the prefilter bit arrays beside the openings maps (see
//! [`gateway_common::prefilter`] for what the program does with them).
//!
//! The rule that keeps the program from ever dropping an opened address: a bit is set in the
//! kernel before an opening hashing to it is created, and cleared only after the last such
//! opening is gone. The controller is the only writer, so it keeps the bits (a mirror of the
//! kernel's words) and a count of openings per bit here (one byte per bit); a count that reaches `u8::MAX`
//! sticks, which can only leave a bit set that could have been cleared (a collision), never
//! the reverse.
use aya::maps::{Array, MapData, MapError};
use gateway_common::prefilter;
use tracing::info;

use super::GateError;

/// One family's prefilter.
pub struct Prefilter {
    name: &'static str,
    map: Array<MapData, u64>,
    shift: u32,
    words: Vec<u64>,
    counts: Vec<u8>,
}

impl Prefilter {
    /// Wraps the map; its size (a power of two of words) gives the bit count. Call
    /// [`Prefilter::rebuild`] before relying on it.
    pub fn new(name: &'static str, map: Array<MapData, u64>) -> Result<Self, GateError> {
        let words = map.len();
        if !words.is_power_of_two() || words < prefilter::words(prefilter::MIN_SHIFT) {
            return Err(GateError::PrefilterSize { name, words });
        }
        let shift = words.trailing_zeros() + 6;
        Ok(Self {
            name,
            map,
            shift,
            words: vec![0; words as usize],
            counts: vec![0; 1usize << shift],
        })
    }

    /// log2 of the number of bits.
    pub fn shift(&self) -> u32 {
        self.shift
    }

    fn bit(&self, hash: u64) -> (usize, u64, usize) {
        let (word, mask) = prefilter::slot(hash, self.shift);
        let word = word as usize;
        (word, mask, word * 64 + mask.trailing_zeros() as usize)
    }

    /// Makes the kernel's bits exactly those of the openings whose hashes are given, without
    /// ever clearing a bit that an opening needs: words that gain bits are written first
    /// (with the bits they had), then words that lose bits.
    pub fn rebuild(&mut self, hashes: impl Iterator<Item = u64>) -> Result<(), GateError> {
        self.counts.iter_mut().for_each(|c| *c = 0);
        let mut wanted = vec![0u64; self.words.len()];
        let mut openings = 0usize;
        for hash in hashes {
            let (word, mask, bit) = self.bit(hash);
            wanted[word] |= mask;
            self.counts[bit] = self.counts[bit].saturating_add(1);
            openings += 1;
        }
        let mut current = Vec::with_capacity(self.words.len());
        for index in 0..self.words.len() as u32 {
            current.push(
                self.map
                    .get(&index, 0)
                    .map_err(|source| self.error(source))?,
            );
        }
        let mut written = 0usize;
        for (index, (have, want)) in current.iter().zip(&wanted).enumerate() {
            if want & !have != 0 {
                self.write(index, have | want)?;
                written += 1;
            }
        }
        for (index, (have, want)) in current.iter().zip(&wanted).enumerate() {
            if have & !want != 0 {
                self.write(index, *want)?;
                written += 1;
            }
        }
        self.words = wanted;
        info!(
            map = self.name,
            openings,
            bits = 1u64 << self.shift,
            words_written = written,
            "rebuilt the prefilter"
        );
        Ok(())
    }

    /// Sets the bit of `hash` if it is clear. Call before creating the opening.
    pub fn hold(&mut self, hash: u64) -> Result<(), GateError> {
        let (word, mask, _) = self.bit(hash);
        if self.words[word] & mask == 0 {
            self.write(word, self.words[word] | mask)?;
        }
        Ok(())
    }

    /// Counts a newly created opening of `hash` (its bit is held).
    pub fn count(&mut self, hash: u64) {
        let (_, _, bit) = self.bit(hash);
        self.counts[bit] = self.counts[bit].saturating_add(1);
    }

    /// Uncounts a removed opening of `hash`, then [`settle`](Self::settle)s its bit.
    pub fn uncount(&mut self, hash: u64) -> Result<(), GateError> {
        let (_, _, bit) = self.bit(hash);
        if self.counts[bit] != u8::MAX {
            self.counts[bit] = self.counts[bit].saturating_sub(1);
        }
        self.settle(hash)
    }

    /// Clears the bit of `hash` if no opening counts on it (after a removal, or after a
    /// creation that failed).
    pub fn settle(&mut self, hash: u64) -> Result<(), GateError> {
        let (word, mask, bit) = self.bit(hash);
        if self.counts[bit] == 0 && self.words[word] & mask != 0 {
            self.write(word, self.words[word] & !mask)?;
        }
        Ok(())
    }

    /// Whether the kernel's bit of `hash` is set (as written by this controller).
    pub fn is_set(&self, hash: u64) -> bool {
        let (word, mask, _) = self.bit(hash);
        self.words[word] & mask != 0
    }

    fn write(&mut self, word: usize, value: u64) -> Result<(), GateError> {
        let index = u32::try_from(word).map_err(|_| GateError::PrefilterSize {
            name: self.name,
            words: u32::MAX,
        })?;
        self.map
            .set(index, value, 0)
            .map_err(|source| self.error(source))?;
        self.words[word] = value;
        Ok(())
    }

    fn error(&self, source: MapError) -> GateError {
        GateError::Map {
            name: self.name,
            source,
        }
    }
}
