//! Counters of approval and enrollment outcomes, by public code, for `xdpgate status`.
use std::{
    collections::BTreeMap,
    sync::{Mutex, PoisonError},
};

/// Outcome counters since the controller started.
#[derive(Debug, Default)]
pub struct Metrics {
    counts: Mutex<BTreeMap<String, u64>>,
}

impl Metrics {
    /// Adds one to the counter named `name` (e.g. `approval.approved`, `approval.denied`).
    pub fn count(&self, name: &str) {
        let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        *counts.entry(name.to_owned()).or_default() += 1;
    }

    /// Every counter, by name.
    pub fn snapshot(&self) -> Vec<(String, u64)> {
        let counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        counts.iter().map(|(name, value)| (name.clone(), *value)).collect()
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
        metrics.count("approval.denied");
        assert_eq!(
            metrics.snapshot(),
            vec![("approval.approved".to_owned(), 1), ("approval.denied".to_owned(), 2)]
        );
    }
}
