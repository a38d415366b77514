//! mesh-bench: Mesh's benchmark harness. Every suite builds its own lab, measures Mesh beside
//! the baselines a user would pick instead, interleaved and repeated in the same run, and
//! reports min/median/max with ratios. It reports; it never asserts a timing.

mod ctx;
mod handmade;
mod loadgen;
mod plot;
mod report;
mod stats;
mod suites;
mod tools;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use clap::Parser;

use ctx::Ctx;
use report::SuiteReport;

/// Runs benchmark suites on a local lab and writes bench/results/<suite>.{json,md,png}.
#[derive(Debug, Parser)]
#[command(name = "mesh-bench", version)]
struct Args {
    /// Suites to run: overlay, ingress, dns, raft, control, gossip, scheduler, or all.
    #[arg(default_value = "all")]
    suites: Vec<String>,
    /// Smoke test: one short repetition at tiny sizes, written to target/bench-quick.
    #[arg(long)]
    quick: bool,
    /// Repetitions of every variant [default: 5, or 1 with --quick].
    #[arg(long)]
    repeat: Option<usize>,
    /// Output directory [default: bench/results, or target/bench-quick with --quick].
    #[arg(long)]
    out: Option<PathBuf>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    remove_labs_on_signal();
    match run(args) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("mesh-bench: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> Result<ExitCode> {
    let names = select(&args.suites)?;
    let repeat = args.repeat.unwrap_or(if args.quick { 1 } else { 5 });
    if repeat == 0 {
        bail!("--repeat must be at least 1");
    }
    let out = args.out.clone().unwrap_or_else(|| {
        PathBuf::from(if args.quick {
            "target/bench-quick"
        } else {
            "bench/results"
        })
    });
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let ctx = Ctx::new(args.quick, repeat);
    let mut failed = Vec::new();
    for name in names {
        let (_, runner) = suites::ALL
            .iter()
            .find(|(n, _)| *n == name)
            .expect("select checked the name");
        eprintln!("== suite {name}");
        let started = Instant::now();
        let started_unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        match runner(&ctx) {
            Ok(outcome) => {
                let report = SuiteReport {
                    suite: name.to_string(),
                    mode: if args.quick { "quick" } else { "full" }.into(),
                    repeat,
                    started_unix,
                    duration_secs: started.elapsed().as_secs_f64(),
                    machine: machine(),
                    metrics: outcome.metrics,
                    pending: outcome.pending,
                    notes: outcome.notes,
                };
                write(&report, &out)?;
                print!("{}", report.to_markdown());
            }
            Err(err) => {
                eprintln!("suite {name} failed: {err:#}");
                failed.push(name);
            }
        }
    }
    write_index(&out)?;
    if failed.is_empty() {
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("failed suites: {}", failed.join(", "));
        Ok(ExitCode::FAILURE)
    }
}

/// A benchmark stopped with ^C or SIGTERM must not leave its lab behind: block both signals in
/// every thread and let one thread wait for them, remove this process's labs and exit.
/// (Child processes start with an empty signal mask: std resets it.)
fn remove_labs_on_signal() {
    // SAFETY: sigset_t is plain data initialized by sigemptyset before use; pthread_sigmask
    // only changes this thread's mask (inherited by threads spawned after it).
    let set = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    };
    std::thread::spawn(move || {
        let mut signal = 0;
        // SAFETY: set is a valid, initialized signal set; signal is a valid out-pointer.
        if unsafe { libc::sigwait(&set, &mut signal) } != 0 {
            return;
        }
        eprintln!("mesh-bench: signal {signal}, removing this run's labs");
        for lab in lab::list().unwrap_or_default() {
            if ctx::owned_by_this_process(&lab.name) {
                if let Err(err) = lab::Lab::down(&lab.name) {
                    eprintln!("removing lab {}: {err}", lab.name);
                }
            }
        }
        std::process::exit(128 + signal);
    });
}

fn select(requested: &[String]) -> Result<Vec<&'static str>> {
    let known: Vec<&'static str> = suites::ALL.iter().map(|(n, _)| *n).collect();
    if requested.iter().any(|s| s == "all") {
        return Ok(known);
    }
    requested
        .iter()
        .map(|s| {
            known
                .iter()
                .find(|k| **k == s.as_str())
                .copied()
                .with_context(|| {
                    format!(
                        "unknown suite {s:?}; choose from {} or all",
                        known.join(", ")
                    )
                })
        })
        .collect()
}

fn write(report: &SuiteReport, out: &Path) -> Result<()> {
    let base = out.join(&report.suite);
    let json = base.with_extension("json");
    std::fs::write(&json, serde_json::to_string_pretty(report)?)
        .with_context(|| format!("writing {}", json.display()))?;
    let md = base.with_extension("md");
    std::fs::write(&md, report.to_markdown())
        .with_context(|| format!("writing {}", md.display()))?;
    plot::draw(report, &base.with_extension("png"))?;
    Ok(())
}

/// Rewrites README.md in the output directory from every suite's JSON there.
fn write_index(out: &Path) -> Result<()> {
    let mut reports: Vec<SuiteReport> = std::fs::read_dir(out)?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .filter_map(|p| serde_json::from_str(&std::fs::read_to_string(p).ok()?).ok())
        .collect();
    let order = |r: &SuiteReport| {
        suites::ALL
            .iter()
            .position(|(n, _)| *n == r.suite)
            .unwrap_or(usize::MAX)
    };
    reports.sort_by_key(order);
    let mut index = String::from(
        "# Benchmark results\n\nRegenerate with `bash scripts/bench.sh` (all suites) or \
         `bash scripts/bench.sh SUITE...`. Each figure is min/median/max over the repetitions, \
         with its ratio to the baseline measured in the same run. Plots: `<suite>.png`.\n\n",
    );
    for report in &reports {
        index.push_str(&report.to_markdown());
        index.push('\n');
    }
    std::fs::write(out.join("README.md"), index)?;
    Ok(())
}

fn machine() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("{cpus} CPUs, Linux {}", kernel.trim())
}
