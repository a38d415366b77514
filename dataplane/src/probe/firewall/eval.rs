//! The ruleset model both front ends (nft JSON, iptables-save) are translated to, and the walk
//! that follows one required port's first packet through it.

use std::collections::HashMap;

use serde::Serialize;

use super::{render, Finding, RequiredPort};

/// Jumps followed before giving up (the kernel allows 16 levels in nftables, 32 in legacy).
pub(crate) const MAX_DEPTH: usize = 16;

/// One condition of a rule, as far as a required port's traffic is concerned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Cond {
    /// The IP protocol is (or, negated, is not) one of these numbers.
    Proto { numbers: Vec<u8>, negated: bool },
    /// The destination port is (or, negated, is not) in one of these inclusive ranges.
    DPort {
        ranges: Vec<(u16, u16)>,
        negated: bool,
    },
    /// Source or destination port in these ranges (iptables multiport `--ports`).
    AnyPort { ranges: Vec<(u16, u16)> },
    /// A condition on something else: matches some of the port's traffic.
    Other(String),
    /// A condition a peer's first packet never meets (loopback, `ct state established`, ...).
    Never,
    /// A condition we cannot evaluate.
    Unknown(String),
}

/// What a rule does when it matches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Action {
    /// Accept (also: NAT statements, which end their chain).
    Accept,
    /// Drop or reject; the word as the rule says it.
    Drop(&'static str),
    /// Jump to a chain (key in [`Ruleset::chains`]).
    Jump(String),
    /// Go to a chain (key in [`Ruleset::chains`]).
    Goto(String),
    /// Return to the calling chain.
    Return,
    /// No verdict: the next rule is evaluated.
    Continue,
    /// A verdict we cannot evaluate (queue, ...).
    Unknown(String),
}

/// A rule's action, possibly chosen by destination port (nft verdict maps).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum ActionSpec {
    /// Always this action.
    Fixed(Action),
    /// `<proto> dport vmap { port : verdict, ... }`: no entry means no verdict.
    ByPort {
        protocol: Option<u8>,
        entries: Vec<((u16, u16), Action)>,
    },
}

/// How to write the fix for a rule or a policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Fixer {
    /// `nft ... <family> <table> <chain>`, the rule's handle if a rule.
    Nft {
        family: String,
        table: String,
        chain: String,
        handle: Option<u64>,
    },
    /// `<tool> -t <table> ... <chain>`, the rule's 1-based position if a rule.
    Iptables {
        tool: String,
        table: String,
        chain: String,
        position: Option<usize>,
    },
}

/// One rule of a chain.
#[derive(Clone, Debug)]
pub(crate) struct Rule {
    /// "nft inet filter input handle 7".
    pub location: String,
    /// The rule's text.
    pub text: String,
    /// All must hold for the rule to match.
    pub conds: Vec<Cond>,
    /// What it does.
    pub action: ActionSpec,
    /// How to fix it.
    pub fixer: Fixer,
}

/// Which traffic a base chain sees.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Direction {
    /// Packets arriving for this host (ingress, prerouting, input).
    Incoming,
    /// Packets routed through this host (forward).
    Forwarded,
    /// Packets this host sends (output, postrouting, egress).
    Outgoing,
}

/// A chain attached to a hook, with its policy.
#[derive(Clone, Debug)]
pub(crate) struct Base {
    /// Key in [`Ruleset::chains`].
    pub chain: String,
    /// The traffic it sees.
    pub direction: Direction,
    /// Whether unmatched packets are dropped.
    pub policy_drop: bool,
    /// "nft inet filter input policy".
    pub location: String,
    /// The chain's declaration, shown as the finding's rule.
    pub text: String,
    /// Whether the chain sees IPv6 only (ip6 tables, ip6tables): its findings are warnings.
    pub ipv6_only: bool,
    /// How to append an accept.
    pub fixer: Fixer,
}

/// A ruleset translated from nft or iptables.
#[derive(Clone, Debug, Default)]
pub(crate) struct Ruleset {
    /// Every chain's rules, by key.
    pub chains: HashMap<String, Vec<Rule>>,
    /// The base chains, in listing order.
    pub bases: Vec<Base>,
}

/// Findings and notes of one ruleset.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Analysis {
    /// Rules and policies that drop required ports.
    pub findings: Vec<Finding>,
    /// Rules that could not be evaluated, sources skipped.
    pub notes: Vec<String>,
}

/// How a rule's conditions relate to one port's traffic.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Fit {
    /// None of it.
    No,
    /// All of it; `named` when a port condition said so.
    All { named: bool },
    /// Some of it, and the conditions that decide which.
    Some { named: bool, why: Vec<String> },
    /// Cannot tell.
    Unknown(String),
}

fn in_ranges(ranges: &[(u16, u16)], port: u16) -> bool {
    ranges.iter().any(|&(lo, hi)| lo <= port && port <= hi)
}

fn fit(conds: &[Cond], port: &RequiredPort) -> Fit {
    let mut named = false;
    let mut why = Vec::new();
    let mut unknown = None;
    for cond in conds {
        match cond {
            Cond::Proto { numbers, negated } => {
                if numbers.contains(&port.protocol.number()) == *negated {
                    return Fit::No;
                }
            }
            Cond::DPort { ranges, negated } => {
                if in_ranges(ranges, port.port) == *negated {
                    return Fit::No;
                }
                named = named || !negated;
            }
            Cond::AnyPort { ranges } => {
                if in_ranges(ranges, port.port) {
                    named = true;
                } else {
                    why.push("its source port".to_string());
                }
            }
            Cond::Other(what) => why.push(what.clone()),
            Cond::Never => return Fit::No,
            Cond::Unknown(what) => unknown = Some(what.clone()),
        }
    }
    match unknown {
        Some(what) => Fit::Unknown(what),
        None if why.is_empty() => Fit::All { named },
        None => Fit::Some { named, why },
    }
}

impl ActionSpec {
    fn resolve(&self, port: &RequiredPort) -> Action {
        match self {
            ActionSpec::Fixed(action) => action.clone(),
            ActionSpec::ByPort { protocol, entries } => {
                if protocol.is_some_and(|p| p != port.protocol.number()) {
                    return Action::Continue;
                }
                entries
                    .iter()
                    .find(|(range, _)| in_ranges(&[*range], port.port))
                    .map_or(Action::Continue, |(_, action)| action.clone())
            }
        }
    }
}

/// Where a port's traffic went when a chain was done with it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Flow {
    /// All of it accepted.
    Accepted,
    /// All of it dropped.
    Dropped,
    /// All of it continues after the jump (fell off the end or returned).
    Open,
    /// Some of it was decided, the rest continues after the jump.
    Mixed,
}

/// One drop seen by a walk.
pub(crate) struct Hit {
    /// Index into the chain and rule, or None for the base chain's policy.
    pub rule: Option<(String, usize)>,
    /// Conditions that make it apply to only some traffic.
    pub partial: Vec<String>,
    /// Earlier rules through which some of the traffic escaped (accepted, returned, unknown).
    pub escaped: Vec<String>,
    /// Jumps that led there.
    pub via: Vec<String>,
    /// Whether a port condition named the port (forward chains report only those).
    pub named: bool,
}

struct Walk<'a> {
    rules: &'a Ruleset,
    port: &'a RequiredPort,
    hits: Vec<Hit>,
    notes: Vec<String>,
    /// Rules that accepted part of the traffic: gone for every later rule.
    accepted_some: Vec<String>,
    via: Vec<String>,
}

impl Walk<'_> {
    /// Follows the traffic through `chain`. `conditional` names the rule that sent only part of
    /// the traffic here (then nothing decided here decides the caller's traffic).
    fn walk(&mut self, chain: &str, conditional: Option<&str>, depth: usize) -> Flow {
        let Some(rules) = self.rules.chains.get(chain) else {
            self.notes.push(format!(
                "could not evaluate a jump to chain {chain}: it is not in the ruleset"
            ));
            return Flow::Open;
        };
        // Rules through which part of this chain's traffic left it, back to the caller.
        let mut left_some: Vec<String> = Vec::new();
        let decided = |flow: Flow, left_some: &[String]| {
            if left_some.is_empty() {
                flow
            } else {
                Flow::Mixed
            }
        };
        for (index, rule) in rules.iter().enumerate() {
            let (named, mut why) = match fit(&rule.conds, self.port) {
                Fit::No => continue,
                Fit::All { named } => (named, Vec::new()),
                Fit::Some { named, why } => (named, why),
                Fit::Unknown(what) => {
                    let action = rule.action.resolve(self.port);
                    let may_pass = !matches!(action, Action::Drop(_) | Action::Continue);
                    self.unknown(rule, &what, may_pass);
                    continue;
                }
            };
            // `all`: the rule takes all the traffic that reaches it, which ends this chain's
            // walk; `why` also holds the conditions under which traffic reached this chain.
            let all = why.is_empty();
            if let Some(cond) = conditional {
                why.push(cond.to_string());
            }
            match rule.action.resolve(self.port) {
                Action::Continue => {}
                Action::Accept if all => {
                    if conditional.is_some() {
                        self.accepted_some.push(rule.location.clone());
                    }
                    return decided(Flow::Accepted, &left_some);
                }
                Action::Accept => self.accepted_some.push(rule.location.clone()),
                Action::Drop(_) => {
                    let mut escaped = self.accepted_some.clone();
                    escaped.extend(left_some.iter().cloned());
                    self.hits.push(Hit {
                        rule: Some((chain.to_string(), index)),
                        partial: why,
                        escaped,
                        via: self.via.clone(),
                        named,
                    });
                    if all {
                        return decided(Flow::Dropped, &left_some);
                    }
                }
                Action::Return if all => return Flow::Open,
                Action::Return => left_some.push(rule.location.clone()),
                Action::Jump(target) | Action::Goto(target) if depth >= MAX_DEPTH => {
                    let what = format!("more than {MAX_DEPTH} nested jumps (to {target})");
                    self.unknown(rule, &what, true);
                }
                Action::Jump(target) => match self.follow(rule, &target, &why, depth) {
                    _ if !all => {}
                    Flow::Open => {}
                    Flow::Mixed => self.accepted_some.push(rule.location.clone()),
                    flow => return decided(flow, &left_some),
                },
                Action::Goto(target) => match self.follow(rule, &target, &why, depth) {
                    _ if !all => left_some.push(rule.location.clone()),
                    Flow::Open => return Flow::Open,
                    Flow::Mixed => return Flow::Mixed,
                    flow => return decided(flow, &left_some),
                },
                Action::Unknown(what) => self.unknown(rule, &what, true),
            }
        }
        Flow::Open
    }

    /// Walks a jump's or goto's target chain.
    fn follow(&mut self, rule: &Rule, target: &str, why: &[String], depth: usize) -> Flow {
        // Only traffic meeting the jump's conditions goes there: they condition every drop.
        let cond = (!why.is_empty()).then(|| why.join("; "));
        self.via
            .push(format!("{} (`{}`)", rule.location, rule.text));
        let flow = self.walk(target, cond.as_deref(), depth + 1);
        self.via.pop();
        flow
    }

    /// Notes a rule that cannot be evaluated; if it `may_pass` traffic, later drops only see
    /// part of it.
    fn unknown(&mut self, rule: &Rule, what: &str, may_pass: bool) {
        self.notes.push(format!(
            "could not evaluate {} (`{}`): {what}",
            rule.location, rule.text
        ));
        if may_pass {
            self.accepted_some.push(rule.location.clone());
        }
    }
}

/// Walks every base chain for every port, and groups the drops found into findings.
pub(crate) fn analyze(rules: &Ruleset, ports: &[RequiredPort]) -> Analysis {
    let mut groups: Vec<Group> = Vec::new();
    let mut notes: Vec<String> = Vec::new();
    for (base_index, base) in rules.bases.iter().enumerate() {
        for port in ports {
            let mut walk = Walk {
                rules,
                port,
                hits: Vec::new(),
                notes: Vec::new(),
                accepted_some: Vec::new(),
                via: Vec::new(),
            };
            let flow = walk.walk(&base.chain, None, 0);
            let open = matches!(flow, Flow::Open | Flow::Mixed);
            if open && base.policy_drop && base.direction != Direction::Forwarded {
                walk.hits.push(Hit {
                    rule: None,
                    partial: Vec::new(),
                    escaped: walk.accepted_some.clone(),
                    via: Vec::new(),
                    named: false,
                });
            }
            for hit in walk.hits {
                if base.direction == Direction::Forwarded && !hit.named {
                    continue;
                }
                add_to_group(&mut groups, base_index, hit, port);
            }
            for note in walk.notes {
                if !notes.contains(&note) {
                    notes.push(note);
                }
            }
        }
    }
    // In ruleset order: by base chain, then chain and rule, policies last.
    groups.sort_by_key(|g| (g.base, g.hit.rule.is_none(), g.hit.rule.clone()));
    let mut findings: Vec<Finding> = groups
        .iter()
        .map(|group| render::finding(rules, &rules.bases[group.base], group))
        .collect();
    findings.sort_by_key(|f| f.severity);
    Analysis { findings, notes }
}

/// The same drop (same rule or policy, same circumstances) for one or more ports.
pub(crate) struct Group {
    /// Index into [`Ruleset::bases`] of the chain whose walk found it.
    pub base: usize,
    /// The first hit; later ports' hits differ at most in their port.
    pub hit: Hit,
    /// The ports it drops.
    pub ports: Vec<RequiredPort>,
}

fn add_to_group(groups: &mut Vec<Group>, base: usize, hit: Hit, port: &RequiredPort) {
    let same = |g: &Group| {
        g.base == base
            && g.hit.rule == hit.rule
            && g.hit.partial.is_empty() == hit.partial.is_empty()
            && g.hit.escaped.is_empty() == hit.escaped.is_empty()
    };
    match groups.iter_mut().find(|g| same(g)) {
        Some(group) if !group.ports.contains(port) => group.ports.push(port.clone()),
        Some(_) => {}
        None => groups.push(Group {
            base,
            hit,
            ports: vec![port.clone()],
        }),
    }
}
