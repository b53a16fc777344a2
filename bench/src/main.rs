//! `xrelay-bench`.
#![forbid(unsafe_code)]

fn main() {
    println!("xrelay-bench");
}
