//! Properties of the wire parsers: arbitrary and mutated bytes never panic,
//! generated frames survive emit-then-parse unchanged, and whatever a
//! parser accepts re-emits to exactly the bytes it accepted (one encoding
//! per value, so nothing a peer sends is silently reinterpreted).

#![expect(
    clippy::cast_possible_truncation,
    reason = "generated numbers are cut to field widths on purpose"
)]

use proptest::prelude::*;
use xrelay_datapath::wire::encap::{self, Encapsulation, Endpoint, ETHERTYPE_RELAY};
use xrelay_datapath::wire::ethernet::EthernetAddress;
use xrelay_datapath::wire::heartbeat::Heartbeat;
use xrelay_datapath::wire::rom::{RomAck, RomAnnounce, RomChunk, RomRequest, RomState};
use xrelay_datapath::wire::rpc::{Acked, Fragment, RpcAck, RpcCall, RpcReply};
use xrelay_datapath::wire::session::{
    CloseReason, OpenStatus, Origin, Service, SessionClose, SessionOpen, SessionReply,
};
use xrelay_datapath::wire::signal::{Signal, SignalAck};
use xrelay_datapath::wire::{Flags, Frame, Message, RelayPacket};

/// Raw material for one generated message; [`message`] shapes it into a
/// valid body of the chosen kind.
#[derive(Debug, Clone)]
struct Seed {
    kind: u8,
    numbers: [u64; 6],
    data: Vec<u8>,
    label: String,
}

fn seed() -> impl Strategy<Value = Seed> {
    (
        0u8..13,
        any::<[u64; 6]>(),
        proptest::collection::vec(any::<u8>(), 0..300),
        "[a-z >-]{0,40}",
    )
        .prop_map(|(kind, numbers, data, label)| Seed {
            kind,
            numbers,
            data,
            label,
        })
}

fn fragment(n: u64, data_len: usize) -> Fragment {
    let count = (n % 5 + 1) as u16;
    if count == 1 {
        return Fragment::whole(data_len as u32);
    }
    let index = (n >> 8) as u16 % count;
    let offset = (n >> 16) as u32 % 4096;
    Fragment {
        index,
        count,
        offset,
        total_len: offset + data_len as u32 + (n >> 32) as u32 % 4096,
    }
}

fn message(seed: &Seed) -> Message<'_> {
    let [a, b, c, d, e, f] = seed.numbers;
    let data = &seed.data[..];
    let bitmap = &seed.data[..seed.data.len().min(64)];
    match seed.kind {
        0 => Message::SessionOpen(SessionOpen {
            open_id: a as u32,
            service: Service::from(b as u8),
            label: &seed.label,
        }),
        1 => Message::SessionReply(SessionReply {
            open_id: a as u32,
            status: OpenStatus::from(b as i32),
        }),
        2 => Message::SessionClose(SessionClose {
            reason: CloseReason::from(a as i32),
            origin: if b % 2 == 0 {
                Origin::Client
            } else {
                Origin::Server
            },
        }),
        3 => Message::RpcCall(RpcCall {
            request_id: a,
            interface: b as u32,
            opcode: c as u16,
            fragment: fragment(d, data.len()),
            data,
        }),
        4 => Message::RpcReply(RpcReply {
            request_id: a,
            exception: b as i32,
            fragment: fragment(c, data.len()),
            data,
        }),
        5 => Message::RpcAck(RpcAck {
            request_id: a,
            acked: if b % 2 == 0 {
                Acked::Call
            } else {
                Acked::Reply
            },
            base: c as u16,
            bitmap,
        }),
        6 => Message::Signal(Signal {
            context: a as u32,
            count: b,
        }),
        7 => Message::SignalAck(SignalAck {
            context: a as u32,
            count: b,
        }),
        8 => {
            let removed = b % 3 == 0;
            Message::RomAnnounce(RomAnnounce {
                module: a as u32,
                state: if removed {
                    RomState::Removed
                } else {
                    RomState::Valid
                },
                version: c.max(1),
                size: if removed { 0 } else { d % (1 << 30) },
                chunk_size: (e % 65535 + 1) as u32,
                hash: [f as u8; 32],
            })
        }
        9 => Message::RomRequest(RomRequest {
            module: a as u32,
            have_version: b,
        }),
        10 => Message::RomChunk(RomChunk {
            module: a as u32,
            version: b,
            offset: c % (1 << 29),
            data,
        }),
        11 => Message::RomAck(RomAck {
            module: a as u32,
            version: b,
            base: c as u32,
            window: d as u32,
            bitmap,
        }),
        _ => Message::Heartbeat(Heartbeat {
            incarnation: a.max(1),
            send_time: b,
            echo_time: c,
        }),
    }
}

fn emit(frame: &Frame<'_>) -> Vec<u8> {
    let mut out = vec![0xa5; frame.buffer_len()];
    frame.emit(&mut out);
    out
}

fn frame_of<'a>(seed: &'a Seed, auth: bool, channel: u32, sequence: u64) -> Frame<'a> {
    Frame {
        flags: if auth { Flags::AUTH } else { Flags::NONE },
        channel,
        sequence,
        message: message(seed),
    }
}

/// If `bytes` parse, the frame re-emits to the same header and body (the
/// trailer is the authentication layer's and padding is ignored).
fn accepted_bytes_are_canonical(bytes: &[u8]) -> Result<(), TestCaseError> {
    if let Ok((frame, len)) = Frame::parse(bytes) {
        let out = emit(&frame);
        // A longer header (fields appended by a newer revision) is skipped
        // on parse and not re-emitted; everything else must match.
        let header_len = usize::from(bytes[3]);
        prop_assert_eq!(out.len() + header_len - 20, len);
        let covered = len - frame.flags.trailer_len();
        prop_assert_eq!(
            &out[20..covered + 20 - header_len],
            &bytes[header_len..covered]
        );
        prop_assert_eq!(&out[..3], &bytes[..3]);
        prop_assert_eq!(&out[4..20], &bytes[4..20]);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn generated_frames_round_trip(seed in seed(), auth: bool, channel: u32, sequence: u64) {
        let frame = frame_of(&seed, auth, channel, sequence);
        let bytes = emit(&frame);
        let (parsed, len) = Frame::parse(&bytes).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(parsed, frame);
        prop_assert_eq!(len, bytes.len());
        let packet = RelayPacket::new_checked(&bytes[..]).unwrap();
        prop_assert_eq!(packet.body().len(), frame.message.buffer_len());
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        accepted_bytes_are_canonical(&bytes)?;
        let _ = encap::parse(&bytes, Encapsulation::default());
        let _ = encap::parse(&bytes, Encapsulation::Ethernet { ethertype: ETHERTYPE_RELAY });
    }

    #[test]
    fn arbitrary_bodies_behind_a_valid_header_never_panic(
        kind: u8,
        body in proptest::collection::vec(any::<u8>(), 0..120),
    ) {
        let mut bytes = vec![0x58, 0x52, 1, 20, kind, 0];
        bytes.extend_from_slice(&(body.len() as u16).to_le_bytes());
        bytes.extend_from_slice(&[0; 12]);
        bytes.extend_from_slice(&body);
        accepted_bytes_are_canonical(&bytes)?;
    }

    #[test]
    fn mutated_frames_never_panic_and_stay_canonical(
        seed in seed(),
        auth: bool,
        flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..4),
        cut in any::<usize>(),
    ) {
        let mut bytes = emit(&frame_of(&seed, auth, 7, 9));
        for (position, value) in flips {
            let len = bytes.len();
            bytes[position % len] = value;
        }
        accepted_bytes_are_canonical(&bytes)?;
        let cut = cut % (bytes.len() + 1);
        accepted_bytes_are_canonical(&bytes[..cut])?;
    }

    #[test]
    fn mutated_ethernet_frames_never_panic(
        seed in seed(),
        raw: bool,
        flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..4),
    ) {
        let encap = if raw {
            Encapsulation::Ethernet { ethertype: ETHERTYPE_RELAY }
        } else {
            Encapsulation::default()
        };
        let frame = frame_of(&seed, false, 1, 2);
        let relay = emit(&frame);
        let src = Endpoint { mac: EthernetAddress([2, 0, 0, 0, 0, 1]), ip: [198, 18, 0, 1].into(), port: 9555 };
        let dst = Endpoint { mac: EthernetAddress([2, 0, 0, 0, 0, 2]), ip: [198, 18, 0, 2].into(), port: 9555 };
        let mut buf = vec![0xa5; encap.frame_len(relay.len())];
        let start = encap.header_len();
        buf[start..start + relay.len()].copy_from_slice(&relay);
        encap::emit(encap, &src, &dst, relay.len(), &mut buf);
        let unmodified = flips.is_empty();
        for (position, value) in flips {
            let len = buf.len();
            buf[position % len] = value;
        }
        match encap::parse(&buf, encap) {
            Ok((_, _, inner)) => accepted_bytes_are_canonical(inner)?,
            Err(error) => prop_assert!(!unmodified, "an unmodified frame failed: {error}"),
        }
    }
}
