//! Compiles the XDP program (`xdp-prog/xrelay.bpf.c`) with clang into
//! `$OUT_DIR/xrelay.bpf.o`, which `transport::xdp` embeds.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    let source = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../xdp-prog/xrelay.bpf.c");
    println!("cargo:rerun-if-changed={}", source.display());
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let object = out.join("xrelay.bpf.o");
    // Debian keeps asm/ headers under the target triple.
    let triple = Command::new("gcc")
        .arg("-dumpmachine")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map_or_else(
            || "x86_64-linux-gnu".to_owned(),
            |o| String::from_utf8_lossy(&o.stdout).trim().to_owned(),
        );
    let status = Command::new("clang")
        .args(["-O2", "-g", "-target", "bpf", "-Wall", "-Werror"])
        .arg(format!("-I/usr/include/{triple}"))
        .arg("-c")
        .arg(&source)
        .arg("-o")
        .arg(&object)
        .status();
    match status {
        Ok(status) if status.success() => {}
        Ok(status) => panic!(
            "clang failed to compile {} ({status}); is libbpf-dev installed? (scripts/setup)",
            source.display()
        ),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            panic!("clang not found: install the Debian package clang (scripts/setup installs it)")
        }
        Err(error) => panic!("running clang: {error}"),
    }
}
