//! Setting the kernel up: what observer needs of it (the tracepoint table), what this
//! kernel offers (tracefs format files, BTF), preflight checks, and loading and attaching
//! the programs built from `observer-ebpf`.
pub mod btf;
pub mod exit_stage;
pub mod layout;
pub mod loader;
pub mod object;
pub mod preflight;
pub mod tracefs;
pub mod tracepoints;
