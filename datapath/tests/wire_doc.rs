//! docs/wire.md is normative: every hex example in it must parse, carry the
//! kind its section names, and re-emit byte for byte. This test reads the
//! document itself, so the prose and the code cannot drift apart.

use xrelay_datapath::marshal::to_vec;
use xrelay_datapath::wire::encap;
use xrelay_datapath::wire::{Frame, Kind, Message};

mod doc_examples;

use doc_examples::examples;

fn check_frame(bytes: &[u8], line: usize) -> Kind {
    let (frame, len) = Frame::parse(bytes).unwrap_or_else(|e| panic!("docs/wire.md:{line}: {e}"));
    assert_eq!(len, bytes.len(), "docs/wire.md:{line}: frame length");
    let mut out = vec![0xa5; frame.buffer_len()];
    frame.emit(&mut out);
    assert_eq!(out, bytes, "docs/wire.md:{line}: re-emitted bytes differ");
    frame.message.kind()
}

#[test]
fn every_example_in_the_wire_document_parses_and_re_emits() {
    let examples = examples();
    let mut kinds = Vec::new();
    let mut tags = Vec::new();
    for example in &examples {
        tags.push(example.tag.as_str());
        match example.tag.as_str() {
            "frame" => kinds.push(check_frame(&example.bytes, example.line)),
            "udp" | "raw" => {
                let encap = example.encapsulation().expect("udp or raw");
                let (src, dst, relay) = encap::parse(&example.bytes, encap)
                    .unwrap_or_else(|e| panic!("docs/wire.md:{}: {e}", example.line));
                check_frame(relay, example.line);
                let mut out = vec![0xa5; encap.frame_len(relay.len())];
                let start = encap.header_len();
                out[start..start + relay.len()].copy_from_slice(relay);
                encap::emit(encap, &src, &dst, relay.len(), &mut out);
                assert_eq!(
                    out, example.bytes,
                    "docs/wire.md:{}: encapsulation",
                    example.line
                );
            }
            "marshal" => {
                // The put("k", [0x76]) example of section 13.3.
                assert_eq!(example.bytes, to_vec(&("k".to_string(), vec![0x76u8])));
            }
            other => panic!("docs/wire.md:{}: unknown example tag {other}", example.line),
        }
    }
    for kind in Kind::ALL {
        assert!(
            kinds.contains(&kind),
            "docs/wire.md has no example of {}",
            kind.name()
        );
    }
    assert!(tags.contains(&"udp") && tags.contains(&"raw") && tags.contains(&"marshal"));
}

#[test]
fn the_announce_example_hashes_its_content_with_blake3() {
    let announce = examples()
        .into_iter()
        .filter(|e| e.tag == "frame")
        .find_map(|e| match Frame::parse(&e.bytes).ok()?.0.message {
            Message::RomAnnounce(announce) => Some(announce),
            _ => None,
        })
        .expect("a ROM_ANNOUNCE example");
    assert_eq!(announce.size, 3);
    assert_eq!(announce.hash, *blake3::hash(b"abc").as_bytes());
}
