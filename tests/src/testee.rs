//! Running the `testee` helper binary from the tests.
use std::process::{Child, Command, ExitStatus, Stdio};

use crate::{read_line, wait_timeout};

/// The testee binary (built with this package).
pub fn testee_path() -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    // target/debug/deps/<test>-<hash> → target/debug/testee
    exe.parent()
        .and_then(|deps| deps.parent())
        .map(|dir| dir.join("testee"))
        .filter(|path| path.is_file())
        .expect("testee is built next to the tests (cargo builds a package's binaries first)")
}

pub fn testee(args: &[&str]) -> Command {
    let mut command = Command::new(testee_path());
    command
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped());
    command
}

/// Starts a testee and waits for its "ready" line; returns the child and the rest of
/// that line.
pub fn start_ready(args: &[&str]) -> (Child, String) {
    start_ready_with(testee(args))
}

/// Like [`start_ready`], with the testee's stdin piped for commands.
pub fn start_interactive(args: &[&str]) -> (Child, String) {
    let mut command = testee(args);
    command.stdin(Stdio::piped());
    start_ready_with(command)
}

/// Sends one command line to an interactive testee.
pub fn command(child: &mut Child, line: &str) {
    use std::io::Write;
    let stdin = child.stdin.as_mut().expect("stdin piped");
    writeln!(stdin, "{line}")
        .and_then(|()| stdin.flush())
        .expect("writing to testee");
}

fn start_ready_with(mut command: Command) -> (Child, String) {
    let mut child = command.spawn().expect("spawning testee");
    let line = read_line(&mut child);
    let rest = line
        .strip_prefix("ready")
        .unwrap_or_else(|| panic!("testee {command:?} said {line:?}"))
        .trim()
        .to_string();
    (child, rest)
}

/// Runs a testee to completion.
pub fn run_to_exit(args: &[&str]) -> (u32, ExitStatus) {
    let mut child = testee(args).spawn().expect("spawning testee");
    let pid = child.id();
    (pid, wait_timeout(&mut child))
}
