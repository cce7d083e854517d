//! observer as a library: the binary's modules, and the pure parts (record decoding,
//! report replay) that the fuzz targets in `fuzz/` drive directly.
//!
//! The layout follows the flow of a record (README.md, "How it works"):
//!
//! - [`kernel`]: setting the kernel up — the tracepoints and fields observer reads, this
//!   kernel's layout (tracefs, BTF), loading and attaching the programs.
//! - [`pipeline`]: kernel records in, events and reports out — decode, enrich, filter,
//!   correlate.
//! - [`host`]: facts about the host that the pipeline looks up (/proc, cgroups, units
//!   and containers, clocks, signal and wait-status conventions).
//! - [`reports`]: shutdown and deploy reports, their verdicts and findings.
//! - [`output`]: lines as people and programs read them (human, NDJSON, metrics) and
//!   where they go.
//! - [`commands`]: `watch`, `report`, `advise`, `rehearse` and `check`, and the CLI that
//!   names them.
//! - [`event`]: the events-v1 contract every part speaks.
//!
//! The rule: commands depend on the rest; `pipeline`, `reports` and `output` never
//! import aya, tokio, [`kernel`] or [`commands`] (the CLI), so that they run the same on
//! live records, on a replayed log and in tests.
pub mod bounded;
pub mod commands;
pub mod event;
pub mod host;
pub mod kernel;
pub mod output;
pub mod pipeline;
pub mod reports;

#[cfg(test)]
mod layering {
    use std::path::Path;

    /// The rule above, read from the sources: no `use` of aya, tokio, the kernel set-up
    /// or the commands in pipeline/, reports/ or output/.
    #[test]
    fn pipeline_reports_and_output_import_no_aya_tokio_kernel_or_cli() {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        for dir in ["pipeline", "reports", "output"] {
            for entry in std::fs::read_dir(src.join(dir)).unwrap() {
                let path = entry.unwrap().path();
                let text = std::fs::read_to_string(&path).unwrap();
                for forbidden in ["aya::", "tokio::", "crate::kernel", "crate::commands"] {
                    assert!(
                        !text.contains(forbidden),
                        "{} names {forbidden}",
                        path.display()
                    );
                }
                for forbidden in ["use aya", "use tokio", "kernel::", "commands::"] {
                    assert!(
                        !text
                            .lines()
                            .any(|line| line.trim_start().starts_with("use ")
                                && line.contains(forbidden)
                                || line.trim_start().starts_with(forbidden)),
                        "{} imports {forbidden}",
                        path.display()
                    );
                }
            }
        }
    }
}
