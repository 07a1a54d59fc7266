//! Counters of approval and enrollment outcomes, by public code, for `xdpgate status`.
use std::{
    collections::BTreeMap,
    sync::{Mutex, PoisonError},
};

/// Outcome counters since the controller started.
#[derive(Debug, Default)]
pub struct Metrics {
    counts: Mutex<BTreeMap<String, u64>>,
    /// `approval.<code>` counters, keyed by the code (no allocation per request).
    codes: Mutex<BTreeMap<&'static str, u64>>,
}

impl Metrics {
    /// Adds one to the counter named `name` (e.g. `approval.approved`, `approval.denied`).
    pub fn count(&self, name: &str) {
        let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        match counts.get_mut(name) {
            Some(value) => *value += 1,
            None => {
                counts.insert(name.to_owned(), 1);
            }
        }
    }

    /// Adds one to `approval.<code>`.
    pub fn count_code(&self, code: crate::approval::PublicCode) {
        let mut codes = self.codes.lock().unwrap_or_else(PoisonError::into_inner);
        *codes.entry(code.as_str()).or_default() += 1;
    }

    /// Every counter, by name.
    pub fn snapshot(&self) -> Vec<(String, u64)> {
        let mut all: BTreeMap<String, u64> = self
            .counts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        for (code, value) in self
            .codes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
        {
            *all.entry(format!("approval.{code}")).or_default() += value;
        }
        all.into_iter().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_by_name_in_order() {
        let metrics = Metrics::default();
        metrics.count("approval.denied");
        metrics.count("approval.approved");
        metrics.count_code(crate::approval::PublicCode::Denied);
        assert_eq!(
            metrics.snapshot(),
            vec![
                ("approval.approved".to_owned(), 1),
                ("approval.denied".to_owned(), 2)
            ]
        );
    }
}
