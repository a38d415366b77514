//! The suites, by name. Each builds its own lab and returns its metrics, what it cannot measure
//! yet, and notes on how it measured.

use anyhow::Result;

use crate::ctx::{Ctx, Outcome};

mod control;
mod dns;
mod gossip;
mod ingress;
pub mod overlay;
mod raft;
mod scheduler;

/// A suite's entry point.
pub type Runner = fn(&Ctx) -> Result<Outcome>;

/// Every suite, in the order `all` runs them.
pub const ALL: &[(&str, Runner)] = &[
    ("overlay", overlay::run),
    ("ingress", ingress::run),
    ("raft", raft::run),
    ("dns", dns::run),
    ("control", control::run),
    ("gossip", gossip::run),
    ("scheduler", scheduler::run),
];
