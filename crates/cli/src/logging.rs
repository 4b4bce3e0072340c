//! Diagnostic logging on stderr (the access log is separate, see the server's access_log).

use tracing_subscriber::EnvFilter;

use crate::config_file::{LogFormat, ProcessSettings};

/// Installs the subscriber. `RUST_LOG` wins over the configured level, as users expect.
pub(crate) fn init(settings: &ProcessSettings) {
    let filter = std::env::var("RUST_LOG")
        .ok()
        .or_else(|| settings.level.clone())
        .unwrap_or_else(|| "info".into());
    let filter = EnvFilter::try_new(&filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let _ = match settings.format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}
