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
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(2)
        }
    }
}
