//! The host's balancer, on the path `--lb-mode` chose: started at the first convergence (the
//! underlay interface is known then), kept for meshd's lifetime (agents come and go with role
//! changes; the programs stay attached), converged whenever the desired state changes.

use std::path::PathBuf;
use std::sync::Mutex;

use dataplane::lb::bpf::{BpfBalancer, BpfHook};
use dataplane::lb::nft::NftBalancer;
use dataplane::lb::vip::{VipBalancer, VipTask};
use dataplane::lb::{BackendState, HostLb, LbCounter, LbError, LbMode, LbPath};

use crate::diag::LbCheck;

/// Published ports, through BPF or nftables.
enum Ingress {
    Bpf(Box<BpfBalancer>),
    Nft(NftBalancer),
}

impl Ingress {
    fn apply(&mut self, desired: &HostLb) -> Result<(), LbError> {
        match self {
            Ingress::Bpf(b) => b.apply(desired),
            Ingress::Nft(n) => n.apply(desired),
        }
    }

    fn path(&self) -> LbPath {
        match self {
            Ingress::Bpf(b) => b.path(),
            Ingress::Nft(n) => n.path(),
        }
    }

    fn counters(&self) -> Result<Vec<LbCounter>, LbError> {
        match self {
            Ingress::Bpf(b) => b.counters(),
            Ingress::Nft(n) => n.counters(),
        }
    }
}

#[derive(Default)]
struct State {
    ingress: Option<Ingress>,
    vip: Option<VipBalancer>,
    /// What was converged last, so an unchanged state costs nothing.
    applied: Option<(HostLb, Vec<VipTask>)>,
    /// The last failure, for `diag lb` (cleared by a successful convergence).
    error: Option<String>,
}

/// The balancer of one host.
pub struct Balancer {
    mode: LbMode,
    overlay_dir: PathBuf,
    state: Mutex<State>,
}

impl Balancer {
    /// A balancer that starts on the first `apply`; `overlay_dir` holds the networks'
    /// namespaces.
    pub fn new(mode: LbMode, overlay_dir: PathBuf) -> Self {
        Balancer {
            mode,
            overlay_dir,
            state: Mutex::new(State::default()),
        }
    }

    /// Converges the kernel to `desired`, starting the balancer first if it does not run.
    /// Blocking (BPF syscalls, `nft`): call it off the async threads. Failures are kept for
    /// `diag lb`, logged, and retried with the next call.
    pub fn apply(&self, desired: &HostLb, vip_tasks: &[VipTask]) {
        let mut state = self.state.lock().expect("balancer lock");
        if state.ingress.is_none() {
            match self.start(&desired.underlay_if) {
                Ok(ingress) => {
                    tracing::info!(path = %ingress.path(), interface = %desired.underlay_if, "load balancer started");
                    state.vip = match ingress {
                        Ingress::Bpf(_) => match VipBalancer::new(&self.overlay_dir) {
                            Ok(vip) => Some(vip),
                            Err(err) => {
                                tracing::warn!(error = %err, "service VIPs have no balancer");
                                None
                            }
                        },
                        // VIPs are balanced by BPF on the tasks' veths; without BPF they
                        // answer nothing, and `diag lb` says so.
                        Ingress::Nft(_) => None,
                    };
                    state.ingress = Some(ingress);
                }
                Err(err) => {
                    let message =
                        format!("starting the load balancer ({:?} mode): {err}", self.mode);
                    if state.error.as_deref() != Some(message.as_str()) {
                        tracing::warn!(error = %message, "published ports answer nowhere on this host");
                    }
                    state.error = Some(message);
                    return;
                }
            }
        }
        let unchanged = state
            .applied
            .as_ref()
            .is_some_and(|(lb, tasks)| lb == desired && tasks.as_slice() == vip_tasks);
        if unchanged && state.error.is_none() {
            return;
        }
        let State { ingress, vip, .. } = &mut *state;
        let mut result = ingress
            .as_mut()
            .expect("started above")
            .apply(desired)
            .map_err(|err| format!("converging published ports: {err}"));
        if let (Ok(()), Some(vip)) = (&result, vip.as_mut()) {
            result = vip
                .apply(desired, vip_tasks)
                .map_err(|err| format!("converging service VIPs: {err}"));
        }
        match result {
            Ok(()) => {
                let before = state.applied.as_ref().map(|(lb, _)| backends(lb));
                let now = backends(desired);
                if before.as_ref() != Some(&now) {
                    tracing::info!(backends = %now, "load balancer converged");
                }
                state.applied = Some((desired.clone(), vip_tasks.to_vec()));
                state.error = None;
            }
            Err(message) => {
                tracing::warn!(error = %message, "load balancer; retrying with the next convergence");
                state.applied = None;
                state.error = Some(message);
            }
        }
    }

    fn start(&self, interface: &str) -> Result<Ingress, LbError> {
        let bpf = |hook| {
            BpfBalancer::new(hook, interface, &self.overlay_dir).map(|b| Ingress::Bpf(Box::new(b)))
        };
        match self.mode {
            LbMode::Xdp => bpf(BpfHook::Xdp),
            LbMode::Tc => bpf(BpfHook::Tc),
            LbMode::Nftables => self.nftables(interface),
            LbMode::Auto => bpf(BpfHook::preferred_for(interface)).or_else(|err| {
                tracing::warn!(error = %err, "BPF cannot balance here; falling back to nftables");
                self.nftables(interface)
            }),
        }
    }

    /// The nftables balancer, after detaching the BPF programs a previous run in a BPF mode
    /// left pinned (they would see the packets first, with tables nobody updates).
    fn nftables(&self, interface: &str) -> Result<Ingress, LbError> {
        dataplane::lb::bpf::remove_leftovers(&self.overlay_dir);
        NftBalancer::new(interface, &self.overlay_dir).map(Ingress::Nft)
    }

    /// The path, what is programmed, and the counters, for `meshctl diag lb`.
    pub fn check(&self) -> LbCheck {
        let state = self.state.lock().expect("balancer lock");
        let mut check = LbCheck {
            mode: mode_name(self.mode).into(),
            path: state.ingress.as_ref().map(|i| i.path().to_string()),
            vip_path: state.vip.as_ref().map(|_| LbPath::Tc.to_string()),
            error: state.error.clone(),
            ..LbCheck::default()
        };
        if let Some((lb, _)) = &state.applied {
            check.services = lb.services.len();
            check.backends = lb.services.iter().map(|s| s.backends.len()).sum();
        }
        let mut counters = Vec::new();
        if let Some(ingress) = &state.ingress {
            match ingress.counters() {
                Ok(c) => counters.extend(c),
                Err(err) => check.error = Some(format!("reading counters: {err}")),
            }
        }
        if let Some(vip) = &state.vip {
            match vip.counters() {
                Ok(c) => counters.extend(c.into_iter().map(|c| LbCounter {
                    name: format!("vip:{}", c.name),
                    packets: c.packets,
                })),
                Err(err) => check.error = Some(format!("reading VIP counters: {err}")),
            }
        }
        check.counters = counters.into_iter().map(|c| (c.name, c.packets)).collect();
        check
    }
}

fn mode_name(mode: LbMode) -> &'static str {
    match mode {
        LbMode::Auto => "auto",
        LbMode::Xdp => "xdp",
        LbMode::Tc => "tc",
        LbMode::Nftables => "nftables",
    }
}

/// Every service's backends in one line, for the log: `web: 1a2b3c4d@198.18.0.3 active, ...`.
fn backends(lb: &HostLb) -> String {
    let mut services: Vec<String> = lb
        .services
        .iter()
        .map(|service| {
            let mut backends: Vec<String> = service
                .backends
                .iter()
                .map(|b| {
                    let state = match b.state {
                        BackendState::Active => "active",
                        BackendState::Draining => "draining",
                    };
                    let id = b.task_id.get(..8).unwrap_or(&b.task_id);
                    format!("{id}@{} {state}", b.vtep)
                })
                .collect();
            backends.sort();
            format!("{}: {}", service.name, backends.join(", "))
        })
        .collect();
    services.sort();
    services.join("; ")
}
