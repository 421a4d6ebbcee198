//! Running a command in a pod to its end, as `kubectl exec` does, but
//! bounded: a hung `ejabberdctl` or `rabbitmqctl` (a VM waiting on a node
//! that never answers) fails the scenario naming it instead of holding
//! the suite until CI's own limit.

use std::process::Output;
use std::time::Duration;

use tokio::process::Command;

/// Runs `cmd`, killed after `limit`; `what` names it in errors. A failure
/// exit is not an error here: the caller reads the status.
pub async fn output(mut cmd: Command, what: &str, limit: Duration) -> Result<Output, String> {
    tokio::time::timeout(limit, cmd.kill_on_drop(true).output())
        .await
        .map_err(|_| format!("{what} took over {limit:?}"))?
        .map_err(|e| format!("{what}: cannot run: {e}"))
}

/// [`output`] as a terminal shows it: the exit code (-1 for a signal) and
/// stdout followed by stderr.
pub async fn exec(cmd: Command, what: &str, limit: Duration) -> Result<(i32, String), String> {
    let out = output(cmd, what, limit).await?;
    Ok((
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    ))
}
