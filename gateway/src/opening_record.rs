//! The lifetime rules of one opening (one source address on one server).
//!
//! An opening is held by one or more *holders* (an approval, an admin grant). Each holder
//! keeps it open for its connect window; once the XDP program has seen traffic, activity
//! keeps it open up to the server's idle timeout, but never past the holder's absolute
//! deadline. The opening lives as long as its longest-lived holder, so one client's expiry
//! never closes another client's access from the same address.
//!
//! Every time here is `CLOCK_BOOTTIME` in ms, of the boot named by [`OpeningRecord::boot_id`]
//! (see `crate::clock`): a wall-clock step moves no expiry, and a record of another boot is
//! dropped. Only `created_unix_ms` is wall time, for display.
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

/// One reason an opening exists.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    /// Unique id of the grant (approval id, or `admin-…`).
    pub id: String,
    /// Who asked: a client id, or `admin`.
    pub origin: String,
    /// When the grant was made (boot clock, ms).
    #[serde(default)]
    pub granted_ms: u64,
    /// Until when the grant holds without traffic (boot clock, ms).
    #[serde(default)]
    pub connect_until_ms: u64,
    /// Hard end of the grant, however busy the address is (boot clock, ms).
    #[serde(default)]
    pub deadline_ms: u64,
    /// The fingerprint of the device whose approval this is (`device_auth = "required"`),
    /// so removing the device closes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
}

/// Identifies an opening: server and source address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct OpeningId {
    /// Server the opening admits to.
    pub server_id: u32,
    /// Source address admitted.
    pub addr: IpAddr,
}

impl OpeningId {
    /// Stable text key used in the store, e.g. `1/10.0.0.2`.
    pub fn store_key(&self) -> String {
        format!("{}/{}", self.server_id, self.addr)
    }
}

/// An opening as the controller records it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpeningRecord {
    /// Server and address.
    pub id: OpeningId,
    /// The boot the times belong to (`crate::clock::boot_id`; empty in records written before
    /// lifetimes moved to the boot clock, which are dropped like another boot's).
    #[serde(default)]
    pub boot_id: String,
    /// When the first holder arrived (wall clock, display only).
    pub created_unix_ms: u64,
    /// The server's idle timeout when the opening was made, ms.
    pub idle_timeout_ms: u64,
    /// Last packet the XDP program admitted (boot clock, ms; 0: none).
    #[serde(default)]
    pub last_seen_ms: u64,
    /// Grants that keep the opening alive.
    pub holders: Vec<Holder>,
}

impl OpeningRecord {
    /// A new opening of this boot with one holder.
    pub fn new(id: OpeningId, idle_timeout_ms: u64, holder: Holder) -> Self {
        Self {
            id,
            boot_id: crate::clock::boot_id().to_owned(),
            created_unix_ms: crate::clock::unix_ms(),
            idle_timeout_ms,
            last_seen_ms: 0,
            holders: vec![holder],
        }
    }

    /// True when the record's times belong to this boot.
    pub fn of_this_boot(&self) -> bool {
        !self.boot_id.is_empty() && self.boot_id == crate::clock::boot_id()
    }

    /// When one holder stops holding, given the traffic seen so far.
    pub fn holder_expiry_ms(&self, holder: &Holder) -> u64 {
        let active_until = if self.last_seen_ms >= holder.granted_ms {
            self.last_seen_ms.saturating_add(self.idle_timeout_ms)
        } else {
            0
        };
        holder
            .connect_until_ms
            .max(active_until)
            .min(holder.deadline_ms)
    }

    /// When the opening closes unless something changes: its longest-lived holder's expiry.
    pub fn expiry_ms(&self) -> u64 {
        self.holders
            .iter()
            .map(|h| self.holder_expiry_ms(h))
            .max()
            .unwrap_or(0)
    }

    /// The latest absolute deadline among the holders.
    pub fn deadline_ms(&self) -> u64 {
        self.holders
            .iter()
            .map(|h| h.deadline_ms)
            .max()
            .unwrap_or(0)
    }

    /// Records traffic seen by the kernel (ignores older observations).
    pub fn observe_traffic(&mut self, seen_ms: u64) {
        self.last_seen_ms = self.last_seen_ms.max(seen_ms);
    }

    /// Drops holders that have expired at `now`; returns how many were dropped.
    pub fn prune(&mut self, now_ms: u64) -> usize {
        let before = self.holders.len();
        let expiries: Vec<u64> = self
            .holders
            .iter()
            .map(|h| self.holder_expiry_ms(h))
            .collect();
        let mut index = 0;
        self.holders.retain(|_| {
            let keep = expiries[index] > now_ms;
            index += 1;
            keep
        });
        before - self.holders.len()
    }

    /// Adds a grant. A new grant from an origin replaces that origin's earlier ones, so
    /// re-approvals refresh a client's hold instead of piling up.
    pub fn add_holder(&mut self, holder: Holder) {
        self.holders.retain(|h| h.origin != holder.origin);
        self.holders.push(holder);
    }

    /// Drops the holders granted to `origin`; returns how many were dropped.
    pub fn remove_origin(&mut self, origin: &str) -> usize {
        let before = self.holders.len();
        self.holders.retain(|h| h.origin != origin);
        before - self.holders.len()
    }

    /// Drops the holders granted to `origin` by `device`; returns how many were dropped.
    pub fn remove_device(&mut self, origin: &str, device: &str) -> usize {
        let before = self.holders.len();
        self.holders
            .retain(|h| !(h.origin == origin && h.device.as_deref() == Some(device)));
        before - self.holders.len()
    }

    /// True when no holder is left and the opening must close.
    pub fn is_empty(&self) -> bool {
        self.holders.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const IDLE: u64 = 10_000;

    fn holder(id: &str, origin: &str, granted: u64, connect: u64, deadline: u64) -> Holder {
        Holder {
            id: id.into(),
            origin: origin.into(),
            granted_ms: granted,
            connect_until_ms: granted + connect,
            deadline_ms: granted + deadline,
            device: None,
        }
    }

    fn record(h: Holder) -> OpeningRecord {
        let id = OpeningId {
            server_id: 1,
            addr: "10.0.0.2".parse().unwrap(),
        };
        OpeningRecord::new(id, IDLE, h)
    }

    #[test]
    fn unused_opening_lasts_its_connect_window() {
        let r = record(holder("a", "c1", 1_000, 5_000, 100_000));
        assert_eq!(r.expiry_ms(), 6_000);
    }

    #[test]
    fn traffic_extends_to_idle_timeout_but_not_past_deadline() {
        let mut r = record(holder("a", "c1", 1_000, 5_000, 30_000));
        r.observe_traffic(4_000);
        assert_eq!(r.expiry_ms(), 14_000);
        r.observe_traffic(25_000);
        assert_eq!(r.expiry_ms(), 31_000, "capped by the absolute deadline");
        r.observe_traffic(2_000);
        assert_eq!(r.last_seen_ms, 25_000, "older observations are ignored");
    }

    #[test]
    fn traffic_before_a_grant_does_not_extend_it() {
        let mut r = record(holder("a", "c1", 50_000, 5_000, 100_000));
        r.last_seen_ms = 49_000;
        assert_eq!(r.expiry_ms(), 55_000);
    }

    #[test]
    fn one_holder_expiring_keeps_the_other() {
        let mut r = record(holder("a", "c1", 1_000, 5_000, 100_000));
        r.holders.push(holder("b", "c2", 2_000, 20_000, 100_000));
        assert_eq!(r.prune(7_000), 1);
        assert_eq!(r.holders.len(), 1);
        assert_eq!(r.holders[0].id, "b");
        assert_eq!(r.expiry_ms(), 22_000);
        assert_eq!(r.prune(22_000), 1);
        assert!(r.is_empty());
    }

    #[test]
    fn a_new_grant_replaces_the_same_origins_earlier_one() {
        let mut r = record(holder("a", "c1", 1_000, 5_000, 100_000));
        r.add_holder(holder("b", "c1", 2_000, 5_000, 100_000));
        assert_eq!(r.holders.len(), 1, "same client: refreshed, not piled up");
        assert_eq!(r.holders[0].id, "b");
        r.add_holder(holder("c", "c2", 2_000, 5_000, 100_000));
        assert_eq!(r.holders.len(), 2, "another client holds on its own");
    }

    #[test]
    fn revoking_an_origin_removes_only_its_holders() {
        let mut r = record(holder("a", "c1", 1_000, 5_000, 100_000));
        r.holders.push(holder("b", "c2", 1_000, 5_000, 100_000));
        r.holders.push(holder("c", "c1", 1_000, 5_000, 100_000));
        assert_eq!(r.remove_origin("c1"), 2);
        assert_eq!(r.holders.len(), 1);
        assert_eq!(r.remove_origin("nobody"), 0);
    }

    #[test]
    fn store_key_is_readable_and_distinct_per_family() {
        let v4 = OpeningId {
            server_id: 3,
            addr: "10.0.0.2".parse().unwrap(),
        };
        let v6 = OpeningId {
            server_id: 3,
            addr: "fd00::2".parse().unwrap(),
        };
        assert_eq!(v4.store_key(), "3/10.0.0.2");
        assert_eq!(v6.store_key(), "3/fd00::2");
    }
}
