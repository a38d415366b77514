//! Health checks: what a service asks its agents to probe in every running task, the flags
//! that say so, and the states a task's health goes through.
//!
//! A check is one of three tests, run by the task's agent every `interval`:
//! - a command, run by `/bin/sh -c` inside the task (its namespaces, root, cgroup and
//!   environment): exit code 0 passes;
//! - a TCP connect to a port on the task's loopback, from inside its network namespace;
//! - an HTTP GET of a path on such a port: a 2xx or 3xx status passes.
//!
//! A probe that takes longer than `timeout` fails. A task with a check starts `Starting`;
//! the first pass makes it `Healthy`; `retries` failures in a row make it `Unhealthy`, but
//! failures within `start_period` of the start do not count until a probe has passed once
//! (Docker's rules). Only healthy tasks are in DNS answers and load-balancer tables; an
//! unhealthy task is stopped and reported failed, so its restart policy replaces it.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::spec::duration_flag;

/// Docker's default probe interval.
pub const DEFAULT_INTERVAL_MS: u64 = 30_000;
/// Docker's default probe timeout.
pub const DEFAULT_TIMEOUT_MS: u64 = 30_000;
/// Docker's default failures in a row before a task is unhealthy.
pub const DEFAULT_RETRIES: u64 = 3;
/// The shortest interval and timeout accepted: probes are processes or connections.
pub const MIN_PERIOD_MS: u64 = 100;

const EMPTY_COMMAND: &str =
    "--health-cmd is empty; give a shell command like 'wget -q -O- http://127.0.0.1/'";
const PORT_ZERO: &str = "--health-tcp/--health-http: port 0 is not a port; give 1-65535";
const BAD_PATH: &str = "must start with '/' and have no spaces; write it like 8080/healthz";
const NO_RETRIES: &str =
    "--health-retries 0 would make every task unhealthy at once; give 1 or more (default 3)";

/// What a probe does.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HealthTest {
    /// A shell command run inside the task (`/bin/sh -c`); exit code 0 passes.
    Command(String),
    /// A TCP connection to this port on the task's loopback.
    Tcp {
        /// Port inside the task.
        port: u16,
    },
    /// An HTTP/1.0 GET to the task's loopback; 2xx and 3xx pass.
    Http {
        /// Port inside the task.
        port: u16,
        /// Path, starting with '/'.
        path: String,
    },
}

/// A service's health check.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthCheck {
    /// The probe.
    pub test: HealthTest,
    /// Time between the end of one probe and the start of the next.
    pub interval_ms: u64,
    /// How long one probe may take before it counts as failed.
    pub timeout_ms: u64,
    /// Failures in a row that make a task unhealthy.
    pub retries: u64,
    /// Time after the start in which failures do not count (until the first pass).
    pub start_period_ms: u64,
}

impl HealthCheck {
    /// A check with Docker's defaults.
    pub fn new(test: HealthTest) -> Self {
        HealthCheck {
            test,
            interval_ms: DEFAULT_INTERVAL_MS,
            timeout_ms: DEFAULT_TIMEOUT_MS,
            retries: DEFAULT_RETRIES,
            start_period_ms: 0,
        }
    }

    /// Time between probes.
    pub fn interval(&self) -> Duration {
        Duration::from_millis(self.interval_ms)
    }

    /// How long one probe may take.
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }

    /// Checks the rules a check must meet; the message names the flag and the fix.
    pub fn validate(&self) -> Result<(), String> {
        let bad_path =
            |p: &str| !p.starts_with('/') || p.chars().any(|c| c.is_whitespace() || c.is_control());
        match &self.test {
            HealthTest::Command(cmd) if cmd.trim().is_empty() => {
                return Err(EMPTY_COMMAND.into());
            }
            HealthTest::Tcp { port: 0 } | HealthTest::Http { port: 0, .. } => {
                return Err(PORT_ZERO.into());
            }
            HealthTest::Http { path, .. } if bad_path(path) => {
                return Err(format!("--health-http: path {path:?} {BAD_PATH}"));
            }
            _ => {}
        }
        for (flag, ms) in [
            ("--health-interval", self.interval_ms),
            ("--health-timeout", self.timeout_ms),
        ] {
            if ms < MIN_PERIOD_MS {
                return Err(format!(
                    "{flag} {ms}ms is below the {MIN_PERIOD_MS}ms a probe needs; give at least {MIN_PERIOD_MS}ms"
                ));
            }
        }
        if self.retries == 0 {
            return Err(NO_RETRIES.into());
        }
        Ok(())
    }
}

/// The `service create` flags of a health check (docker's names, plus `--health-tcp` and
/// `--health-http` for probes that need no shell in the image).
#[derive(Clone, Debug, Default, PartialEq, Eq, clap::Args)]
pub struct HealthFlags {
    /// Health probe: a shell command run inside each task; exit code 0 is healthy.
    #[arg(long, value_name = "CMD")]
    pub health_cmd: Option<String>,
    /// Health probe: a TCP connect to this port on each task's loopback.
    #[arg(long, value_name = "PORT")]
    pub health_tcp: Option<String>,
    /// Health probe: an HTTP GET to each task's loopback, e.g. 8080/healthz; 2xx/3xx is healthy.
    #[arg(long, value_name = "PORT[/PATH]")]
    pub health_http: Option<String>,
    /// Time between health probes (default 30s).
    #[arg(long, value_name = "DURATION")]
    pub health_interval: Option<String>,
    /// How long a health probe may run before it fails (default 30s).
    #[arg(long, value_name = "DURATION")]
    pub health_timeout: Option<String>,
    /// Failed probes in a row before a task is unhealthy and replaced (default 3).
    #[arg(long, value_name = "N")]
    pub health_retries: Option<u64>,
    /// Time after a task starts in which failed probes do not count (default 0s).
    #[arg(long, value_name = "DURATION")]
    pub health_start_period: Option<String>,
    /// Run no health check.
    #[arg(long)]
    pub no_healthcheck: bool,
}

impl HealthFlags {
    /// The check these flags describe (None: no check), or the first bad flag and its fix.
    pub fn healthcheck(&self) -> Result<Option<HealthCheck>, String> {
        let tests = [
            ("--health-cmd", self.health_cmd.is_some()),
            ("--health-tcp", self.health_tcp.is_some()),
            ("--health-http", self.health_http.is_some()),
        ];
        let given: Vec<&str> = tests
            .iter()
            .filter(|(_, on)| *on)
            .map(|(f, _)| *f)
            .collect();
        let options = [
            ("--health-interval", self.health_interval.is_some()),
            ("--health-timeout", self.health_timeout.is_some()),
            ("--health-retries", self.health_retries.is_some()),
            ("--health-start-period", self.health_start_period.is_some()),
        ];
        let option = options.iter().find(|(_, on)| *on).map(|(f, _)| *f);
        if self.no_healthcheck {
            if let Some(flag) = given.first().copied().or(option) {
                return Err(format!(
                    "--no-healthcheck and {flag} contradict each other; give one or the other"
                ));
            }
            return Ok(None);
        }
        let test = match given.as_slice() {
            [] => {
                return match option {
                    Some(flag) => Err(format!(
                        "{flag} needs a probe; add --health-cmd, --health-tcp or --health-http"
                    )),
                    None => Ok(None),
                };
            }
            [_] => {
                if let Some(cmd) = &self.health_cmd {
                    HealthTest::Command(cmd.clone())
                } else if let Some(port) = &self.health_tcp {
                    HealthTest::Tcp {
                        port: parse_port("--health-tcp", port)?,
                    }
                } else {
                    let text = self.health_http.as_deref().unwrap_or_default();
                    let (port, path) = match text.find('/') {
                        Some(at) => text.split_at(at),
                        None => (text, "/"),
                    };
                    HealthTest::Http {
                        port: parse_port("--health-http", port)?,
                        path: path.to_string(),
                    }
                }
            }
            many => {
                return Err(format!(
                    "{} each give a probe; a service has one, so keep one of them",
                    many.join(" and ")
                ))
            }
        };
        self.with_options(HealthCheck::new(test)).map(Some)
    }

    /// `check` with the interval, timeout, retries and start period these flags give, checked.
    fn with_options(&self, mut check: HealthCheck) -> Result<HealthCheck, String> {
        check.interval_ms = duration_flag(
            "--health-interval",
            self.health_interval.as_deref(),
            check.interval_ms,
        )?;
        check.timeout_ms = duration_flag(
            "--health-timeout",
            self.health_timeout.as_deref(),
            check.timeout_ms,
        )?;
        check.retries = self.health_retries.unwrap_or(check.retries);
        check.start_period_ms = duration_flag(
            "--health-start-period",
            self.health_start_period.as_deref(),
            check.start_period_ms,
        )?;
        check.validate()?;
        Ok(check)
    }
}

impl HealthFlags {
    /// The check after `service update` with these flags: unchanged without flags, replaced
    /// when a probe (or `--no-healthcheck`) is given, and the current check with the given
    /// options changed otherwise.
    pub fn updated(&self, current: Option<&HealthCheck>) -> Result<Option<HealthCheck>, String> {
        if *self == HealthFlags::default() {
            return Ok(current.cloned());
        }
        let probe = self.no_healthcheck
            || self.health_cmd.is_some()
            || self.health_tcp.is_some()
            || self.health_http.is_some();
        // A new probe, or options with no check to apply them to (`healthcheck` says so).
        let (false, Some(check)) = (probe, current) else {
            return self.healthcheck();
        };
        self.with_options(check.clone()).map(Some)
    }
}

fn parse_port(flag: &str, text: &str) -> Result<u16, String> {
    text.parse::<u16>()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| format!("{flag}: {text:?} is not a port (1-65535); write it like 8080"))
}

/// A running task's health, as `service ps` shows it next to Running.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskHealth {
    /// No probe has passed yet.
    Starting,
    /// The last probe passed.
    Healthy,
    /// `retries` probes in a row failed: the task is being replaced.
    Unhealthy,
}

impl TaskHealth {
    /// The word `service ps` shows.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskHealth::Starting => "starting",
            TaskHealth::Healthy => "healthy",
            TaskHealth::Unhealthy => "unhealthy",
        }
    }
}

/// One task's health as its agent tracks it: a pure state machine over probe results and the
/// time since the task started (no clock inside).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HealthTracker {
    /// The health now.
    pub health: TaskHealth,
    /// Failures in a row that counted.
    pub failures: u64,
    /// Whether a probe has passed since the start (which ends the start period early).
    pub passed_once: bool,
}

impl Default for HealthTracker {
    fn default() -> Self {
        HealthTracker {
            health: TaskHealth::Starting,
            failures: 0,
            passed_once: false,
        }
    }
}

impl HealthTracker {
    /// The state after a probe that ended `since_start_ms` after the task started.
    pub fn observe(self, check: &HealthCheck, passed: bool, since_start_ms: u64) -> Self {
        if self.health == TaskHealth::Unhealthy {
            // The task is being replaced; nothing brings it back.
            return self;
        }
        if passed {
            return HealthTracker {
                health: TaskHealth::Healthy,
                failures: 0,
                passed_once: true,
            };
        }
        if !self.passed_once && since_start_ms < check.start_period_ms {
            return self;
        }
        let failures = self.failures + 1;
        HealthTracker {
            health: if failures >= check.retries {
                TaskHealth::Unhealthy
            } else {
                self.health
            },
            failures,
            passed_once: self.passed_once,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags() -> HealthFlags {
        HealthFlags::default()
    }

    #[test]
    fn no_flags_mean_no_check_and_docker_defaults_apply() {
        assert_eq!(flags().healthcheck().unwrap(), None);
        let check = HealthFlags {
            health_cmd: Some("true".into()),
            ..flags()
        }
        .healthcheck()
        .unwrap()
        .unwrap();
        assert_eq!(check, HealthCheck::new(HealthTest::Command("true".into())));
        assert_eq!(
            (
                check.interval_ms,
                check.timeout_ms,
                check.retries,
                check.start_period_ms
            ),
            (30_000, 30_000, 3, 0)
        );
    }

    #[test]
    fn each_kind_of_probe_parses() {
        let check = HealthFlags {
            health_tcp: Some("8080".into()),
            health_interval: Some("2s".into()),
            health_timeout: Some("500ms".into()),
            health_retries: Some(5),
            health_start_period: Some("1m".into()),
            ..flags()
        }
        .healthcheck()
        .unwrap()
        .unwrap();
        assert_eq!(
            check,
            HealthCheck {
                test: HealthTest::Tcp { port: 8080 },
                interval_ms: 2000,
                timeout_ms: 500,
                retries: 5,
                start_period_ms: 60_000,
            }
        );
        let http = |text: &str| {
            HealthFlags {
                health_http: Some(text.into()),
                ..flags()
            }
            .healthcheck()
            .map(|c| c.unwrap().test)
        };
        assert_eq!(
            http("80").unwrap(),
            HealthTest::Http {
                port: 80,
                path: "/".into()
            }
        );
        assert_eq!(
            http("8080/healthz?x=1").unwrap(),
            HealthTest::Http {
                port: 8080,
                path: "/healthz?x=1".into()
            }
        );
        assert!(http("x/y").unwrap_err().contains("--health-http"));
        assert!(http("0").unwrap_err().contains("--health-http"));
    }

    #[test]
    fn bad_flags_name_the_flag_and_the_fix() {
        let cases = [
            (
                HealthFlags {
                    health_cmd: Some("true".into()),
                    health_tcp: Some("80".into()),
                    ..flags()
                },
                "keep one",
            ),
            (
                HealthFlags {
                    health_interval: Some("5s".into()),
                    ..flags()
                },
                "--health-interval needs a probe",
            ),
            (
                HealthFlags {
                    no_healthcheck: true,
                    health_cmd: Some("true".into()),
                    ..flags()
                },
                "--no-healthcheck and --health-cmd",
            ),
            (
                HealthFlags {
                    health_cmd: Some(" ".into()),
                    ..flags()
                },
                "--health-cmd is empty",
            ),
            (
                HealthFlags {
                    health_cmd: Some("true".into()),
                    health_retries: Some(0),
                    ..flags()
                },
                "--health-retries 0",
            ),
            (
                HealthFlags {
                    health_cmd: Some("true".into()),
                    health_interval: Some("10ms".into()),
                    ..flags()
                },
                "--health-interval 10ms",
            ),
            (
                HealthFlags {
                    health_cmd: Some("true".into()),
                    health_timeout: Some("soon".into()),
                    ..flags()
                },
                "--health-timeout",
            ),
            (
                HealthFlags {
                    health_tcp: Some("99999".into()),
                    ..flags()
                },
                "--health-tcp",
            ),
        ];
        for (flags, needle) in cases {
            let err = flags.healthcheck().unwrap_err();
            assert!(err.contains(needle), "{needle}: {err}");
        }
        assert_eq!(
            HealthFlags {
                no_healthcheck: true,
                ..flags()
            }
            .healthcheck()
            .unwrap(),
            None
        );
    }

    fn check(retries: u64, start_period_ms: u64) -> HealthCheck {
        HealthCheck {
            retries,
            start_period_ms,
            ..HealthCheck::new(HealthTest::Tcp { port: 80 })
        }
    }

    /// Runs probes (passed, ms since start) through a fresh tracker; the health after each.
    fn run(check: &HealthCheck, probes: &[(bool, u64)]) -> Vec<TaskHealth> {
        let mut tracker = HealthTracker::default();
        probes
            .iter()
            .map(|&(passed, at)| {
                tracker = tracker.observe(check, passed, at);
                tracker.health
            })
            .collect()
    }

    use TaskHealth::{Healthy, Starting, Unhealthy};

    #[test]
    fn failures_within_the_start_period_do_not_count() {
        let check = check(2, 10_000);
        assert_eq!(
            run(
                &check,
                &[(false, 1000), (false, 5000), (false, 9000), (true, 9500)]
            ),
            [Starting, Starting, Starting, Healthy]
        );
        // Still failing after the start period: `retries` failures from then on.
        assert_eq!(
            run(&check, &[(false, 9000), (false, 10_000), (false, 11_000)]),
            [Starting, Starting, Unhealthy]
        );
    }

    #[test]
    fn a_pass_ends_the_start_period_early() {
        let check = check(2, 60_000);
        assert_eq!(
            run(&check, &[(true, 1000), (false, 2000), (false, 3000)]),
            [Healthy, Healthy, Unhealthy]
        );
    }

    #[test]
    fn only_failures_in_a_row_count() {
        let check = check(3, 0);
        assert_eq!(
            run(
                &check,
                &[
                    (false, 1),
                    (false, 2),
                    (true, 3),
                    (false, 4),
                    (false, 5),
                    (false, 6),
                    (true, 7)
                ]
            ),
            [Starting, Starting, Healthy, Healthy, Healthy, Unhealthy, Unhealthy]
        );
    }

    #[test]
    fn one_retry_fails_at_the_first_failure() {
        assert_eq!(run(&check(1, 0), &[(false, 0)]), [Unhealthy]);
    }
}
