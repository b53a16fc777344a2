//! `xrelay decode HEX`: prints a frame field by field, for people reading
//! captures or the examples of docs/wire.md.

use std::process::ExitCode;

use xrelay_datapath::wire::encap::{self, Encapsulation, ETHERTYPE_RELAY};
use xrelay_datapath::wire::Frame;

/// Options of `xrelay decode`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The frame as hex digits; spaces and `#` comments are ignored.
    hex: Vec<String>,
    /// The UDP port relay frames use (for Ethernet frames).
    #[arg(long, default_value_t = encap::DEFAULT_UDP_PORT)]
    port: u16,
}

pub(crate) fn parse_hex(words: &[String]) -> Result<Vec<u8>, String> {
    let digits: String = words
        .iter()
        .map(|w| w.split('#').next().unwrap_or(""))
        .flat_map(|w| w.chars().filter(|c| !c.is_whitespace()))
        .collect();
    if !digits.len().is_multiple_of(2) {
        return Err("an odd number of hex digits".into());
    }
    (0..digits.len())
        .step_by(2)
        .map(|i| {
            u8::from_str_radix(&digits[i..i + 2], 16)
                .map_err(|_| format!("not hex: {:?}", &digits[i..i + 2]))
        })
        .collect()
}

/// Decodes and prints; exit status 2 when the input is not a valid frame.
pub fn run(args: &Args) -> ExitCode {
    let bytes = match parse_hex(&args.hex) {
        Ok(bytes) => bytes,
        Err(e) => {
            eprintln!("xrelay decode: {e}");
            return ExitCode::from(2);
        }
    };
    let attempts = [
        (
            "Ethernet + IPv4 + UDP",
            Some(Encapsulation::Udp { port: args.port }),
        ),
        (
            "raw Ethernet",
            Some(Encapsulation::Ethernet {
                ethertype: ETHERTYPE_RELAY,
            }),
        ),
        ("relay frame", None),
    ];
    let mut errors = Vec::new();
    for (name, encapsulation) in attempts {
        let result = match encapsulation {
            Some(encapsulation) => {
                encap::parse(&bytes, encapsulation).and_then(|(src, dst, relay)| {
                    Frame::parse(relay).map(|(frame, _)| (Some((src, dst)), frame))
                })
            }
            None => Frame::parse(&bytes).map(|(frame, _)| (None, frame)),
        };
        match result {
            Ok((addresses, frame)) => {
                println!("{name}");
                if let Some((src, dst)) = addresses {
                    println!("  from {} {}:{}", src.mac, src.ip, src.port);
                    println!("  to   {} {}:{}", dst.mac, dst.ip, dst.port);
                }
                println!(
                    "  {} channel {} sequence {} flags {:#04x}",
                    frame.message.kind().name(),
                    frame.channel,
                    frame.sequence,
                    frame.flags.bits()
                );
                println!("  {:#?}", frame.message);
                return ExitCode::SUCCESS;
            }
            Err(e) => errors.push(format!("as {name}: {e}")),
        }
    }
    eprintln!("xrelay decode: not a relay frame ({})", errors.join("; "));
    ExitCode::from(2)
}
