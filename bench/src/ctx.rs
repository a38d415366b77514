//! What every suite gets: the mode, the repetition count, and labs that clean up after
//! themselves.

use std::time::Duration;

use anyhow::{Context, Result};
use lab::{LabSpec, ScopedLab};

use crate::report::{Metric, Pending};

/// The run's settings.
pub struct Ctx {
    /// Smoke-test mode: tiny sizes, short runs.
    pub quick: bool,
    /// Repetitions of every variant.
    pub repeat: usize,
}

/// What a suite hands back.
pub struct Outcome {
    /// Measured metrics.
    pub metrics: Vec<Metric>,
    /// What is not measured yet, and why.
    pub pending: Vec<Pending>,
    /// How the figures were taken.
    pub notes: Vec<String>,
}

/// What names this process's labs end with.
fn process_tag() -> u32 {
    std::process::id() % 100_000
}

/// Whether lab `name` was made by this process.
pub fn owned_by_this_process(name: &str) -> bool {
    name.starts_with("bench-") && name.ends_with(&format!("-{}", process_tag()))
}

impl Ctx {
    /// Settings for a run.
    pub fn new(quick: bool, repeat: usize) -> Self {
        Ctx { quick, repeat }
    }

    /// How long one measurement runs: `full` seconds, or 1 s in quick mode.
    pub fn duration(&self, full_secs: u64) -> Duration {
        Duration::from_secs(if self.quick { 1 } else { full_secs })
    }

    /// `full` in a full run, `quick` in quick mode.
    pub fn size(&self, full: usize, quick: usize) -> usize {
        if self.quick {
            quick
        } else {
            full
        }
    }

    /// A lab for one suite, without meshd unless asked; removed when dropped.
    pub fn lab(&self, suite: &str, configure: impl FnOnce(&mut LabSpec)) -> Result<ScopedLab> {
        let name = format!("bench-{suite}-{}", process_tag());
        let mut spec = LabSpec::new(&name, 0, 0);
        spec.start_daemons = false;
        configure(&mut spec);
        ScopedLab::up(&spec).with_context(|| format!("bringing up lab {name}"))
    }
}
