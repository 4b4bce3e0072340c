//! One module per subcommand.

pub(crate) mod check_config;
pub(crate) mod serve;
