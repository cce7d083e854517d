//! Facts about the host as userspace sees it: processes in /proc, cgroups, systemd units
//! and containers (who a container is, from its runtime's files), clocks, and the
//! kernel's signal and wait-status conventions.
pub mod clock;
pub mod containers;
pub mod identity;
pub mod procfs;
pub mod signals;
pub mod wait_status;
