//! `ferrosocks check-config FILE`.

use std::path::Path;
use std::process::ExitCode;

use crate::config_file::{self, AccessLogOpen, Overrides};

pub(crate) fn run(file: &Path) -> ExitCode {
    match config_file::load(Some(file), &Overrides::default(), AccessLogOpen::Check) {
        Ok((config, _)) => {
            println!(
                "{}: OK ({} listen address(es), {} user(s), {} rule(s))",
                file.display(),
                config.listen.len(),
                config.users.len(),
                config.rules.rules().len()
            );
            // Valid, but this host may not have it: the server would start and warn too.
            // (The default has a fallback, which `choose` applies.)
            if let Some(name) = &config.local_congestion {
                if let Err(e) = ferrosocks_server::tcp_tuning::choose(name) {
                    eprintln!(
                        "{}: warning: local_congestion {name:?} is not usable on this host ({e}); \
                         loopback tunnels would keep the system's congestion control",
                        file.display()
                    );
                }
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(2)
        }
    }
}
