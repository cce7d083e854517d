//! The classic tracepoints observer reads, with each field it reads: its size, whether it
//! is required, and what observer reports less of without it. The one table that the
//! layout (offsets for the kernel programs), the loader (where programs attach) and
//! `observer check` (what this kernel lacks) read.
use std::path::Path;

use anyhow::{Context, Result, bail};
use observer_common::FIELD_ABSENT;

use crate::kernel::tracefs::{self, Format};

/// A classic tracepoint and the fields observer reads from its records.
pub struct Tracepoint {
    pub category: &'static str,
    pub name: &'static str,
    /// What `watch` does when this kernel lacks the tracepoint, or one of its required
    /// fields.
    pub without: Without,
    pub fields: &'static [FieldSpec],
}

/// What `watch` does without a tracepoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Without {
    /// It refuses to start: this is what it is for.
    Refuses,
    /// It runs, without what this says.
    Loses(&'static str),
}

#[derive(Clone, Copy)]
pub struct FieldSpec {
    pub name: &'static str,
    /// The sizes, in bytes, it may have.
    pub sizes: &'static [u32],
    pub need: Need,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Need {
    Required,
    /// Required where the tracepoint stores its addresses as split fields (a 4-byte
    /// `saddr`: tcp_send_reset before 6.10, tcp_receive_reset, inet_sock_set_state);
    /// unused where it stores them as `sockaddr`s.
    SplitAddresses,
    /// Read when present; without it observer reports less: this, never something wrong.
    Optional(&'static str),
}

const fn required(name: &'static str, sizes: &'static [u32]) -> FieldSpec {
    FieldSpec {
        name,
        sizes,
        need: Need::Required,
    }
}

const fn split(name: &'static str, sizes: &'static [u32]) -> FieldSpec {
    FieldSpec {
        name,
        sizes,
        need: Need::SplitAddresses,
    }
}

const fn optional(name: &'static str, sizes: &'static [u32], without: &'static str) -> FieldSpec {
    FieldSpec {
        name,
        sizes,
        need: Need::Optional(without),
    }
}

/// A socket address as tcp_send_reset stores it since 6.10 (`sockaddr_in6`).
pub const SOCKADDR_SIZE: u32 = 28;

const WITHOUT_TCP: Without = Without::Loses("no TCP events");
const WITHOUT_ACCEPT: Without =
    Without::Loses("accepts after a termination signal are not reported");

pub const SIGNAL_GENERATE: Tracepoint = Tracepoint {
    category: "signal",
    name: "signal_generate",
    without: Without::Refuses,
    fields: &[
        required("sig", &[4]),
        required("code", &[4]),
        required("comm", &[16]),
        required("pid", &[4]),
        required("group", &[4]),
        required("result", &[4]),
    ],
};

pub const SIGNAL_DELIVER: Tracepoint = Tracepoint {
    category: "signal",
    name: "signal_deliver",
    without: Without::Refuses,
    fields: &[
        required("sig", &[4]),
        required("code", &[4]),
        required("sa_handler", &[8]),
        required("sa_flags", &[8]),
    ],
};

pub const SCHED_PROCESS_EXIT: Tracepoint = Tracepoint {
    category: "sched",
    name: "sched_process_exit",
    without: Without::Refuses,
    fields: &[optional(
        "group_dead",
        &[1],
        "the last thread of a process is found through signal->live instead",
    )],
};

pub const SYS_ENTER_EXIT_GROUP: Tracepoint = Tracepoint {
    category: "syscalls",
    name: "sys_enter_exit_group",
    without: Without::Loses(
        "without BTF, exit codes passed to exit_group() are unknown: such exits have no status",
    ),
    fields: &[required("error_code", &[8])],
};

/// The addresses of a tracepoint that stores them as split fields.
const SPLIT_ADDRESSES: [FieldSpec; 5] = [
    split("sport", &[2]),
    split("dport", &[2]),
    split("family", &[2]),
    split("saddr_v6", &[16]),
    split("daddr_v6", &[16]),
];

pub const INET_SOCK_SET_STATE: Tracepoint = Tracepoint {
    category: "sock",
    name: "inet_sock_set_state",
    without: WITHOUT_TCP,
    fields: &[
        required("skaddr", &[8]),
        required("oldstate", &[4]),
        required("newstate", &[4]),
        required("protocol", &[2]),
        required("saddr", &[4]),
        required("daddr", &[4]),
        SPLIT_ADDRESSES[0],
        SPLIT_ADDRESSES[1],
        SPLIT_ADDRESSES[2],
        SPLIT_ADDRESSES[3],
        SPLIT_ADDRESSES[4],
    ],
};

pub const TCP_SEND_RESET: Tracepoint = Tracepoint {
    category: "tcp",
    name: "tcp_send_reset",
    without: WITHOUT_TCP,
    fields: &[
        required("skaddr", &[8]),
        optional(
            "state",
            &[4],
            "the state of a socket that sends an RST is read from the socket instead",
        ),
        optional(
            "reason",
            &[4],
            "kernel before 6.10: RSTs carry no reason (null), and RSTs sent without a socket \
             (refused connects to closed ports) are not traced, so refused_after_exit stays 0",
        ),
        required("saddr", &[4, SOCKADDR_SIZE]),
        required("daddr", &[4, SOCKADDR_SIZE]),
        SPLIT_ADDRESSES[0],
        SPLIT_ADDRESSES[1],
        SPLIT_ADDRESSES[2],
        SPLIT_ADDRESSES[3],
        SPLIT_ADDRESSES[4],
    ],
};

/// No kernel observer knows gives this one a `state`: the program reads it from the
/// socket.
pub const TCP_RECEIVE_RESET: Tracepoint = Tracepoint {
    category: "tcp",
    name: "tcp_receive_reset",
    without: WITHOUT_TCP,
    fields: &[
        required("skaddr", &[8]),
        required("saddr", &[4]),
        required("daddr", &[4]),
        SPLIT_ADDRESSES[0],
        SPLIT_ADDRESSES[1],
        SPLIT_ADDRESSES[2],
        SPLIT_ADDRESSES[3],
        SPLIT_ADDRESSES[4],
    ],
};

/// accept4() and accept() share one program, so `ret` must sit at one offset in both.
pub const SYS_EXIT_ACCEPT4: Tracepoint = Tracepoint {
    category: "syscalls",
    name: "sys_exit_accept4",
    without: WITHOUT_ACCEPT,
    fields: &[required("ret", &[8])],
};

pub const SYS_EXIT_ACCEPT: Tracepoint = Tracepoint {
    category: "syscalls",
    name: "sys_exit_accept",
    without: WITHOUT_ACCEPT,
    fields: &[required("ret", &[8])],
};

/// Every classic tracepoint observer reads, in the order `check` lists them.
pub const ALL: [&Tracepoint; 9] = [
    &SIGNAL_GENERATE,
    &SIGNAL_DELIVER,
    &SCHED_PROCESS_EXIT,
    &SYS_ENTER_EXIT_GROUP,
    &INET_SOCK_SET_STATE,
    &TCP_SEND_RESET,
    &TCP_RECEIVE_RESET,
    &SYS_EXIT_ACCEPT4,
    &SYS_EXIT_ACCEPT,
];

/// What this kernel has of one field the table lists.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FieldState {
    Present {
        offset: u32,
        size: u32,
    },
    /// Not used on this kernel (split-address fields where addresses are `sockaddr`s).
    Unused,
    /// An optional field this kernel lacks, or has with a size observer cannot read.
    Absent(&'static str),
    /// A required field this kernel lacks.
    Missing,
    /// A required field with a size observer cannot read.
    WrongSize(u32),
}

impl Tracepoint {
    /// `category:name`, as tracefs and `check` name it.
    pub fn path(&self) -> String {
        format!("{}:{}", self.category, self.name)
    }

    /// What `format` has of each field the table lists, in the table's order.
    pub fn states<'a>(
        &'a self,
        format: &'a Format,
    ) -> impl Iterator<Item = (&'a FieldSpec, FieldState)> + 'a {
        let split = format.fields.get("saddr").is_some_and(|f| f.size == 4);
        self.fields.iter().map(move |spec| {
            let state = match (format.fields.get(spec.name), spec.need) {
                (_, Need::SplitAddresses) if !split => FieldState::Unused,
                (Some(f), _) if spec.sizes.contains(&f.size) => FieldState::Present {
                    offset: f.offset,
                    size: f.size,
                },
                (_, Need::Optional(without)) => FieldState::Absent(without),
                (None, _) => FieldState::Missing,
                (Some(f), _) => FieldState::WrongSize(f.size),
            };
            (spec, state)
        })
    }

    /// Reads this kernel's `format` file and checks every field the table lists.
    pub fn read(&'static self, events: &Path) -> Result<Fields> {
        let format = tracefs::read_format(events, self.category, self.name)?;
        self.fields_of(format)
    }

    /// Checks `format` against the table: an error names the first required field this
    /// kernel lacks or sizes differently.
    pub fn fields_of(&'static self, format: Format) -> Result<Fields> {
        for (spec, state) in self.states(&format) {
            match state {
                FieldState::Missing => {
                    bail!("tracepoint {} has no field '{}'", self.path(), spec.name)
                }
                FieldState::WrongSize(size) => bail!(
                    "tracepoint {} field '{}' has size {size} (expected {:?})",
                    self.path(),
                    spec.name,
                    spec.sizes
                ),
                _ => {}
            }
        }
        Ok(Fields {
            tracepoint: self,
            format,
        })
    }
}

/// A tracepoint's fields on this kernel, checked against the table.
pub struct Fields {
    tracepoint: &'static Tracepoint,
    format: Format,
}

impl Fields {
    /// The offset of a field the table lists, or [`FIELD_ABSENT`] when this kernel does
    /// not have it (optional, or unused).
    pub fn offset(&self, name: &str) -> u32 {
        self.field(name).map_or(FIELD_ABSENT, |(offset, _)| offset)
    }

    /// The size of a field the table lists, when this kernel has it.
    pub fn size(&self, name: &str) -> Option<u32> {
        self.field(name).map(|(_, size)| size)
    }

    fn field(&self, name: &str) -> Option<(u32, u32)> {
        let spec = self
            .tracepoint
            .fields
            .iter()
            .find(|spec| spec.name == name)
            .with_context(|| format!("{} reads no field '{name}'", self.tracepoint.path()))
            .expect("the layout reads only fields the table lists");
        match self
            .tracepoint
            .states(&self.format)
            .find(|(s, _)| s.name == spec.name)
        {
            Some((_, FieldState::Present { offset, size })) => Some((offset, size)),
            _ => None,
        }
    }
}

/// What observer reports less of when `tracepoint` lacks the optional `field`.
pub fn missing_field_consequence(tracepoint: &Tracepoint, field: &str) -> Option<&'static str> {
    tracepoint.fields.iter().find_map(|spec| match spec.need {
        Need::Optional(without) if spec.name == field => Some(without),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(version: &str) -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/formats")
            .join(version)
            .join("events")
    }

    const VERSIONS: [&str; 3] = ["6.1", "6.12", "6.18"];

    #[test]
    fn every_kernel_has_every_tracepoint_and_required_field() {
        for version in VERSIONS {
            for tracepoint in ALL {
                tracepoint
                    .read(&fixture(version))
                    .unwrap_or_else(|e| panic!("{version}: {e:#}"));
            }
        }
    }

    #[test]
    fn optional_fields_follow_the_kernel() {
        let absent = |version, tracepoint: &'static Tracepoint, field| {
            tracepoint.read(&fixture(version)).unwrap().offset(field) == FIELD_ABSENT
        };
        // group_dead arrived in 6.16.
        assert!(absent("6.1", &SCHED_PROCESS_EXIT, "group_dead"));
        assert!(absent("6.12", &SCHED_PROCESS_EXIT, "group_dead"));
        assert!(!absent("6.18", &SCHED_PROCESS_EXIT, "group_dead"));
        // tcp_send_reset's reason, and its sockaddr addresses, arrived in 6.10.
        assert!(absent("6.1", &TCP_SEND_RESET, "reason"));
        assert!(!absent("6.12", &TCP_SEND_RESET, "reason"));
        let v6_1 = TCP_SEND_RESET.read(&fixture("6.1")).unwrap();
        assert_eq!(v6_1.size("saddr"), Some(4));
        assert_ne!(v6_1.offset("sport"), FIELD_ABSENT);
        let v6_12 = TCP_SEND_RESET.read(&fixture("6.12")).unwrap();
        assert_eq!(v6_12.size("saddr"), Some(SOCKADDR_SIZE));
        assert_eq!(v6_12.offset("sport"), FIELD_ABSENT);
    }

    #[test]
    fn a_missing_or_resized_required_field_is_named() {
        let text =
            std::fs::read_to_string(fixture("6.18").join("signal/signal_generate/format")).unwrap();
        let missing = SIGNAL_GENERATE
            .fields_of(Format::parse(&text.replace("result", "outcome")))
            .err()
            .unwrap();
        assert_eq!(
            missing.to_string(),
            "tracepoint signal:signal_generate has no field 'result'"
        );
        let resized = SIGNAL_GENERATE
            .fields_of(Format::parse(&text.replace("size:16", "size:8")))
            .err()
            .unwrap();
        assert!(
            resized.to_string().contains("'comm' has size 8"),
            "{resized}"
        );
        // An optional field with a size observer cannot read is left unread.
        let text = std::fs::read_to_string(fixture("6.18").join("sched/sched_process_exit/format"))
            .unwrap();
        let fields = SCHED_PROCESS_EXIT
            .fields_of(Format::parse(&text.replace("size:1;", "size:4;")))
            .unwrap();
        assert_eq!(fields.offset("group_dead"), FIELD_ABSENT);
    }
}
