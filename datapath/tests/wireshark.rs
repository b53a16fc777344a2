//! The Wireshark dissector (`scripts/xrelay.lua`) against a capture of
//! real traffic (as root, in namespaces): an AF_XDP node and a kernel-UDP
//! node exchange every frame kind (RPC with fragments, signals, a ROM
//! module in chunks, session opens and closes, heartbeats) while `tshark`
//! captures on the UDP node's interface, where the AF_XDP node's frames
//! arrive with the headers and checksums our code wrote. `tshark` must
//! then decode every packet as xrelay, name every field of every kind, and
//! find every IPv4 and UDP checksum valid. And every example of
//! docs/wire.md, written to a pcap file, must come out of tshark with the
//! kind, channel, sequence and body length the Rust parser reads.

mod doc_examples;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use xrelay_datapath::example::{KvStoreClient, KvStoreServer, MemoryStore};
use xrelay_datapath::netns::{self, VethPair};
use xrelay_datapath::runtime::{Runtime, RuntimeConfig};
use xrelay_datapath::transport::udp::{UdpConfig, UdpTransport};
use xrelay_datapath::transport::xdp::{XdpConfig, XdpTransport};
use xrelay_datapath::transport::TransportError;
use xrelay_datapath::wire::encap::{Endpoint, DEFAULT_UDP_PORT};

fn relay(endpoint: Endpoint) -> Endpoint {
    Endpoint {
        port: DEFAULT_UDP_PORT,
        ..endpoint
    }
}

/// The labels `tshark -V` must show for each kind.
const FIELDS: &[(&str, &[&str])] = &[
    (
        "SESSION_OPEN",
        &["Open id:", "Service:", "Label length:", "Label:"],
    ),
    ("SESSION_REPLY", &["Open id:", "Status:"]),
    ("SESSION_CLOSE", &["Reason:", "Origin:"]),
    (
        "RPC_CALL",
        &[
            "Request id:",
            "Interface:",
            "Opcode:",
            "Fragment index:",
            "Fragment count:",
            "Offset:",
            "Total length:",
        ],
    ),
    (
        "RPC_REPLY",
        &[
            "Request id:",
            "Exception:",
            "Fragment index:",
            "Fragment count:",
            "Total length:",
        ],
    ),
    ("RPC_ACK", &["Request id:", "Acknowledged:", "Base:"]),
    ("SIGNAL", &["Context:", "Count (cumulative):"]),
    ("SIGNAL_ACK", &["Context:", "Count (cumulative):"]),
    (
        "ROM_ANNOUNCE",
        &[
            "Module:",
            "State:",
            "ROM version:",
            "Size:",
            "Chunk size:",
            "BLAKE3 hash:",
        ],
    ),
    ("ROM_REQUEST", &["Module:", "Have version:"]),
    (
        "ROM_CHUNK",
        &["Module:", "ROM version:", "Offset:", "Data:"],
    ),
    ("ROM_ACK", &["Module:", "Window:", "ROM version:", "Base:"]),
    (
        "HEARTBEAT",
        &["Incarnation:", "Send time (ns):", "Echo time (ns):"],
    ),
];

#[test]
fn tshark_decodes_every_kind_with_every_field_and_valid_checksums() {
    let pair = VethPair::new(1).expect("namespaces and veth (needs root)");
    let dir = std::env::temp_dir().join(format!("xrelay-wireshark-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let capture = dir.join("relay.pcapng");

    // Capture on the UDP node's side.
    let mut tshark = Command::new("ip")
        .args(["netns", "exec", pair.b.ns.name(), "tshark", "-q", "-i"])
        .arg(&pair.b.interface)
        .args(["-f", "udp port 9555", "-w"])
        .arg(&capture)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("tshark (scripts/setup installs it)");
    let mut lines = BufReader::new(tshark.stderr.take().unwrap()).lines();
    loop {
        let line = lines.next().expect("tshark started capturing").unwrap();
        if line.contains("Capturing on") {
            break;
        }
    }

    let (ns_a, ns_b) = (pair.a.ns.name().to_owned(), pair.b.ns.name().to_owned());
    let (if_a, ip_a) = (pair.a.interface.clone(), pair.a.endpoint.ip);
    let a = Runtime::spawn(
        "ws-a",
        RuntimeConfig::new(vec![("b".into(), relay(pair.b.endpoint))]),
        move || {
            netns::enter(&ns_a).map_err(|e| TransportError::Config(e.to_string()))?;
            XdpTransport::new(XdpConfig::new(&if_a, ip_a))
        },
    )
    .expect("an AF_XDP node (needs root)");
    let bind = std::net::SocketAddrV4::new(pair.b.endpoint.ip, DEFAULT_UDP_PORT);
    let b = Runtime::spawn(
        "ws-b",
        RuntimeConfig::new(vec![("a".into(), relay(pair.a.endpoint))]),
        move || {
            netns::enter(&ns_b).map_err(|e| TransportError::Config(e.to_string()))?;
            UdpTransport::bind(bind, UdpConfig::default())
        },
    )
    .unwrap();

    // Every kind: RPC (one call in several fragments), signals, a ROM
    // module in several chunks, opens, closes and heartbeats.
    b.export_rpc("kv", KvStoreServer(MemoryStore::new(10)))
        .unwrap();
    let events = b.export_signal("events").unwrap();
    let rom = b.export_rom("config").unwrap();
    rom.publish(vec![7; 5000]).unwrap();
    {
        let mut kv = KvStoreClient::new(a.open_rpc("b", "kv").unwrap());
        kv.put("big".into(), vec![1; 6000]).unwrap();
        assert_eq!(kv.get("big".into()).unwrap().len(), 6000);
        let signals = a.open_signal("b", "events").unwrap();
        signals.submit_many(0, 3).unwrap();
        assert!(signals.flush(Duration::from_secs(5)).unwrap());
        assert_eq!(events.wait_timeout(Duration::from_secs(5)), Some(3));
        let subscriber = a.subscribe_rom("b", "config").unwrap();
        let first = subscriber
            .wait_change(None, Duration::from_secs(5))
            .expect("the module");
        assert_eq!(first.data.len(), 5000);
    }
    // The handles are gone: their sessions close.
    std::thread::sleep(Duration::from_millis(400));
    drop(a);
    drop(b);
    let _ = Command::new("kill")
        .args(["-INT", &tshark.id().to_string()])
        .status();
    let _ = tshark.wait();

    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/xrelay.lua");
    let decoded = Command::new("tshark")
        .args(["-X", &format!("lua_script:{script}")])
        .args([
            "-o",
            "ip.check_checksum:TRUE",
            "-o",
            "udp.check_checksum:TRUE",
        ])
        .arg("-r")
        .arg(&capture)
        .arg("-V")
        .output()
        .unwrap();
    assert!(
        decoded.status.success(),
        "{}",
        String::from_utf8_lossy(&decoded.stderr)
    );
    let text = String::from_utf8_lossy(&decoded.stdout);
    let packets = text.matches("\nFrame ").count() + usize::from(text.starts_with("Frame "));
    let relay_frames = text.matches("xrelay relay protocol, ").count();
    eprintln!("{packets} packets, {relay_frames} decoded as xrelay");
    assert!(packets > 20, "only {packets} packets captured");
    assert_eq!(relay_frames, packets, "a packet not decoded as xrelay");
    for bad in [
        "Malformed",
        "Expert Info (Error",
        "Expert Info (Warning",
        "Checksum Status: Bad",
    ] {
        assert!(!text.contains(bad), "{bad:?} in the decode:\n{text}");
    }
    assert!(
        text.matches("[Header checksum status: Good]").count() >= packets,
        "IPv4 checksums"
    );
    assert!(
        text.matches("[Checksum Status: Good]").count() >= packets,
        "UDP checksums"
    );
    // Every kind, each with every one of its fields named.
    for (kind, fields) in FIELDS {
        let frame = text
            .split("\nFrame ")
            .find(|frame| frame.contains(&format!("xrelay relay protocol, {kind},")))
            .unwrap_or_else(|| panic!("no {kind} frame in the capture"));
        for field in *fields {
            assert!(frame.contains(field), "{kind} without {field:?}:\n{frame}");
        }
    }
    if std::env::var_os("XRELAY_KEEP_CAPTURE").is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// A pcap file (Ethernet link type) of `packets`.
fn pcap(packets: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&0xa1b2_c3d4u32.to_le_bytes()); // magic
    out.extend_from_slice(&2u16.to_le_bytes()); // version 2.4
    out.extend_from_slice(&4u16.to_le_bytes());
    out.extend_from_slice(&0i32.to_le_bytes()); // UTC
    out.extend_from_slice(&0u32.to_le_bytes()); // accuracy
    out.extend_from_slice(&65535u32.to_le_bytes()); // snap length
    out.extend_from_slice(&1u32.to_le_bytes()); // LINKTYPE_ETHERNET
    for (i, packet) in packets.iter().enumerate() {
        let len = u32::try_from(packet.len()).unwrap();
        out.extend_from_slice(&u32::try_from(i + 1).unwrap().to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes());
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(packet);
    }
    out
}

#[test]
fn tshark_reads_the_values_of_every_example_of_the_wire_document() {
    use xrelay_datapath::wire::encap::{self, Encapsulation};
    use xrelay_datapath::wire::ethernet::EthernetAddress;
    use xrelay_datapath::wire::Frame;

    // Every frame example of docs/wire.md: bare frames wrapped in
    // Ethernet + IPv4 + UDP (port 9555), the encapsulated ones as they are.
    let (src, dst) = (
        Endpoint {
            mac: EthernetAddress([2, 0x78, 0x72, 0, 0, 1]),
            ip: std::net::Ipv4Addr::new(198, 18, 0, 1),
            port: DEFAULT_UDP_PORT,
        },
        Endpoint {
            mac: EthernetAddress([2, 0x78, 0x72, 0, 0, 2]),
            ip: std::net::Ipv4Addr::new(198, 18, 0, 2),
            port: DEFAULT_UDP_PORT,
        },
    );
    let mut packets = Vec::new();
    let mut expected = Vec::new();
    for example in doc_examples::examples() {
        let (packet, relay) = match example.tag.as_str() {
            "frame" => {
                let udp = Encapsulation::default();
                let mut packet = vec![0; udp.frame_len(example.bytes.len())];
                let start = udp.header_len();
                packet[start..start + example.bytes.len()].copy_from_slice(&example.bytes);
                encap::emit(udp, &src, &dst, example.bytes.len(), &mut packet);
                (packet, example.bytes.clone())
            }
            "udp" | "raw" => {
                let encap = example.encapsulation().expect("udp or raw");
                let (_, _, relay) = encap::parse(&example.bytes, encap).unwrap();
                (example.bytes.clone(), relay.to_vec())
            }
            _ => continue,
        };
        let (frame, _) =
            Frame::parse(&relay).unwrap_or_else(|e| panic!("docs/wire.md:{}: {e}", example.line));
        expected.push(format!(
            "{:#04x},{},{},{}",
            u8::from(frame.message.kind()),
            frame.channel,
            frame.sequence,
            u16::from_le_bytes([relay[6], relay[7]])
        ));
        packets.push(packet);
    }
    let dir = std::env::temp_dir().join(format!("xrelay-wire-examples-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("examples.pcap");
    std::fs::write(&file, pcap(&packets)).unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/xrelay.lua");
    let tshark = |args: &[&str]| {
        let output = Command::new("tshark")
            .args(["-X", &format!("lua_script:{script}")])
            .args([
                "-o",
                "ip.check_checksum:TRUE",
                "-o",
                "udp.check_checksum:TRUE",
                "-r",
            ])
            .arg(&file)
            .args(args)
            .output()
            .expect("tshark (scripts/setup installs it)");
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap()
    };
    let fields = tshark(&[
        "-T",
        "fields",
        "-E",
        "separator=,",
        "-e",
        "xrelay.kind",
        "-e",
        "xrelay.channel",
        "-e",
        "xrelay.sequence",
        "-e",
        "xrelay.body_len",
    ]);
    let got: Vec<&str> = fields.lines().collect();
    assert_eq!(got, expected, "tshark's values against the Rust parser's");
    let verbose = tshark(&["-V"]);
    for bad in [
        "Malformed",
        "Expert Info (Error",
        "Expert Info (Warning",
        "Checksum Status: Bad",
    ] {
        assert!(!verbose.contains(bad), "{bad:?} in:\n{verbose}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
