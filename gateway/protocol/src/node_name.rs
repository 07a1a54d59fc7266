//! Cluster node names: the names in node certificates, in `[web.cluster]` and in the
//! `controller` field of an enrollment.

/// Whether `name` is usable as a node name: a DNS name of 1–63 characters from `a-z 0-9 - .`,
/// with no leading, trailing or doubled dot and no leading or trailing hyphen, so webpki can
/// check it against a certificate.
pub fn valid_node_name(name: &str) -> bool {
    (1..=63).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && !name.starts_with(['-', '.'])
        && !name.ends_with(['-', '.'])
        && !name.contains("..")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_names_are_dns_labels_with_dots() {
        for good in ["a", "web-1", "ctl.eu-1", &"x".repeat(63)] {
            assert!(valid_node_name(good), "{good}");
        }
        for bad in [
            "",
            "A",
            "-a",
            "a-",
            ".a",
            "a.",
            "a..b",
            "a_b",
            &"x".repeat(64),
        ] {
            assert!(!valid_node_name(bad), "{bad}");
        }
    }
}
