//! Lines as they leave observer: the human format, NDJSON, metrics, and the sink they
//! are written to.
pub mod human;
pub mod human_report;
pub mod metrics;
pub mod sink;
