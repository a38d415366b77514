//! mesh-linkshim: the lab's userspace link emulator (see `lab::linkshim`). The lab starts it
//! inside a switch namespace; it is not meant to be run by hand.

use std::process::ExitCode;
use std::time::Duration;

const USAGE: &str = "usage: mesh-linkshim HOST_PORT BRIDGE_SIDE DELAY_MS";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [host_port, bridge_side, delay] = args.as_slice() else {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    };
    let Ok(delay_ms) = delay.parse::<u64>() else {
        eprintln!("DELAY_MS must be a whole number of milliseconds, got {delay:?}\n{USAGE}");
        return ExitCode::from(2);
    };
    match lab::linkshim::run(host_port, bridge_side, Duration::from_millis(delay_ms)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("mesh-linkshim {host_port} -> {bridge_side}: {err}");
            ExitCode::FAILURE
        }
    }
}
