//! Embeds the eBPF object that `cargo xtask build-ebpf` writes. Without it the host crates
//! still build (tests, clippy, `observer report`), and `observer watch` says what to run.
use std::path::PathBuf;

fn main() {
    println!("cargo::rustc-check-cfg=cfg(observer_ebpf_object)");
    println!("cargo::rerun-if-env-changed=OBSERVER_EBPF_OBJECT");
    let object = std::env::var_os("OBSERVER_EBPF_OBJECT")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap());
            manifest.join("../target/bpf/observer.bpf.o")
        });
    println!("cargo::rerun-if-changed={}", object.display());
    if object.is_file() {
        println!("cargo::rustc-cfg=observer_ebpf_object");
        println!("cargo::rustc-env=OBSERVER_EBPF_OBJECT={}", object.display());
    } else {
        println!(
            "cargo::warning=eBPF object {} not found: `observer watch` will refuse to start; \
             run `cargo xtask build-ebpf`",
            object.display()
        );
    }
}
