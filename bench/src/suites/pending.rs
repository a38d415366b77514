//! Suites whose subject does not exist yet. They say so plainly instead of producing a number.

use anyhow::Result;

use crate::ctx::{Ctx, Outcome};
use crate::report::Pending;

fn pending(items: &[(&str, &str)]) -> Result<Outcome> {
    Ok(Outcome {
        metrics: Vec::new(),
        pending: items
            .iter()
            .map(|(what, reason)| Pending {
                what: what.to_string(),
                reason: reason.to_string(),
            })
            .collect(),
        notes: Vec::new(),
    })
}

/// Membership propagation.
pub fn gossip(_: &Ctx) -> Result<Outcome> {
    pending(&[
        (
            "time for a membership change to reach every node, 5-host lab",
            "gossip is not built yet (issue 7)",
        ),
        (
            "the same in a 1000-node simulation",
            "gossip is not built yet (issue 7)",
        ),
    ])
}
