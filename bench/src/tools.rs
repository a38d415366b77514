//! Running the external baseline tools inside lab hosts (iperf3, wrk, dnsperf) and reading
//! their output. Parsers are pure and tested against real output.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use lab::Lab;

/// Runs `argv` in `host` and returns stdout; a failure carries the tool's stderr.
pub fn sh<S: AsRef<str>>(lab: &Lab, host: &str, argv: &[S]) -> Result<String> {
    let argv: Vec<&str> = argv.iter().map(AsRef::as_ref).collect();
    let output = lab
        .output(host, &argv)
        .with_context(|| format!("running {} on {host}", argv[0]))?;
    if !output.status.success() {
        bail!(
            "{} on {host} failed ({}): {}{}",
            argv.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim(),
            String::from_utf8_lossy(&output.stdout).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// An argv that runs `argv` inside network namespace `netns` (for task namespaces nested in a
/// lab host). nsenter switches only the network namespace; `ip netns exec` would also remount
/// /sys, which fails where / is not a mount point (a chroot).
pub fn in_ns(netns: &str, argv: &[&str]) -> Vec<String> {
    std::iter::once("nsenter".to_string())
        .chain(std::iter::once(format!("--net=/run/netns/{netns}")))
        .chain(argv.iter().map(|a| a.to_string()))
        .collect()
}

/// iperf3 client throughput in Gbit/s from `iperf3 -J` output (what the receiver got).
pub fn parse_iperf3_gbps(json: &str) -> Result<f64> {
    let value: serde_json::Value =
        serde_json::from_str(json).context("iperf3 -J output is not JSON")?;
    if let Some(error) = value.get("error").and_then(|e| e.as_str()) {
        bail!("iperf3: {error}");
    }
    value
        .pointer("/end/sum_received/bits_per_second")
        .and_then(|b| b.as_f64())
        .map(|bps| bps / 1e9)
        .context("iperf3 output has no end.sum_received.bits_per_second")
}

/// What wrk reports.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct WrkResult {
    /// Completed requests per second.
    pub requests_per_sec: f64,
    /// Median latency, µs.
    pub p50_us: f64,
    /// 99th percentile latency, µs.
    pub p99_us: f64,
    /// Connect, read, write and timeout errors plus non-2xx answers.
    pub errors: u64,
}

/// Parses `wrk --latency` output.
pub fn parse_wrk(text: &str) -> Result<WrkResult> {
    let mut result = WrkResult {
        requests_per_sec: f64::NAN,
        p50_us: f64::NAN,
        p99_us: f64::NAN,
        errors: 0,
    };
    for line in text.lines().map(str::trim) {
        let mut words = line.split_whitespace();
        match words.next() {
            Some("Requests/sec:") => {
                result.requests_per_sec = words
                    .next()
                    .context("Requests/sec without a value")?
                    .parse()?;
            }
            Some("50%") => {
                result.p50_us = parse_duration_us(words.next().context("50% without a value")?)?
            }
            Some("99%") => {
                result.p99_us = parse_duration_us(words.next().context("99% without a value")?)?
            }
            Some("Socket") => {
                // "Socket errors: connect 0, read 0, write 0, timeout 0"
                result.errors += line
                    .split(',')
                    .filter_map(|part| part.split_whitespace().last()?.parse::<u64>().ok())
                    .sum::<u64>();
            }
            Some("Non-2xx") => {
                result.errors += line
                    .rsplit(' ')
                    .next()
                    .and_then(|n| n.parse::<u64>().ok())
                    .unwrap_or(0);
            }
            _ => {}
        }
    }
    if result.requests_per_sec.is_nan() || result.p50_us.is_nan() || result.p99_us.is_nan() {
        bail!("wrk output lacks Requests/sec or the latency distribution (was --latency given?):\n{text}");
    }
    Ok(result)
}

/// "523.00us", "2.10ms", "1.02s" in microseconds.
fn parse_duration_us(text: &str) -> Result<f64> {
    let (number, scale) = if let Some(n) = text.strip_suffix("us") {
        (n, 1.0)
    } else if let Some(n) = text.strip_suffix("ms") {
        (n, 1e3)
    } else if let Some(n) = text.strip_suffix('m') {
        (n, 60e6)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1e6)
    } else {
        bail!("unknown duration {text:?}");
    };
    Ok(number
        .parse::<f64>()
        .with_context(|| format!("duration {text:?}"))?
        * scale)
}

/// Runs wrk from `host` against `url` for `duration` with `connections` connections; with
/// `close`, every request opens a new connection.
pub fn wrk(
    lab: &Lab,
    host: &str,
    url: &str,
    connections: usize,
    duration: Duration,
    close: bool,
) -> Result<WrkResult> {
    let connections = connections.to_string();
    let seconds = format!("{}s", duration.as_secs().max(1));
    let mut argv = vec![
        "wrk",
        "--latency",
        "-t",
        "1",
        "-c",
        &connections,
        "-d",
        &seconds,
        "--timeout",
        "2s",
    ];
    if close {
        argv.extend(["-H", "Connection: close"]);
    }
    argv.push(url);
    parse_wrk(&sh(lab, host, &argv)?)
}

/// Applies an nftables script in `host` as one atomic batch (`nft -f`).
pub fn nft_apply(lab: &Lab, host: &str, script: &str) -> Result<()> {
    static SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let file = std::env::temp_dir().join(format!("mesh-bench-{}-{n}.nft", std::process::id()));
    std::fs::write(&file, script).with_context(|| format!("writing {}", file.display()))?;
    let result = sh(lab, host, &["nft", "-f", &file.to_string_lossy()]);
    let _ = std::fs::remove_file(&file);
    result.map(drop)
}

/// The packet count of the first `counter packets N` in an nft listing.
pub fn parse_nft_counter(listing: &str) -> Result<u64> {
    let mut words = listing.split_whitespace();
    while let Some(word) = words.next() {
        if word == "packets" {
            return words
                .next()
                .context("`packets` without a count")?
                .parse()
                .context("nft packet count");
        }
    }
    bail!("no counter in nft listing:\n{listing}")
}

#[cfg(test)]
mod tests {
    use super::*;

    const WRK_OUTPUT: &str = "Running 1s test @ http://198.18.0.2:8080/
  1 threads and 16 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   591.55us  301.57us   6.83ms   91.73%
    Req/Sec    26.40k     1.07k   27.49k    80.00%
  Latency Distribution
     50%  542.00us
     75%  641.00us
     90%  771.00us
     99%    1.93ms
  26263 requests in 1.00s, 2.88MB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 4
Requests/sec:  26263.79
Transfer/sec:      2.88MB
";

    #[test]
    fn wrk_output_gives_rate_percentiles_and_errors() {
        let result = parse_wrk(WRK_OUTPUT).unwrap();
        assert_eq!(result.requests_per_sec, 26263.79);
        assert_eq!(result.p50_us, 542.0);
        assert_eq!(result.p99_us, 1930.0);
        assert_eq!(result.errors, 7);
    }

    #[test]
    fn wrk_output_without_latency_is_refused() {
        assert!(parse_wrk("Requests/sec: 10\n").is_err());
    }

    #[test]
    fn nft_counter_is_read_from_a_listing() {
        let listing = "table netdev t {\n\tchain ingress {\n\t\tudp dport 9000 counter packets 123456 bytes 7407360 drop\n\t}\n}\n";
        assert_eq!(parse_nft_counter(listing).unwrap(), 123456);
        assert!(parse_nft_counter("table netdev t {}").is_err());
    }

    #[test]
    fn durations_in_every_unit() {
        assert_eq!(parse_duration_us("12.5us").unwrap(), 12.5);
        assert_eq!(parse_duration_us("2.10ms").unwrap(), 2100.0);
        assert_eq!(parse_duration_us("1.5s").unwrap(), 1_500_000.0);
        assert!(parse_duration_us("3h").is_err());
    }

    #[test]
    fn iperf3_json_gives_received_gbps_or_its_error() {
        let json = r#"{"end":{"sum_received":{"bits_per_second":12500000000.0}}}"#;
        assert_eq!(parse_iperf3_gbps(json).unwrap(), 12.5);
        let err = parse_iperf3_gbps(r#"{"error":"unable to connect to server"}"#).unwrap_err();
        assert!(err.to_string().contains("unable to connect"));
        assert!(parse_iperf3_gbps("not json").is_err());
    }
}
