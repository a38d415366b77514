//! Helpers shared by the analysis tests.

use super::{required_ports, Finding, Protocol, RequiredPort, Severity};

/// A finding reduced to what tests compare: location, severity, (protocol, port)s.
pub(crate) type Summary = (String, Severity, Vec<(Protocol, u16)>);

/// The default cluster's ports.
pub(crate) fn ports() -> Vec<RequiredPort> {
    required_ports(4789, 7946, 2377)
}

/// One of the default cluster's ports.
pub(crate) fn port(protocol: Protocol, number: u16) -> RequiredPort {
    ports()
        .into_iter()
        .find(|p| p.protocol == protocol && p.port == number)
        .expect("a required port")
}

/// Location, severity and ports of each finding, in order.
pub(crate) fn summary(findings: &[Finding]) -> Vec<Summary> {
    findings
        .iter()
        .map(|f| {
            let ports = f.ports.iter().map(|p| (p.protocol, p.port)).collect();
            (f.location.clone(), f.severity, ports)
        })
        .collect()
}
