//! One module per subcommand: parse nothing, decide nothing, call the engine.

pub mod functions;
pub mod init;
pub mod run;
