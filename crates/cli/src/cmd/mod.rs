//! One module per subcommand.

pub(crate) mod bench;
pub(crate) mod bind;
pub(crate) mod check_config;
pub(crate) mod connect;
pub(crate) mod passwd;
pub(crate) mod probe;
pub(crate) mod serve;
pub(crate) mod tunnel;
pub(crate) mod udp;
