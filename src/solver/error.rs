//! The errors a pipeline sees from the solver, and how the errors of the
//! crates below (snapshotter, runtime, index) become them.

/// Errors a pipeline sees. Cloneable, because one result may answer several
/// requests for the same step.
#[derive(Clone, Debug, thiserror::Error)]
pub enum SolveError {
    #[error("{0}")]
    Image(String),
    #[error(
        "step failed: {command}\n  exit code: {exit_code}{}{}{}{}",
        if *expected_failure { " (a failure was expected)" } else { "" },
        full_filesystem.as_ref().map(|f| format!("\n  no space left on device: {f}")).unwrap_or_default(),
        at.as_ref().map(|a| format!("\n  created at: {a}")).unwrap_or_default(),
        if stderr_tail.is_empty() { String::new() } else {
            format!("\n  stderr (last lines):\n{}", indent(stderr_tail))
        }
    )]
    ExecFailed {
        command: String,
        exit_code: i64,
        stderr_tail: String,
        expected_failure: bool,
        /// Where in the pipeline the step was made (file:line).
        at: Option<String>,
        /// A filesystem the step wrote to that was full.
        full_filesystem: Option<String>,
    },
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Internal(String),
    #[error("cancelled")]
    Cancelled,
}

fn indent(s: &str) -> String {
    s.lines()
        .map(|l| format!("    | {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

impl From<rbuild_snapshotter::Error> for SolveError {
    fn from(e: rbuild_snapshotter::Error) -> Self {
        use rbuild_snapshotter::Error as E;
        match e {
            E::Containerd(e) => e.into(),
            E::Cancelled { .. } => SolveError::Cancelled,
            e @ (E::Io { .. } | E::InvalidPattern { .. } | E::Invalid(_)) => {
                SolveError::Invalid(e.to_string())
            }
            other => SolveError::Image(other.to_string()),
        }
    }
}

impl From<rbuild_containerd::Error> for SolveError {
    fn from(e: rbuild_containerd::Error) -> Self {
        SolveError::Internal(e.to_string())
    }
}

impl From<rbuild_runtime::Error> for SolveError {
    fn from(e: rbuild_runtime::Error) -> Self {
        match e {
            rbuild_runtime::Error::Cancelled => SolveError::Cancelled,
            other => SolveError::Internal(other.to_string()),
        }
    }
}

impl From<crate::index::IndexError> for SolveError {
    fn from(e: crate::index::IndexError) -> Self {
        SolveError::Internal(e.to_string())
    }
}
