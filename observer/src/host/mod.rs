//! Facts about the host as userspace sees it: processes in /proc, cgroups, systemd units
//! and containers, clocks, and the kernel's signal and wait-status conventions.
pub mod clock;
pub mod identity;
pub mod procfs;
pub mod signals;
pub mod wait_status;
