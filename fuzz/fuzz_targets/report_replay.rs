//! Any log `observer report` could be given: every line parses to an event or a problem,
//! and the correlator turns the events into reports that serialise, without panicking.
#![no_main]

use libfuzzer_sys::fuzz_target;
use observer::pipeline::{correlate::Config, replay::reports_of};

fuzz_target!(|log: &[u8]| {
    let config = Config {
        after_exit_ns: 5_000_000_000,
        deploy_window_ns: 30_000_000_000,
    };
    for report in reports_of(log, config) {
        let _ = report.to_json();
    }
});
