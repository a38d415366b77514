//! Quorum arithmetic for Raft managers, and the warnings an operator should see about it.
//! Pure functions: no I/O, no Raft types.

/// Votes needed to commit or elect with `managers` voters: floor(n/2) + 1.
pub fn quorum(managers: usize) -> usize {
    managers / 2 + 1
}

/// Manager failures the cluster survives while keeping quorum.
pub fn tolerated_failures(managers: usize) -> usize {
    managers.saturating_sub(quorum(managers))
}

/// How many more managers must be reachable before writes work again.
pub fn missing_for_quorum(managers: usize, reachable: usize) -> usize {
    quorum(managers).saturating_sub(reachable)
}

/// Something about the manager set worth telling the operator.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum QuorumWarning {
    /// An even count tolerates no more failures than one manager fewer.
    EvenCount { managers: usize },
    /// Fewer than three managers: one failure (or none) stops all changes.
    TooFew { managers: usize },
}

impl std::fmt::Display for QuorumWarning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            QuorumWarning::EvenCount { managers } => write!(
                f,
                "{managers} managers tolerate {} failure{}, the same as {}; use an odd number of managers",
                tolerated_failures(managers),
                plural(tolerated_failures(managers)),
                managers - 1
            ),
            QuorumWarning::TooFew { managers } => write!(
                f,
                "{managers} manager{} tolerate{} no failure: losing one stops every change to the cluster; run 3 or 5 managers",
                plural(managers),
                if managers == 1 { "s" } else { "" }
            ),
        }
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

/// The warnings for a cluster of `managers` managers.
pub fn warnings(managers: usize) -> Vec<QuorumWarning> {
    let mut found = Vec::new();
    if managers < 3 {
        found.push(QuorumWarning::TooFew { managers });
    }
    if managers >= 2 && managers % 2 == 0 {
        found.push(QuorumWarning::EvenCount { managers });
    }
    found
}

/// Whether removing `removing` managers of `managers`, with `reachable` of them reachable now
/// (the removed ones included), keeps a working quorum among those that remain.
pub fn removal_keeps_quorum(
    managers: usize,
    reachable: usize,
    removing: usize,
    removing_reachable: usize,
) -> bool {
    let remaining = managers.saturating_sub(removing);
    let remaining_reachable = reachable.saturating_sub(removing_reachable);
    remaining > 0 && remaining_reachable >= quorum(remaining)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quorum_and_tolerance_follow_floor_n_over_2_plus_1() {
        let table = [
            (1, 1, 0),
            (2, 2, 0),
            (3, 2, 1),
            (4, 3, 1),
            (5, 3, 2),
            (6, 4, 2),
            (7, 4, 3),
        ];
        for (n, q, f) in table {
            assert_eq!((quorum(n), tolerated_failures(n)), (q, f), "n = {n}");
        }
        assert_eq!(tolerated_failures(0), 0);
    }

    #[test]
    fn missing_managers_are_counted() {
        assert_eq!(missing_for_quorum(4, 2), 1);
        assert_eq!(missing_for_quorum(5, 1), 2);
        assert_eq!(missing_for_quorum(3, 3), 0);
    }

    #[test]
    fn operators_are_warned_about_even_and_small_counts() {
        assert_eq!(warnings(1), [QuorumWarning::TooFew { managers: 1 }]);
        assert_eq!(
            warnings(2),
            [
                QuorumWarning::TooFew { managers: 2 },
                QuorumWarning::EvenCount { managers: 2 }
            ]
        );
        assert!(warnings(3).is_empty());
        assert_eq!(warnings(4), [QuorumWarning::EvenCount { managers: 4 }]);
        assert!(warnings(5).is_empty());
        assert_eq!(
            QuorumWarning::EvenCount { managers: 4 }.to_string(),
            "4 managers tolerate 1 failure, the same as 3; use an odd number of managers"
        );
        assert!(QuorumWarning::TooFew { managers: 1 }
            .to_string()
            .starts_with("1 manager tolerates no failure"));
    }

    #[test]
    fn removals_that_would_lose_quorum_are_detected() {
        // 3 managers all up: demoting one leaves 2 of 2 reachable.
        assert!(removal_keeps_quorum(3, 3, 1, 1));
        // 3 managers, one down: demoting a healthy one leaves 1 of 2 reachable.
        assert!(!removal_keeps_quorum(3, 2, 1, 1));
        // ... but removing the dead one leaves 2 of 2.
        assert!(removal_keeps_quorum(3, 2, 1, 0));
        // The last manager can never be removed.
        assert!(!removal_keeps_quorum(1, 1, 1, 1));
    }
}
