//! The probe's findings: one [`Check`] per question, rendered as a table or as JSON.

use std::fmt::Write as _;

use serde::Serialize;

/// The verdict of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub(crate) enum Status {
    /// The server does what RFC 1928/1929 asks.
    #[serde(rename = "pass")]
    Pass,
    /// The server does something the RFC does not allow, or the feature is broken.
    #[serde(rename = "fail")]
    Fail,
    /// The server declines the feature in a way the protocol allows (`05 FF`, REP 07, ...).
    #[serde(rename = "unsupported")]
    Unsupported,
    /// The check could not be run (no credentials given, an earlier step failed, ...).
    #[serde(rename = "n/a")]
    NotApplicable,
}

impl Status {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Status::Pass => "pass",
            Status::Fail => "fail",
            Status::Unsupported => "unsupported",
            Status::NotApplicable => "n/a",
        }
    }
}

/// One finding.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Check {
    /// Stable identifier, e.g. `udp.frag`; tests and scripts key on it.
    pub(crate) id: &'static str,
    /// What is being asked, in a few words.
    pub(crate) title: &'static str,
    pub(crate) status: Status,
    /// The key observation in a machine-friendly word or address (e.g. `reassembles`,
    /// `closes`, `00`, `127.0.0.1:4242`), when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) value: Option<String>,
    /// What was seen, for a human.
    pub(crate) detail: String,
}

impl Check {
    pub(crate) fn named(id: &'static str, title: &'static str) -> CheckBuilder {
        CheckBuilder { id, title }
    }
}

/// Names a check before its verdict is known.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CheckBuilder {
    id: &'static str,
    title: &'static str,
}

impl CheckBuilder {
    pub(crate) fn id(&self) -> &'static str {
        self.id
    }
    pub(crate) fn status(self, status: Status, detail: impl Into<String>) -> Check {
        Check {
            id: self.id,
            title: self.title,
            status,
            value: None,
            detail: detail.into(),
        }
    }
    pub(crate) fn pass(self, detail: impl Into<String>) -> Check {
        self.status(Status::Pass, detail)
    }
    pub(crate) fn fail(self, detail: impl Into<String>) -> Check {
        self.status(Status::Fail, detail)
    }
    pub(crate) fn unsupported(self, detail: impl Into<String>) -> Check {
        self.status(Status::Unsupported, detail)
    }
    pub(crate) fn na(self, detail: impl Into<String>) -> Check {
        self.status(Status::NotApplicable, detail)
    }
}

impl Check {
    pub(crate) fn with_value(mut self, value: impl Into<String>) -> Check {
        self.value = Some(value.into());
        self
    }
}

/// Everything one run found.
#[derive(Debug, Serialize)]
pub(crate) struct Report {
    /// The proxy URL as given (password masked).
    pub(crate) proxy: String,
    /// The socket address that was probed.
    pub(crate) address: String,
    pub(crate) checks: Vec<Check>,
    pub(crate) summary: Summary,
}

#[derive(Debug, Default, Serialize)]
pub(crate) struct Summary {
    pub(crate) pass: usize,
    pub(crate) fail: usize,
    pub(crate) unsupported: usize,
    #[serde(rename = "n/a")]
    pub(crate) not_applicable: usize,
}

impl Report {
    pub(crate) fn new(proxy: String, address: String, checks: Vec<Check>) -> Report {
        let mut summary = Summary::default();
        for c in &checks {
            *match c.status {
                Status::Pass => &mut summary.pass,
                Status::Fail => &mut summary.fail,
                Status::Unsupported => &mut summary.unsupported,
                Status::NotApplicable => &mut summary.not_applicable,
            } += 1;
        }
        Report {
            proxy,
            address,
            checks,
            summary,
        }
    }

    pub(crate) fn to_json(&self) -> String {
        // Serializing plain strings and numbers cannot fail.
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// A fixed-width table: ID, STATUS, DETAIL (the value leads the detail when there is one).
    pub(crate) fn to_table(&self) -> String {
        let id_width = self
            .checks
            .iter()
            .map(|c| c.id.len())
            .max()
            .unwrap_or(5)
            .max("CHECK".len());
        let status_width = "unsupported".len();
        let mut out = String::new();
        let _ = writeln!(out, "probe of {} ({})", self.proxy, self.address);
        let _ = writeln!(
            out,
            "{:id_width$}  {:status_width$}  DETAIL",
            "CHECK", "STATUS"
        );
        for c in &self.checks {
            let _ = writeln!(
                out,
                "{:id_width$}  {:status_width$}  {}",
                c.id,
                c.status.as_str(),
                // Details quote what the proxy sent (a BND name, say).
                crate::cmd::printable(&c.detail)
            );
        }
        let s = &self.summary;
        let _ = writeln!(
            out,
            "{} pass, {} fail, {} unsupported, {} n/a",
            s.pass, s.fail, s.unsupported, s.not_applicable
        );
        out
    }
}
