//! The reports the correlator writes: one per shutdown (timeline, verdict, findings, and
//! the sockets held at exit in bounded memory) and one per deploy.
pub mod at_exit;
pub mod deploy;
pub mod shutdown;
