//! One module per subcommand: parse nothing, decide nothing, call the engine.

pub mod cache;
pub mod engine;
pub mod functions;
pub mod init;
pub mod run;

/// Prints a line of a command's output; a closed pipe (`| head`) ends the
/// command quietly instead of failing.
pub fn out(line: impl std::fmt::Display) {
    use std::io::Write;
    if let Err(e) = writeln!(std::io::stdout(), "{line}")
        && e.kind() == std::io::ErrorKind::BrokenPipe
    {
        std::process::exit(0);
    }
}
