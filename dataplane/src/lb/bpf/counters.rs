//! The program's counters: stable reason codes, mirrored from `ebpf/include/lb_drop_reasons.h`
//! (a unit test checks the two agree), and their names as `meshctl` prints them.

/// Drop reasons, in code order: `LB_DROPS[code]`. Never renumber; add at the end.
pub const DROP_REASONS: [&str; 20] = [
    "truncated-eth",
    "truncated-ip",
    "bad-ihl",
    "truncated-l4",
    "fragment",
    "no-backend",
    "maglev-missing",
    "backend-missing",
    "encap-too-big",
    "fib-fail",
    "redirect-fail",
    "no-config",
    "decap-no-backend",
    "reply-no-nat",
    "reply-not-ipv4",
    "csum-fail",
    "bad-inner",
    "unknown-leg",
    "bad-ip",
    "bad-l4",
];

/// Forwarding outcomes, in code order: `LB_FORWARDS[code]`.
pub const FORWARD_OUTCOMES: [&str; 8] = [
    "local",
    "remote",
    "decap",
    "icmp-forwarded",
    "reply",
    "reply-icmp",
    "frag-needed",
    "rst",
];

/// The counter name of drop reason `code` (`drop:fragment`).
pub fn drop_name(code: usize) -> String {
    format!(
        "drop:{}",
        DROP_REASONS.get(code).copied().unwrap_or("unknown")
    )
}

/// The counter name of forwarding outcome `code` (`forward:remote`).
pub fn forward_name(code: usize) -> String {
    format!(
        "forward:{}",
        FORWARD_OUTCOMES.get(code).copied().unwrap_or("unknown")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `(NAME, code)` of every `#define PREFIX... code` line of the C header.
    fn defines(prefix: &str) -> Vec<(String, usize)> {
        include_str!("../../../../ebpf/include/lb_drop_reasons.h")
            .lines()
            .filter_map(|line| {
                let mut words = line.split_whitespace();
                (words.next()? == "#define").then_some(())?;
                let name = words.next()?.strip_prefix(prefix)?;
                let code = words.next()?.parse().ok()?;
                Some((name.to_string(), code))
            })
            .collect()
    }

    fn check(prefix: &str, names: &[&str]) {
        let mut codes = defines(prefix);
        let max = codes.iter().position(|(n, _)| n == "MAX").expect("a MAX");
        let (_, max) = codes.remove(max);
        assert_eq!(max, names.len(), "{prefix}MAX");
        assert_eq!(codes.len(), names.len());
        for (name, code) in codes {
            let rust = names[code];
            assert_eq!(
                name.to_lowercase().replace('_', "-"),
                rust.replace("icmp-forwarded", "icmp"),
                "code {code}"
            );
        }
    }

    #[test]
    fn names_mirror_the_c_header() {
        check("LB_DROP_", &DROP_REASONS);
        check("LB_FWD_", &FORWARD_OUTCOMES);
    }

    #[test]
    fn names_are_prefixed_and_unique() {
        assert_eq!(drop_name(4), "drop:fragment");
        assert_eq!(forward_name(1), "forward:remote");
        assert_eq!(drop_name(999), "drop:unknown");
        let mut all: Vec<String> = (0..DROP_REASONS.len()).map(drop_name).collect();
        all.extend((0..FORWARD_OUTCOMES.len()).map(forward_name));
        let count = all.len();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), count);
    }
}
