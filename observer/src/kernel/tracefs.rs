//! tracefs: where classic tracepoints live, and their `format` files, which give each
//! field's offset on this kernel (offsets differ between kernels, so none is hard-coded).
use std::{
    collections::HashMap,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result, bail};

pub const TRACEFS: &str = "/sys/kernel/tracing";

/// One field of a tracepoint record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Field {
    pub offset: u32,
    pub size: u32,
}

/// The fields of one tracepoint, by name.
#[derive(Clone, Debug, Default)]
pub struct Format {
    pub fields: HashMap<String, Field>,
}

impl Format {
    /// Parses a `format` file: lines such as
    /// `field:pid_t pid;<TAB>offset:36;<TAB>size:4;<TAB>signed:1;`.
    pub fn parse(text: &str) -> Self {
        let fields = text
            .lines()
            .filter_map(|line| {
                let decl = line.trim().strip_prefix("field:")?;
                let (decl, rest) = decl.split_once(';')?;
                let name = decl.split_whitespace().last()?;
                let name = name.split('[').next()?.to_string();
                let value = |key: &str| {
                    rest.split(';')
                        .find_map(|part| part.trim().strip_prefix(key)?.parse::<u32>().ok())
                };
                Some((
                    name,
                    Field {
                        offset: value("offset:")?,
                        size: value("size:")?,
                    },
                ))
            })
            .collect();
        Self { fields }
    }
}

/// The tracefs events directory, mounting tracefs first if it is not mounted.
pub fn ensure_mounted() -> Result<PathBuf> {
    let events = Path::new(TRACEFS).join("events");
    if has_entries(&events) {
        return Ok(events);
    }
    mount_tracefs().with_context(|| {
        format!(
            "tracefs is not mounted at {TRACEFS} and mounting it failed; \
             mount it with `mount -t tracefs tracefs {TRACEFS}` (needs CAP_SYS_ADMIN)"
        )
    })?;
    if !has_entries(&events) {
        bail!(
            "tracefs is mounted at {TRACEFS} but {} is empty",
            events.display()
        );
    }
    Ok(events)
}

fn has_entries(dir: &Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|mut entries| entries.next().is_some())
}

fn mount_tracefs() -> Result<()> {
    let target = std::ffi::CString::new(TRACEFS)?;
    let fstype = c"tracefs";
    // SAFETY: all pointers are valid NUL-terminated strings; data may be null.
    let rc = unsafe {
        libc::mount(
            fstype.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    Ok(())
}

/// Reads `events/<category>/<name>/format`.
pub fn read_format(events: &Path, category: &str, name: &str) -> Result<Format> {
    let path = events.join(category).join(name).join("format");
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "tracepoint {category}:{name} is not available ({})",
            path.display()
        )
    })?;
    Ok(Format::parse(&text))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SIGNAL_GENERATE_6_18: &str = "name: signal_generate
ID: 200
format:
	field:unsigned short common_type;	offset:0;	size:2;	signed:0;
	field:int common_pid;	offset:4;	size:4;	signed:1;

	field:int sig;	offset:8;	size:4;	signed:1;
	field:int errno;	offset:12;	size:4;	signed:1;
	field:int code;	offset:16;	size:4;	signed:1;
	field:char comm[16];	offset:20;	size:16;	signed:0;
	field:pid_t pid;	offset:36;	size:4;	signed:1;
	field:int group;	offset:40;	size:4;	signed:1;
	field:int result;	offset:44;	size:4;	signed:1;

print fmt: \"sig=%d errno=%d\", REC->sig, REC->errno
";

    #[test]
    fn parses_field_offsets_and_sizes() {
        let format = Format::parse(SIGNAL_GENERATE_6_18);
        assert_eq!(
            format.fields["comm"],
            Field {
                offset: 20,
                size: 16
            }
        );
        assert_eq!(
            format.fields["pid"],
            Field {
                offset: 36,
                size: 4
            }
        );
        assert!(!format.fields.contains_key("group_dead"));
    }

    #[test]
    fn reads_this_kernels_formats_when_tracefs_is_there() {
        let events = Path::new(TRACEFS).join("events");
        if !has_entries(&events) {
            return; // not mounted in this (unprivileged) environment; parsing is tested above
        }
        let format = read_format(&events, "signal", "signal_generate").unwrap();
        assert!(format.fields["sig"].offset >= 8);
    }
}
