//! `ferrosocks check-config FILE`.

use std::path::Path;
use std::process::ExitCode;

use crate::config_file::{self, Overrides};

pub(crate) fn run(file: &Path) -> ExitCode {
    match config_file::load(Some(file), &Overrides::default()) {
        Ok((config, _)) => {
            println!(
                "{}: OK ({} listen address(es), {} user(s), {} rule(s))",
                file.display(),
                config.listen.len(),
                config.users.len(),
                config.rules.rules().len()
            );
            // Valid, but this host may not have it: the server would start and warn too.
            if let Some(name) = &config.local_congestion {
                // The default has a fallback (see `tcp_tuning::usable`); a name that ends up
                // unused is worth a word.
                let used = ferrosocks_server::tcp_tuning::usable(Some(name.clone()));
                if let (None, Err(e)) = (used, ferrosocks_server::tcp_tuning::check_available(name))
                {
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
