//! The `xrelay` binary. Today it runs the wire demo; the daemon (`run`,
//! `check`, `reload`, ...) arrives with the control plane.
#![forbid(unsafe_code)]

fn main() {
    println!("xrelay");
}
