//! What a suite reports: metrics measured for several variants (Mesh and its baselines) in the
//! same run, each repeated and summarized, with its ratio to the baseline; and, plainly, what
//! could not be measured yet. Rendering to markdown is pure and unit-tested.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::stats::Summary;

/// Which direction of a metric is good.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Better {
    /// Throughput, rates.
    Higher,
    /// Latency, time.
    Lower,
}

/// One variant's samples of one metric.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Variant {
    /// "underlay", "kernel vxlan (hand-made)", "mesh", ...
    pub name: String,
    /// Every repetition's value, in run order.
    pub samples: Vec<f64>,
    /// min/median/max of the samples; None when every repetition failed.
    pub summary: Option<Summary>,
    /// Median over the baseline's median.
    pub ratio: Option<f64>,
}

/// One measured quantity across variants.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Metric {
    /// What is measured, e.g. "TCP throughput, 1 stream".
    pub name: String,
    /// Unit of the samples.
    pub unit: String,
    /// Whether higher or lower is better.
    pub better: Better,
    /// The variant ratios are taken against.
    pub baseline: String,
    /// Variants in the order they ran.
    pub variants: Vec<Variant>,
}

/// Something a suite cannot measure yet, and why.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Pending {
    /// What would be measured.
    pub what: String,
    /// Why it is not (the feature and the issue that brings it).
    pub reason: String,
}

/// A suite's whole result, as written to `bench/results/<suite>.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SuiteReport {
    /// Suite name.
    pub suite: String,
    /// "quick" (smoke test, tiny sizes) or "full".
    pub mode: String,
    /// Repetitions per variant.
    pub repeat: usize,
    /// Seconds since the epoch when the suite started.
    pub started_unix: u64,
    /// Wall time the suite took, in seconds.
    pub duration_secs: f64,
    /// Where it ran: CPUs and kernel.
    pub machine: String,
    /// The measurements.
    pub metrics: Vec<Metric>,
    /// What is not measured yet.
    pub pending: Vec<Pending>,
    /// How the figures were taken.
    pub notes: Vec<String>,
}

/// Collects samples metric by metric while a suite runs, then computes summaries and ratios.
pub struct Recorder {
    metrics: Vec<Metric>,
}

impl Recorder {
    /// An empty recorder.
    pub fn new() -> Self {
        Recorder {
            metrics: Vec::new(),
        }
    }

    /// Declares a metric; its first-declared variant is the baseline unless `baseline` names one.
    pub fn metric(&mut self, name: &str, unit: &str, better: Better, baseline: &str) {
        self.metrics.push(Metric {
            name: name.into(),
            unit: unit.into(),
            better,
            baseline: baseline.into(),
            variants: Vec::new(),
        });
    }

    /// Adds one sample of `variant` for metric `metric` (declared before).
    pub fn sample(&mut self, metric: &str, variant: &str, value: f64) {
        let metric = self
            .metrics
            .iter_mut()
            .find(|m| m.name == metric)
            .unwrap_or_else(|| panic!("metric {metric:?} was not declared"));
        match metric.variants.iter_mut().find(|v| v.name == variant) {
            Some(v) => v.samples.push(value),
            None => metric.variants.push(Variant {
                name: variant.into(),
                samples: vec![value],
                summary: None,
                ratio: None,
            }),
        }
    }

    /// The metrics with summaries and ratios filled in.
    pub fn finish(mut self) -> Vec<Metric> {
        for metric in &mut self.metrics {
            for variant in &mut metric.variants {
                variant.summary = Summary::of(&variant.samples);
            }
            let base = metric
                .variants
                .iter()
                .find(|v| v.name == metric.baseline)
                .and_then(|v| v.summary)
                .map(|s| s.median);
            for variant in &mut metric.variants {
                variant.ratio = match (variant.summary, base) {
                    (Some(s), Some(b)) if b != 0.0 => Some(s.median / b),
                    _ => None,
                };
            }
        }
        self.metrics
    }
}

impl Default for Recorder {
    fn default() -> Self {
        Self::new()
    }
}

/// Formats a value with three significant digits, the precision a ±20 % VM deserves.
pub fn fmt_value(value: f64) -> String {
    let magnitude = value.abs();
    if magnitude == 0.0 {
        "0".into()
    } else if magnitude >= 100.0 {
        format!("{value:.0}")
    } else if magnitude >= 10.0 {
        format!("{value:.1}")
    } else if magnitude >= 1.0 {
        format!("{value:.2}")
    } else {
        format!("{value:.3}")
    }
}

impl SuiteReport {
    /// The report as a markdown section: a table of every metric and variant, then what is
    /// pending and how the figures were taken.
    pub fn to_markdown(&self) -> String {
        let mut md = String::new();
        let _ = writeln!(
            md,
            "## {} ({} mode, {} repetitions, {:.0} s)\n\nMachine: {}\n",
            self.suite, self.mode, self.repeat, self.duration_secs, self.machine
        );
        if !self.metrics.is_empty() {
            md.push_str("| metric | variant | median | min | max | × baseline |\n");
            md.push_str("| --- | --- | ---: | ---: | ---: | ---: |\n");
            for metric in &self.metrics {
                let arrow = match metric.better {
                    Better::Higher => "higher is better",
                    Better::Lower => "lower is better",
                };
                for variant in &metric.variants {
                    let (median, min, max) = match variant.summary {
                        Some(s) => (fmt_value(s.median), fmt_value(s.min), fmt_value(s.max)),
                        None => ("failed".into(), "-".into(), "-".into()),
                    };
                    let ratio = if variant.name == metric.baseline {
                        "baseline".to_string()
                    } else {
                        variant.ratio.map_or("-".into(), |r| format!("{r:.2}×"))
                    };
                    let _ = writeln!(
                        md,
                        "| {} ({}, {arrow}) | {} | {median} | {min} | {max} | {ratio} |",
                        metric.name, metric.unit, variant.name
                    );
                }
            }
            md.push('\n');
        }
        if !self.pending.is_empty() {
            md.push_str("Not measured yet:\n\n");
            for pending in &self.pending {
                let _ = writeln!(md, "- {}: {}", pending.what, pending.reason);
            }
            md.push('\n');
        }
        for note in &self.notes {
            let _ = writeln!(md, "- {note}");
        }
        md
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(metrics: Vec<Metric>) -> SuiteReport {
        SuiteReport {
            suite: "overlay".into(),
            mode: "quick".into(),
            repeat: 2,
            started_unix: 0,
            duration_secs: 3.0,
            machine: "2 CPUs".into(),
            metrics,
            pending: vec![Pending {
                what: "mesh overlay".into(),
                reason: "overlay networks are not built yet (issue 6)".into(),
            }],
            notes: vec!["iperf3 for 1 s".into()],
        }
    }

    #[test]
    fn recorder_computes_summaries_and_ratios_against_the_baseline() {
        let mut rec = Recorder::new();
        rec.metric("tput", "Gbit/s", Better::Higher, "underlay");
        for (variant, value) in [
            ("underlay", 10.0),
            ("vxlan", 6.0),
            ("underlay", 12.0),
            ("vxlan", 4.0),
        ] {
            rec.sample("tput", variant, value);
        }
        let metrics = rec.finish();
        let vxlan = &metrics[0].variants[1];
        assert_eq!(vxlan.summary.unwrap().median, 5.0);
        assert_eq!(vxlan.ratio, Some(5.0 / 11.0));
        assert_eq!(metrics[0].variants[0].ratio, Some(1.0));
    }

    #[test]
    fn markdown_shows_every_variant_ratio_and_what_is_pending() {
        let mut rec = Recorder::new();
        rec.metric("tput", "Gbit/s", Better::Higher, "underlay");
        rec.sample("tput", "underlay", 10.0);
        rec.sample("tput", "vxlan", 5.0);
        let md = report(rec.finish()).to_markdown();
        assert!(
            md.contains(
                "| tput (Gbit/s, higher is better) | underlay | 10.0 | 10.0 | 10.0 | baseline |"
            ),
            "{md}"
        );
        assert!(
            md.contains("| vxlan | 5.00 | 5.00 | 5.00 | 0.50× |"),
            "{md}"
        );
        assert!(
            md.contains("- mesh overlay: overlay networks are not built yet (issue 6)"),
            "{md}"
        );
    }

    #[test]
    fn values_keep_three_significant_digits() {
        assert_eq!(fmt_value(12345.6), "12346");
        assert_eq!(fmt_value(12.345), "12.3");
        assert_eq!(fmt_value(1.2345), "1.23");
        assert_eq!(fmt_value(0.012345), "0.012");
        assert_eq!(fmt_value(0.0), "0");
    }
}
