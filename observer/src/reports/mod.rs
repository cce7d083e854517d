//! The reports the correlator writes: one per shutdown (timeline, verdict, findings) and
//! one per deploy.
pub mod deploy;
pub mod shutdown;
