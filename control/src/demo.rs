//! `xrelay demo`: the key-value example interface, called through the
//! complete wire path in one process. Every call is marshalled by the
//! generated client stub, split into RPC_CALL fragments, wrapped in
//! Ethernet + IPv4 + UDP with checksums, parsed back as a receiver would,
//! reassembled and dispatched; the reply travels back the same way.
//! No network and no loss: the networked engines come with the protocol
//! engines, and this command grows into the two-node demo then.

use std::net::Ipv4Addr;
use std::process::ExitCode;

use xrelay_datapath::example::{KvError, KvStoreClient, KvStoreServer, MemoryStore, StoreStats};
use xrelay_datapath::marshal::{CallError, Caller, Dispatch, RpcError};
use xrelay_datapath::wire::encap::{self, Encapsulation, Endpoint, DEFAULT_UDP_PORT};
use xrelay_datapath::wire::ethernet::EthernetAddress;
use xrelay_datapath::wire::rpc::{CallFixed, Fragment, RpcCall, RpcReply};
use xrelay_datapath::wire::{Fixed, Flags, Frame, Message, HEADER_LEN};

/// Options of `xrelay demo`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Number of keys to put, read back and delete.
    #[arg(long, default_value_t = 1000)]
    calls: u32,
    /// IP MTU of the simulated link; messages larger than one frame are fragmented.
    #[arg(long, default_value_t = 1500)]
    mtu: usize,
}

/// Counters of what crossed the simulated wire.
#[derive(Debug, Default)]
struct WireStats {
    calls: u64,
    frames: u64,
    bytes: u64,
    fragmented_messages: u64,
}

/// A [`Caller`] whose calls cross the wire format twice (call and reply).
struct WireLoopback<D> {
    server: D,
    encap: Encapsulation,
    client: Endpoint,
    server_end: Endpoint,
    max_fragment: usize,
    next_request: u64,
    sequence: u64,
    frame_buf: Vec<u8>,
    stats: WireStats,
}

impl<D: Dispatch> WireLoopback<D> {
    fn new(server: D, mtu: usize) -> Result<Self, String> {
        let encap = Encapsulation::default();
        // IP MTU minus IPv4 + UDP headers, relay header and the call's fixed part.
        let overhead = encap.header_len() - 14 + HEADER_LEN + CallFixed::LEN;
        if mtu <= overhead || mtu > 9000 {
            return Err(format!("--mtu must be between {} and 9000", overhead + 1));
        }
        let endpoint = |host: u8| Endpoint {
            mac: EthernetAddress([2, 0, 0, 0, 0, host]),
            ip: Ipv4Addr::new(198, 18, 0, host),
            port: DEFAULT_UDP_PORT,
        };
        Ok(WireLoopback {
            server,
            encap,
            client: endpoint(1),
            server_end: endpoint(2),
            max_fragment: mtu - overhead,
            next_request: 1,
            sequence: 1,
            frame_buf: Vec::new(),
            stats: WireStats::default(),
        })
    }

    /// Sends `message` as fragments built by `build`, parses each frame on
    /// the receiving side and reassembles the message there.
    fn transfer(
        &mut self,
        message: &[u8],
        to_server: bool,
        build: impl Fn(Fragment, &[u8]) -> Message<'_>,
    ) -> Result<Vec<u8>, String> {
        let total = u32::try_from(message.len()).map_err(|_| "message over 4 GiB".to_string())?;
        let pieces: Vec<&[u8]> = if message.is_empty() {
            vec![&[]]
        } else {
            message.chunks(self.max_fragment).collect()
        };
        let count = u16::try_from(pieces.len()).map_err(|_| "too many fragments".to_string())?;
        if count > 1 {
            self.stats.fragmented_messages += 1;
        }
        let (src, dst) = if to_server {
            (self.client, self.server_end)
        } else {
            (self.server_end, self.client)
        };
        let mut assembled = vec![0u8; message.len()];
        let mut offset = 0usize;
        for (index, piece) in pieces.iter().enumerate() {
            let fragment = Fragment {
                index: u16::try_from(index).map_err(|_| "fragment index".to_string())?,
                count,
                offset: u32::try_from(offset).map_err(|_| "offset".to_string())?,
                total_len: total,
            };
            let frame = Frame {
                flags: Flags::NONE,
                channel: 1,
                sequence: self.sequence,
                message: build(fragment, piece),
            };
            self.sequence += 1;
            offset += piece.len();

            // Sender: relay frame in place, then the outer headers around it.
            let relay_len = frame.buffer_len();
            let start = self.encap.header_len();
            self.frame_buf.clear();
            self.frame_buf.resize(self.encap.frame_len(relay_len), 0);
            frame.emit(&mut self.frame_buf[start..start + relay_len]);
            encap::emit(self.encap, &src, &dst, relay_len, &mut self.frame_buf);
            self.stats.frames += 1;
            self.stats.bytes += self.frame_buf.len() as u64;

            // Receiver: checksums, addresses, relay header, body.
            let (_, _, relay) =
                encap::parse(&self.frame_buf, self.encap).map_err(|e| e.to_string())?;
            let (received, _) = Frame::parse(relay).map_err(|e| e.to_string())?;
            let (placement, data) = match received.message {
                Message::RpcCall(call) => (call.fragment, call.data),
                Message::RpcReply(reply) => (reply.fragment, reply.data),
                other => return Err(format!("unexpected {}", other.kind().name())),
            };
            let at = placement.offset as usize;
            assembled[at..at + data.len()].copy_from_slice(data);
        }
        Ok(assembled)
    }
}

impl<D: Dispatch> Caller for WireLoopback<D> {
    fn call(
        &mut self,
        interface: u32,
        opcode: u16,
        args: &[u8],
        reply: &mut Vec<u8>,
    ) -> Result<i32, CallError> {
        let request_id = self.next_request;
        self.next_request += 1;
        self.stats.calls += 1;
        let unreachable = |e: String| CallError::Unreachable(e);
        let received_args = self
            .transfer(args, true, |fragment, data| {
                Message::RpcCall(RpcCall {
                    request_id,
                    interface,
                    opcode,
                    fragment,
                    data,
                })
            })
            .map_err(unreachable)?;
        let mut result = Vec::new();
        let code = self.server.dispatch(opcode, &received_args, &mut result);
        *reply = self
            .transfer(&result, false, |fragment, data| {
                Message::RpcReply(RpcReply {
                    request_id,
                    exception: code,
                    fragment,
                    data,
                })
            })
            .map_err(unreachable)?;
        Ok(code)
    }
}

/// The value stored under key `i`: sizes from 0 bytes to 20 KiB, so some
/// calls need one frame and some need many.
fn value_for(i: u32) -> Vec<u8> {
    let len = (i as usize * 37) % (20 * 1024 + 1);
    (0..len)
        .map(|j| (i as usize + j).to_le_bytes()[0])
        .collect()
}

/// Runs the demo; exit status 0 only when every check passed.
pub fn run(args: &Args) -> ExitCode {
    match exercise(args) {
        Ok(summary) => {
            println!("{summary}");
            println!("ok: every check passed");
            ExitCode::SUCCESS
        }
        Err(failure) => {
            eprintln!("xrelay demo: FAILED: {failure}");
            ExitCode::FAILURE
        }
    }
}

fn exercise(args: &Args) -> Result<String, String> {
    let loopback = WireLoopback::new(
        KvStoreServer(MemoryStore::new(args.calls as usize)),
        args.mtu,
    )?;
    let mut kv = KvStoreClient::new(loopback);
    let fail = |what: &str, e: RpcError<KvError>| format!("{what}: {e}");
    let mut value_bytes = 0u64;
    for i in 0..args.calls {
        let value = value_for(i);
        value_bytes += value.len() as u64;
        kv.put(format!("key-{i}"), value)
            .map_err(|e| fail("put", e))?;
    }
    for i in 0..args.calls {
        let value = kv.get(format!("key-{i}")).map_err(|e| fail("get", e))?;
        if value != value_for(i) {
            return Err(format!("get key-{i}: value differs from what was put"));
        }
    }
    let stats = kv.stats().map_err(|e| format!("stats: {e}"))?;
    let expected = StoreStats {
        keys: u64::from(args.calls),
        value_bytes,
    };
    if stats != expected {
        return Err(format!("stats: got {stats:?}, expected {expected:?}"));
    }
    for i in (0..args.calls).step_by(2) {
        kv.delete(format!("key-{i}"))
            .map_err(|e| fail("delete", e))?;
    }
    let mut not_found = 0u32;
    for i in 0..args.calls {
        match kv.get(format!("key-{i}")) {
            Err(RpcError::Exception(KvError::NotFound)) if i % 2 == 0 => not_found += 1,
            Ok(value) if i % 2 == 1 && value == value_for(i) => {}
            other => return Err(format!("get key-{i} after deletes: {other:?}")),
        }
    }
    let wire = &kv.caller_mut().stats;
    Ok(format!(
        "xrelay demo (in-process wire loopback, Ethernet+IPv4+UDP, MTU {mtu})\n  \
         calls: {calls} ({puts} put, {gets} get, {deletes} delete, 1 stats)\n  \
         exceptions: {not_found} NotFound, as expected for deleted keys\n  \
         frames: {frames} ({bytes} bytes on the wire, {frag} messages fragmented)",
        mtu = args.mtu,
        calls = wire.calls,
        puts = args.calls,
        gets = 2 * args.calls,
        deletes = args.calls.div_ceil(2),
        frames = wire.frames,
        bytes = wire.bytes,
        frag = wire.fragmented_messages,
    ))
}
