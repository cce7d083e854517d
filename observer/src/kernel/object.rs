//! The kernel programs' object file, embedded at build time by build.rs from
//! `target/bpf/observer.bpf.o` (made by `cargo xtask build-ebpf`).
use anyhow::{Result, bail};

#[cfg(observer_ebpf_object)]
static OBJECT: Option<&[u8]> = Some(aya::include_bytes_aligned!(env!("OBSERVER_EBPF_OBJECT")));
#[cfg(not(observer_ebpf_object))]
static OBJECT: Option<&[u8]> = None;

pub fn bytes() -> Result<&'static [u8]> {
    match OBJECT {
        Some(bytes) => Ok(bytes),
        None => bail!(
            "this observer binary was built without its eBPF programs: run \
             `cargo xtask build-ebpf` and rebuild (or just `cargo xtask watch`, which does both)"
        ),
    }
}
