//! Ordered allow/deny rules, evaluated first-match-wins like a firewall.
//!
//! With no rules at all, everything is allowed (the listener's address and authentication
//! are then the only gate). As soon as one rule exists, a request that matches none is
//! denied, as in Dante: a rule list is an allow list unless it says otherwise.

use std::net::IpAddr;
use std::ops::RangeInclusive;
use std::str::FromStr;

use ferrosocks_proto::Command;

/// Allow or deny.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Let the request through.
    Allow,
    /// Answer with REP `X'02'`.
    Deny,
}

/// An IP network in CIDR notation; a bare address is a /32 or /128.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Whether `ip` lies in the network. IPv4-mapped IPv6 addresses count as IPv4.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.network, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }

    /// Whether this network holds only loopback addresses.
    pub fn is_loopback_only(&self) -> bool {
        match self.network {
            IpAddr::V4(n) => n.is_loopback() && self.prefix >= 8,
            IpAddr::V6(n) => n.is_loopback() && self.prefix == 128,
        }
    }
}

impl FromStr for Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let network: IpAddr = addr
            .parse()
            .map_err(|_| format!("{s:?} is not an IP address or CIDR network"))?;
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{s:?}: prefix length must be 0 to {max}"))?,
        };
        // `contains` compares IPv4-mapped addresses as IPv4, so a network inside
        // ::ffff:0:0/96 becomes the IPv4 network it maps, its prefix counting IPv4 bits
        // (`::ffff:10.1.2.3/128` is 10.1.2.3/32). Keeping the IPv6 prefix on the IPv4
        // address made the mask's shift overflow: the rule matched every IPv4 address.
        if let IpAddr::V6(v6) = network {
            if let Some(v4) = v6.to_ipv4_mapped() {
                if prefix >= 96 {
                    return Ok(Cidr {
                        network: IpAddr::V4(v4),
                        prefix: prefix - 96,
                    });
                }
                return Err(format!(
                    "{s:?}: an IPv4-mapped network needs a prefix of 96 to 128 (write the IPv4 \
                     network instead)"
                ));
            }
        }
        Ok(Cidr { network, prefix })
    }
}

/// The loopback address an unspecified destination stands for: Linux delivers a connection
/// or datagram to 0.0.0.0 or `::` on this host, so a rule about loopback must see it too
/// (a `deny to 127.0.0.0/8` was passed by CONNECT 0.0.0.0 or the name `"0"`).
fn local_alias(ip: IpAddr) -> Option<IpAddr> {
    match ip.to_canonical() {
        IpAddr::V4(v4) if v4.is_unspecified() => Some(IpAddr::V4(std::net::Ipv4Addr::LOCALHOST)),
        IpAddr::V6(v6) if v6.is_unspecified() => Some(IpAddr::V6(std::net::Ipv6Addr::LOCALHOST)),
        _ => None,
    }
}

/// What a rule's `to` entry matches: an IP network, or a domain name and its subdomains
/// (`example.com` matches `example.com` and `www.example.com`; `.example.com` only
/// subdomains).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetPattern {
    /// An IP network, matched against the resolved address.
    Network(Cidr),
    /// A domain suffix, matched against the name the client asked for.
    Domain(String),
}

impl TargetPattern {
    /// `reached`: `ip` is where data goes (CONNECT, UDP), so an unspecified address is
    /// this host; for BIND it names the expected peer, where all zeros means "any".
    fn matches(&self, host: Option<&str>, ip: Option<IpAddr>, reached: bool) -> bool {
        match self {
            TargetPattern::Network(cidr) => ip.is_some_and(|ip| {
                cidr.contains(ip) || (reached && local_alias(ip).is_some_and(|l| cidr.contains(l)))
            }),
            TargetPattern::Domain(pattern) => host.is_some_and(|host| {
                let host = host.trim_end_matches('.').to_ascii_lowercase();
                match pattern.strip_prefix('.') {
                    Some(suffix) => host.ends_with(&format!(".{suffix}")),
                    None => host == *pattern || host.ends_with(&format!(".{pattern}")),
                }
            }),
        }
    }
}

impl FromStr for TargetPattern {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s.is_empty() {
            return Err("empty target pattern".into());
        }
        match s.parse::<Cidr>() {
            Ok(cidr) => return Ok(TargetPattern::Network(cidr)),
            // Meant as an address or network: say what is wrong with it.
            Err(e) if s.contains('/') || s.contains(':') => return Err(e),
            Err(_) => {}
        }
        let mut domain = s.trim_start_matches('*').to_ascii_lowercase();
        // A fully qualified `example.com.` is `example.com` (names are compared without it).
        if domain.len() > 1 && domain.ends_with('.') {
            domain.pop();
        }
        // `*`, `.` or `*.` matched nothing (a name is compared without its trailing dot),
        // so a rule meant for every target silently never applied.
        let name = domain.strip_prefix('.').unwrap_or(&domain);
        let well_formed = !name.is_empty()
            && name.split('.').all(|label| {
                !label.is_empty()
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            });
        if !well_formed {
            return Err(format!(
                "{s:?} is neither a CIDR network nor a domain name (`example.com`, \
                 `.example.com`, `*.example.com`; leave `to` out to match every target)"
            ));
        }
        Ok(TargetPattern::Domain(domain))
    }
}

/// One rule. Every condition that is set must hold for the rule to match; an empty list
/// means "any".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// What to do when the rule matches.
    pub action: Action,
    /// Commands the rule applies to.
    pub commands: Vec<Command>,
    /// Client networks.
    pub from: Vec<Cidr>,
    /// Destinations.
    pub to: Vec<TargetPattern>,
    /// Destination ports.
    pub ports: Option<RangeInclusive<u16>>,
    /// Authenticated user names.
    pub users: Vec<String>,
}

/// What a rule is evaluated against.
#[derive(Debug, Clone, Copy)]
pub struct RuleInput<'a> {
    /// The client's IP address.
    pub client: IpAddr,
    /// The authenticated user, if any.
    pub user: Option<&'a str>,
    /// The command.
    pub command: Command,
    /// The destination, when the request has one: the name asked for (if a name), the
    /// address it resolved to (if known) and the port.
    pub target: Option<(Option<&'a str>, Option<IpAddr>, u16)>,
}

/// The outcome of evaluating the rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Allowed.
    Allow,
    /// Denied by rule number `rule` (1-based), or by the implicit final deny (`None`).
    Deny {
        /// Which rule.
        rule: Option<usize>,
    },
}

/// The ordered rule list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rules {
    rules: Vec<Rule>,
}

impl Rules {
    /// A rule list.
    pub fn new(rules: Vec<Rule>) -> Self {
        Self { rules }
    }

    /// Whether there are no rules (everything is allowed).
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The rules.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// The first matching rule decides. A rule with destination conditions (`to`, `ports`)
    /// does not match an input without a destination; such rules are applied later, per
    /// destination (per datagram for UDP).
    pub fn evaluate(&self, input: &RuleInput<'_>) -> Decision {
        if self.rules.is_empty() {
            return Decision::Allow;
        }
        for (i, rule) in self.rules.iter().enumerate() {
            if rule_matches(rule, input) {
                return match rule.action {
                    Action::Allow => Decision::Allow,
                    Action::Deny => Decision::Deny { rule: Some(i + 1) },
                };
            }
        }
        Decision::Deny { rule: None }
    }
}

fn rule_matches(rule: &Rule, input: &RuleInput<'_>) -> bool {
    if !rule.commands.is_empty() && !rule.commands.contains(&input.command) {
        return false;
    }
    if !rule.from.is_empty() && !rule.from.iter().any(|c| c.contains(input.client)) {
        return false;
    }
    if !rule.users.is_empty()
        && !input
            .user
            .is_some_and(|u| rule.users.iter().any(|r| r == u))
    {
        return false;
    }
    let has_target_conditions = !rule.to.is_empty() || rule.ports.is_some();
    match input.target {
        None => !has_target_conditions,
        Some((host, ip, port)) => {
            if let Some(ports) = &rule.ports {
                if !ports.contains(&port) {
                    return false;
                }
            }
            let reached = input.command != Command::BIND;
            rule.to.is_empty() || rule.to.iter().any(|p| p.matches(host, ip, reached))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(action: Action) -> Rule {
        Rule {
            action,
            commands: vec![],
            from: vec![],
            to: vec![],
            ports: None,
            users: vec![],
        }
    }

    fn input(target: Option<(Option<&'static str>, Option<IpAddr>, u16)>) -> RuleInput<'static> {
        RuleInput {
            client: "127.0.0.1".parse().unwrap(),
            user: None,
            command: Command::CONNECT,
            target,
        }
    }

    #[test]
    fn cidr_contains_and_mapped_addresses() {
        let c: Cidr = "10.0.0.0/8".parse().unwrap();
        assert!(c.contains("10.1.2.3".parse().unwrap()));
        assert!(c.contains("::ffff:10.1.2.3".parse().unwrap()));
        assert!(!c.contains("11.0.0.1".parse().unwrap()));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("1.2.3.4".parse().unwrap()));
        let v6: Cidr = "fd00::/8".parse().unwrap();
        assert!(v6.contains("fd12::1".parse().unwrap()));
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
    }

    #[test]
    fn target_patterns_that_could_never_match_are_refused() {
        for bad in [
            "*",
            ".",
            "*.",
            "..",
            "a..b",
            "exa mple.com",
            "::ffff:10.0.0.0/95",
        ] {
            assert!(bad.parse::<TargetPattern>().is_err(), "{bad:?}");
        }
        let err = "::ffff:10.0.0.0/95".parse::<TargetPattern>().unwrap_err();
        assert!(err.contains("96 to 128"), "{err}");
        for good in [
            "example.com",
            "example.com.",
            ".example.com",
            "*.Example.com",
            "host_1",
        ] {
            assert!(good.parse::<TargetPattern>().is_ok(), "{good:?}");
        }
        assert_eq!(
            "*.Example.com".parse::<TargetPattern>().unwrap(),
            TargetPattern::Domain(".example.com".into())
        );
    }

    /// An IPv4-mapped IPv6 network is the IPv4 network it maps: `::ffff:127.0.0.5/128`
    /// once matched every IPv4 address (a `from` rule admitted every client).
    #[test]
    fn mapped_networks_are_their_ipv4_networks() {
        let one: Cidr = "::ffff:127.0.0.5/128".parse().unwrap();
        assert_eq!(one, "127.0.0.5/32".parse().unwrap());
        assert!(one.contains("127.0.0.5".parse().unwrap()));
        assert!(!one.contains("127.0.0.1".parse().unwrap()));
        assert!(!one.contains("10.1.2.3".parse().unwrap()));
        let bare: Cidr = "::ffff:10.1.2.3".parse().unwrap();
        assert_eq!(bare, "10.1.2.3/32".parse().unwrap());
        let net: Cidr = "::ffff:10.0.0.0/104".parse().unwrap();
        assert_eq!(net, "10.0.0.0/8".parse().unwrap());
        assert!(net.contains("::ffff:10.9.9.9".parse().unwrap()));
        assert!(!net.contains("11.0.0.1".parse().unwrap()));
        assert!("::ffff:10.0.0.0/95".parse::<Cidr>().is_err());
        assert!("::ffff:10.0.0.0/129".parse::<Cidr>().is_err());
    }

    /// 0.0.0.0 and `::` reach this host: rules about loopback apply to them, and rules
    /// that name them still do.
    #[test]
    fn unspecified_destinations_count_as_loopback_too() {
        let mut deny_local = rule(Action::Deny);
        deny_local.to = vec!["127.0.0.0/8".parse().unwrap(), "::1".parse().unwrap()];
        let rules = Rules::new(vec![deny_local, rule(Action::Allow)]);
        for ip in ["0.0.0.0", "::", "::ffff:0.0.0.0", "127.0.0.1", "::1"] {
            assert_eq!(
                rules.evaluate(&input(Some((None, Some(ip.parse().unwrap()), 80)))),
                Decision::Deny { rule: Some(1) },
                "{ip}"
            );
        }
        assert_eq!(
            rules.evaluate(&input(Some((None, Some("10.0.0.1".parse().unwrap()), 80)))),
            Decision::Allow
        );
        // A BIND's all-zero DST means "any peer", not this host.
        let mut bind_any = input(Some((None, Some("0.0.0.0".parse().unwrap()), 0)));
        bind_any.command = Command::BIND;
        assert_eq!(rules.evaluate(&bind_any), Decision::Allow);
        let mut allow_bind_local = rule(Action::Allow);
        allow_bind_local.commands = vec![Command::BIND];
        allow_bind_local.to = vec!["127.0.0.1/32".parse().unwrap()];
        assert_eq!(
            Rules::new(vec![allow_bind_local]).evaluate(&bind_any),
            Decision::Deny { rule: None },
            "allowed to wait for 127.0.0.1 is not allowed to wait for anyone"
        );
        let mut deny_any = rule(Action::Deny);
        deny_any.to = vec!["0.0.0.0/32".parse().unwrap()];
        let rules = Rules::new(vec![deny_any, rule(Action::Allow)]);
        assert_eq!(
            rules.evaluate(&input(Some((None, Some("0.0.0.0".parse().unwrap()), 80)))),
            Decision::Deny { rule: Some(1) }
        );
        assert_eq!(
            rules.evaluate(&input(Some((None, Some("127.0.0.1".parse().unwrap()), 80)))),
            Decision::Allow
        );
    }

    #[test]
    fn first_match_wins_and_default_is_deny_once_rules_exist() {
        assert_eq!(Rules::default().evaluate(&input(None)), Decision::Allow);
        let mut deny_port = rule(Action::Deny);
        deny_port.ports = Some(25..=25);
        let mut allow_local = rule(Action::Allow);
        allow_local.from = vec!["127.0.0.0/8".parse().unwrap()];
        let rules = Rules::new(vec![deny_port, allow_local]);
        let ip = Some("127.0.0.1".parse().unwrap());
        assert_eq!(
            rules.evaluate(&input(Some((None, ip, 25)))),
            Decision::Deny { rule: Some(1) }
        );
        assert_eq!(
            rules.evaluate(&input(Some((None, ip, 80)))),
            Decision::Allow
        );
        let mut foreign = input(Some((None, ip, 80)));
        foreign.client = "192.0.2.1".parse().unwrap();
        assert_eq!(rules.evaluate(&foreign), Decision::Deny { rule: None });
    }

    #[test]
    fn domain_patterns_match_names_and_subdomains() {
        let p: TargetPattern = "example.com".parse().unwrap();
        assert!(p.matches(Some("example.com"), None, true));
        assert!(p.matches(Some("WWW.Example.com."), None, true));
        assert!(!p.matches(Some("badexample.com"), None, true));
        let sub: TargetPattern = "*.example.com".parse().unwrap();
        assert!(sub.matches(Some("a.example.com"), None, true));
        assert!(!sub.matches(Some("example.com"), None, true));
    }

    #[test]
    fn target_rules_do_not_match_requests_without_target() {
        let mut deny_to = rule(Action::Deny);
        deny_to.to = vec!["10.0.0.0/8".parse().unwrap()];
        let rules = Rules::new(vec![deny_to, rule(Action::Allow)]);
        assert_eq!(rules.evaluate(&input(None)), Decision::Allow);
        assert_eq!(
            rules.evaluate(&input(Some((None, Some("10.0.0.1".parse().unwrap()), 53)))),
            Decision::Deny { rule: Some(1) }
        );
    }
}
