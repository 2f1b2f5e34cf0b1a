//! The user's terminal: `Container::terminal`, and the shell `run -i`
//! opens in a failed step's container.

use std::sync::Arc;
use std::time::Instant;

use super::*;
use crate::graph::shell_words;

impl<W: Worker> Solver<W> {
    /// A shell on the user's terminal, with the live display out of its way.
    pub(super) fn interactive(&self, command: Vec<String>) -> Interactive {
        let progress = self.progress.clone();
        Interactive {
            command,
            pause: Arc::new(move |on| progress.pause(on)),
            before: Arc::new(|_| {}),
        }
    }

    /// `Container::terminal`: an interactive shell in the container (its
    /// filesystem, environment and mounts); changes are not kept.
    pub async fn terminal(
        self: &Arc<Self>,
        st: &ContainerState,
        command: Vec<String>,
        api: crate::api::Api,
    ) -> Result<i64, SolveError> {
        if matches!(st.rootfs, Tree::Empty) {
            return Err(SolveError::Invalid(
                "terminal: the container has no root filesystem; start it with .from(\"<image>\")"
                    .into(),
            ));
        }
        let command = if command.is_empty() {
            vec!["/bin/sh".to_string()]
        } else {
            command
        };
        let plan = StepPlan::exec(
            st.rootfs.clone(),
            st.exec_plan(command.clone(), None, None, crate::graph::Expect::Any, api),
            &self.platform.to_string(),
        );
        let StepKind::Exec(exec) = &plan.kind else {
            unreachable!("an exec plan");
        };
        let parent = self.materialize(&plan.parent).await?;
        let mounts = self.mount_requests(&exec.mounts).await?;
        let (services, network) = self.bind_services(&plan, exec).await?;
        let no = self
            .progress
            .started(&format!("terminal {}", shell_words(&command)));
        let started = Instant::now();
        let req = ExecRequest {
            key: plan.key,
            name: super::steps::step_snapshot_name(&plan.key),
            parent,
            args: command,
            env: exec.process_env(),
            cwd: exec.cwd.clone(),
            user: exec.user.clone(),
            mounts,
            stdin: None,
            expect: crate::graph::Expect::Any,
            output: None,
            terminal: TerminalUse::Shell(self.interactive(Vec::new())),
            network: network.clone(),
            start_gate: None,
        };
        let outcome = self.worker.exec(req, self.cancel.clone()).await;
        self.unbind_services(services, network).await;
        let outcome = outcome?;
        self.progress.finished(
            no,
            started.elapsed().as_millis(),
            &format!("exit code {}", outcome.exit_code),
        );
        Ok(outcome.exit_code)
    }
}
