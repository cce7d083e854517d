//! The commands, and the CLI that names them: each sets up what it needs from the other
//! modules and runs it. The only place that holds a tokio runtime or the loaded programs.
pub mod advise;
pub mod check;
pub mod cli;
pub mod metrics_server;
pub mod rehearse;
pub mod report;
pub mod session;
pub mod watch;
