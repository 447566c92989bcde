//! The `baton` command line's exit codes: what a CI deploy step branches on,
//! whether the command talked to an agent or to the server.

use crate::RestartOutcome;

pub const SUCCEEDED: u8 = 0;
pub const FAILED: u8 = 1;
pub const ROLLED_BACK: u8 = 2;
pub const FORCED: u8 = 3;
pub const TIMEOUT: u8 = 4;
/// The restart was refused: another one is running, or the agent is stopping.
pub const REFUSED: u8 = 5;
/// The agent could not be reached or answered something unexpected.
pub const UNREACHABLE: u8 = 6;
/// The server refused the token (missing, invalid, or not an operator's).
pub const NOT_AUTHORIZED: u8 = 7;
/// The server was reached but failed (a 5xx, whose message is printed: a
/// full disk, a locked database). Not the same as unreachable: the server
/// is up, and retrying later may succeed.
pub const SERVER_ERROR: u8 = 8;
/// The agent died during the restart; the agent that took over its
/// generations could not finish it (the old generation still serves).
pub const INTERRUPTED: u8 = 9;
/// Bad command line or unknown service.
pub const USAGE: u8 = 64;

/// How a finished restart ends `baton restart --wait`. One that finished
/// without an outcome counts as failed: only `succeeded` may exit 0.
pub fn of_outcome(outcome: Option<RestartOutcome>) -> u8 {
    match outcome {
        Some(RestartOutcome::Succeeded) => SUCCEEDED,
        Some(RestartOutcome::RolledBack) => ROLLED_BACK,
        Some(RestartOutcome::Forced) => FORCED,
        Some(RestartOutcome::Interrupted) => INTERRUPTED,
        Some(RestartOutcome::Failed) | None => FAILED,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_outcome_has_the_exit_code_the_readme_promises() {
        // README: 0 succeeded, 1 failed, 2 rolled back, 3 forced, 9 interrupted.
        let table = [
            (Some(RestartOutcome::Succeeded), 0),
            (Some(RestartOutcome::Failed), 1),
            (Some(RestartOutcome::RolledBack), 2),
            (Some(RestartOutcome::Forced), 3),
            (Some(RestartOutcome::Interrupted), 9),
            (None, 1),
        ];
        for (outcome, code) in table {
            assert_eq!(of_outcome(outcome), code, "{outcome:?}");
        }
        assert_eq!(
            table.len(),
            RestartOutcome::ALL.len() + 1,
            "an outcome is missing"
        );
    }
}
