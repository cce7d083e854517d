//! Any bytes the ring buffer could hand over: decoding must return a record or an error,
//! never panic or read out of bounds.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    if let Ok(record) = observer::pipeline::decode::decode(bytes) {
        let _ = format!("{record:?}");
    }
});
