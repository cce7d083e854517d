//! Ring-buffer bytes → typed records. Pure: no I/O, no aya.
use observer_common::{
    ExitGroupCallRecord, ProcessExitRecord, RecordHeader, SignalDeliverRecord,
    SignalGenerateRecord, TcpAcceptRecord, TcpResetRecord, TcpStateRecord, WireRecord, kind,
    read_record,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Record {
    SignalGenerate(SignalGenerateRecord),
    SignalDeliver(SignalDeliverRecord),
    ProcessExit(ProcessExitRecord),
    ExitGroupCall(ExitGroupCallRecord),
    TcpState(TcpStateRecord),
    TcpReset(TcpResetRecord),
    TcpAccept(TcpAcceptRecord),
}

impl Record {
    pub fn header(&self) -> &RecordHeader {
        match self {
            Record::SignalGenerate(r) => &r.header,
            Record::SignalDeliver(r) => &r.header,
            Record::ProcessExit(r) => &r.header,
            Record::ExitGroupCall(r) => &r.header,
            Record::TcpState(r) => &r.header,
            Record::TcpReset(r) => &r.header,
            Record::TcpAccept(r) => &r.header,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DecodeError {
    Truncated { kind: u32, len: usize, need: usize },
    UnknownKind(u32),
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DecodeError::Truncated { kind, len, need } => {
                write!(f, "record of kind {kind} has {len} bytes, needs {need}")
            }
            DecodeError::UnknownKind(kind) => write!(f, "unknown record kind {kind}"),
        }
    }
}

impl std::error::Error for DecodeError {}

pub fn decode(bytes: &[u8]) -> Result<Record, DecodeError> {
    let header: RecordHeader = read(bytes, 0)?;
    Ok(match header.kind {
        kind::SIGNAL_GENERATE => Record::SignalGenerate(read(bytes, header.kind)?),
        kind::SIGNAL_DELIVER => Record::SignalDeliver(read(bytes, header.kind)?),
        kind::PROCESS_EXIT => Record::ProcessExit(read(bytes, header.kind)?),
        kind::EXIT_GROUP_CALL => Record::ExitGroupCall(read(bytes, header.kind)?),
        kind::TCP_STATE => Record::TcpState(read(bytes, header.kind)?),
        kind::TCP_RESET => Record::TcpReset(read(bytes, header.kind)?),
        kind::TCP_ACCEPT => Record::TcpAccept(read(bytes, header.kind)?),
        other => return Err(DecodeError::UnknownKind(other)),
    })
}

fn read<T: WireRecord>(bytes: &[u8], kind: u32) -> Result<T, DecodeError> {
    read_record(bytes).ok_or(DecodeError::Truncated {
        kind,
        len: bytes.len(),
        need: size_of::<T>(),
    })
}

/// A NUL-terminated kernel comm as text.
pub fn comm(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Every input the fuzzers kept (fuzz/corpus/decode_record) decodes or is refused.
    #[test]
    fn the_fuzz_corpus_decodes_or_is_refused() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../fuzz/corpus/decode_record");
        let mut inputs = 0;
        for entry in std::fs::read_dir(dir).expect("the corpus is in the repository") {
            let bytes = std::fs::read(entry.unwrap().path()).unwrap();
            let _ = decode(&bytes);
            inputs += 1;
        }
        assert!(
            inputs >= 7,
            "one seed per record kind at least, found {inputs}"
        );
    }

    /// The bytes the kernel would write for `record`.
    pub fn bytes_of<T: WireRecord>(record: &T) -> Vec<u8> {
        // SAFETY: WireRecord types are plain integer structs with explicit padding.
        unsafe { std::slice::from_raw_parts((record as *const T).cast::<u8>(), size_of::<T>()) }
            .to_vec()
    }

    #[test]
    fn decodes_each_kind_from_its_bytes() {
        let exit = ProcessExitRecord {
            header: RecordHeader {
                kind: kind::PROCESS_EXIT,
                ..Default::default()
            },
            facts: observer_common::ExitFacts {
                tgid: 77,
                wait_status: 0x300,
                ..Default::default()
            },
            ..Default::default()
        };
        assert_eq!(decode(&bytes_of(&exit)), Ok(Record::ProcessExit(exit)));
        let signal = SignalGenerateRecord {
            header: RecordHeader {
                kind: kind::SIGNAL_GENERATE,
                ..Default::default()
            },
            sig: 15,
            ..Default::default()
        };
        assert_eq!(
            decode(&bytes_of(&signal)),
            Ok(Record::SignalGenerate(signal))
        );
    }

    #[test]
    fn rejects_short_and_unknown_records() {
        let exit = ProcessExitRecord {
            header: RecordHeader {
                kind: kind::PROCESS_EXIT,
                ..Default::default()
            },
            ..Default::default()
        };
        let bytes = bytes_of(&exit);
        assert_eq!(
            decode(&bytes[..40]),
            Err(DecodeError::Truncated {
                kind: kind::PROCESS_EXIT,
                len: 40,
                need: size_of::<ProcessExitRecord>()
            })
        );
        assert_eq!(
            decode(&[0u8; 3]),
            Err(DecodeError::Truncated {
                kind: 0,
                len: 3,
                need: 16
            })
        );
        let header = RecordHeader {
            kind: 99,
            ..Default::default()
        };
        assert_eq!(
            decode(&bytes_of(&header)),
            Err(DecodeError::UnknownKind(99))
        );
    }

    #[test]
    fn reads_comms_up_to_the_nul() {
        assert_eq!(comm(b"node\0\0\0garbage"), "node");
        assert_eq!(comm(b"exactly16bytes!!"), "exactly16bytes!!");
    }
}
