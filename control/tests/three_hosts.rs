//! Three daemons on AF_XDP, in namespaces on one bridged segment (needs
//! root; fails, never skips, without it):
//!
//! * B exports ROM `config` and the RPC session `kv`; its policy lets A
//!   subscribe and call, not C. A gets every version; C's attempts are
//!   refused and counted as policy drops at B.
//! * A reload of B that grants C, made while a 16 MiB version is on its
//!   way to A: C then subscribes and receives the current version, and
//!   A's transfer completes intact with nothing revoked.
//! * C reloaded with a wrong key: B drops its frames as `auth_failed`,
//!   and A's traffic goes on.
//! * Frames of A's captured on the switch and sent to B again, one of them
//!   captured before B's reload: B drops both as `replayed`, and A's
//!   traffic goes on.

#[expect(dead_code, reason = "the loopback tests use the rest")]
mod support;

use std::ffi::CString;
use std::io::{BufRead, BufReader};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::{cli, cli_fails, eventually, peer, stats, write, Daemon};
use xrelay_datapath::netns::{self, Lan};

const KEY_AB: &str = "a0a1a2a3a4a5a6a7a8a9aaabacadaeafb0b1b2b3b4b5b6b7b8b9babbbcbdbebf";
const KEY_BC: &str = "c0c1c2c3c4c5c6c7c8c9cacbcccdcecfd0d1d2d3d4d5d6d7d8d9dadbdcdddedf";
const WRONG: &str = "0000000000000000000000000000000000000000000000000000000000000001";

/// Test `tag`'s control socket of daemon `name` (tests run in parallel).
fn socket(tag: &str, name: &str) -> PathBuf {
    support::socket_path(&format!("{tag}-{name}"))
}

/// A client host (A or C) with B as its only peer and routes to it.
fn client(tag: &str, lan: &Lan, name: &str, n: usize, key: &str, queues: &str) -> String {
    let host = &lan.hosts[n - 1];
    // A names B's MAC; C leaves it to the kernel's neighbour table.
    let mac = if name == "a" {
        "mac = \"02:78:72:00:00:02\"\n"
    } else {
        ""
    };
    format!(
        r#"
[node]
name = "{name}"
address = "{ip}"
interface = "{interface}"
transport = "xdp"
control_socket = "{socket}"
{queues}

[[peer]]
name = "b"
address = "198.18.0.2"
{mac}key = "{key}"

[[route]]
service = "rom"
label = "config"
peer = "b"

[[route]]
service = "rpc"
label = "kv"
peer = "b"
"#,
        ip = host.endpoint.ip,
        interface = host.interface,
        socket = socket(tag, name).display(),
    )
}

/// B: exports `config` and `kv`; A may use both, the third host (`c`,
/// at 198.18.0.3) only with `grant_c`; `queues` goes into `[node]`.
fn server(tag: &str, lan: &Lan, file: &Path, c: &str, grant_c: bool, queues: &str) -> String {
    let c_policy = if grant_c {
        format!("[[policy]]\npeer = \"{c}\"\nrpc = [\"kv\"]\nrom = [\"config\"]\n")
    } else {
        String::new()
    };
    format!(
        r#"
[node]
name = "b"
address = "198.18.0.2"
interface = "{interface}"
transport = "xdp"
control_socket = "{socket}"
{queues}

[[peer]]
name = "a"
address = "198.18.0.1"
mac = "02:78:72:00:00:01"
key = "{KEY_AB}"

[[peer]]
name = "{c}"
address = "198.18.0.3"
mac = "02:78:72:00:00:03"
key = "{KEY_BC}"

[[export.rpc]]
label = "kv"
interface = "kv-store"

[[export.rom]]
label = "config"
file = "{file}"

[[policy]]
peer = "a"
rpc = ["kv"]
rom = ["config"]
{c_policy}"#,
        interface = lan.hosts[1].interface,
        socket = socket(tag, "b").display(),
        file = file.display(),
    )
}

fn counter(stats: &serde_json::Value, name: &str, drop: &str) -> u64 {
    peer(stats, name)["drops"][drop].as_u64().unwrap()
}

/// A raw socket on one switch port (AF_PACKET), to capture and inject
/// Ethernet frames as an attacker on the segment would.
struct PacketSocket(OwnedFd);

impl PacketSocket {
    fn bind(interface: &str) -> PacketSocket {
        let all = u16::try_from(libc::ETH_P_ALL).unwrap().to_be();
        // SAFETY: socket(2) with constant arguments; the result is checked.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(all)) };
        assert!(
            fd >= 0,
            "AF_PACKET socket: {}",
            std::io::Error::last_os_error()
        );
        // SAFETY: `fd` is a new descriptor owned by nothing else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let name = CString::new(interface).unwrap();
        // SAFETY: `name` is a NUL-terminated string that outlives the call.
        let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
        assert_ne!(index, 0, "no interface {interface}");
        // SAFETY: sockaddr_ll is plain data; all zeroes is a valid value.
        let mut address: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        address.sll_family = u16::try_from(libc::AF_PACKET).unwrap();
        address.sll_protocol = all;
        address.sll_ifindex = i32::try_from(index).unwrap();
        let length = u32::try_from(size_of::<libc::sockaddr_ll>()).unwrap();
        // SAFETY: `address` is a valid sockaddr_ll of `length` bytes.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&raw const address).cast::<libc::sockaddr>(),
                length,
            )
        };
        assert_eq!(rc, 0, "bind: {}", std::io::Error::last_os_error());
        let timeout = libc::timeval {
            tv_sec: 0,
            tv_usec: 100_000,
        };
        // SAFETY: SO_RCVTIMEO takes a timeval of the given size.
        let rc = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&raw const timeout).cast::<libc::c_void>(),
                u32::try_from(size_of::<libc::timeval>()).unwrap(),
            )
        };
        assert_eq!(rc, 0);
        PacketSocket(fd)
    }

    /// One frame, or `None` after the receive timeout.
    fn recv(&self, buf: &mut [u8]) -> Option<usize> {
        // SAFETY: `buf` is writable for its length.
        let n = unsafe { libc::recv(self.0.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        usize::try_from(n).ok()
    }

    fn send(&self, frame: &[u8]) {
        // SAFETY: `frame` is readable for its length.
        let n = unsafe { libc::send(self.0.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
        assert_eq!(usize::try_from(n).ok(), Some(frame.len()));
    }
}

/// Runs `f` on a thread inside network namespace `ns`.
fn inside<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let ns = ns.to_owned();
    std::thread::spawn(move || {
        netns::enter(&ns).unwrap();
        f()
    })
    .join()
    .unwrap()
}

/// Captures one relay frame from `src` to `dst` on switch port `port`.
fn capture_one(switch: &str, port: &str, src: [u8; 4], dst: [u8; 4]) -> Vec<u8> {
    let port = port.to_owned();
    inside(switch, move || {
        let capture = PacketSocket::bind(&port);
        let mut buf = [0u8; 2048];
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            let Some(len) = capture.recv(&mut buf) else {
                continue;
            };
            let frame = &buf[..len];
            let relay = len > 42
                && frame[12..14] == [0x08, 0x00]
                && frame[23] == 17
                && frame[26..30] == src
                && frame[30..34] == dst
                && frame[36..38] == 9555u16.to_be_bytes();
            if relay {
                return frame.to_vec();
            }
        }
        panic!("no relay frame from {src:?} to {dst:?} on {port} within 5 s");
    })
}

/// Sends `frame` out of switch port `port` (to the host behind it).
fn inject(switch: &str, port: &str, frame: Vec<u8>) {
    let port = port.to_owned();
    inside(switch, move || PacketSocket::bind(&port).send(&frame));
}

#[test]
fn policy_reload_wrong_keys_and_replays_between_three_hosts() {
    const TAG: &str = "three";
    let lan = Lan::new(3, 1).expect("three hosts in namespaces (needs root)");
    let dir = support::dir();
    let first = dir.join("three-config-v1.txt");
    std::fs::write(&first, "level = 1\n").unwrap();
    let path_b = write("three-b", &server(TAG, &lan, &first, "c", false, ""));
    let path_a = write("three-a", &client(TAG, &lan, "a", 1, KEY_AB, ""));
    let path_c = write("three-c", &client(TAG, &lan, "c", 3, KEY_BC, ""));
    let b = Daemon::start_in(lan.hosts[1].ns.name(), &path_b);
    let a = Daemon::start_in(lan.hosts[0].ns.name(), &path_a);
    let c = Daemon::start_in(lan.hosts[2].ns.name(), &path_c);
    for (daemon, name) in [(&a, "a"), (&b, "b"), (&c, "c")] {
        daemon.expect(&format!("node \"{name}\" running on xdp"));
    }
    a.expect("peer b: Up");
    c.expect("peer b: Up");
    b.expect("peer a: Up");
    b.expect("peer c: Up");
    let (sa, sb, sc) = (socket(TAG, "a"), socket(TAG, "b"), socket(TAG, "c"));
    // A frame of A's to B, captured on the switch now and sent again at
    // the end, after B's reload: the replay window outlives reloads.
    let (a_ip, b_ip) = ([198, 18, 0, 1], [198, 18, 0, 2]);
    let captured = capture_one(lan.switch.name(), &lan.ports[0], a_ip, b_ip);

    // A subscribes and gets every version.
    let mut watch = Command::new(env!("CARGO_BIN_EXE_xrelay"))
        .args(["rom", "watch", "config", "--json", "--socket"])
        .arg(&sa)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut versions = BufReader::new(watch.stdout.take().unwrap()).lines();
    let mut next = move || -> serde_json::Value {
        serde_json::from_str(&versions.next().unwrap().unwrap()).unwrap()
    };
    assert_eq!(
        next()["blake3"],
        blake3::hash(b"level = 1\n").to_hex().as_str()
    );
    let second = dir.join("three-config-v2.txt");
    std::fs::write(&second, "level = 2\n").unwrap();
    cli(
        &sb,
        &["rom", "publish", "config", &second.display().to_string()],
    );
    assert_eq!(
        next()["blake3"],
        blake3::hash(b"level = 2\n").to_hex().as_str()
    );
    cli(&sa, &["rpc", "call", "kv", "put", "owner", "a"]);
    assert_eq!(cli(&sa, &["rpc", "call", "kv", "get", "owner"]), "a\n");

    // C is not allowed: both attempts are refused and counted at B.
    let refused = cli_fails(&sc, &["rom", "get", "config", "--timeout", "3"]);
    assert!(refused.contains("Denied"), "{refused}");
    let refused = cli_fails(&sc, &["rpc", "call", "kv", "get", "owner"]);
    assert!(refused.contains("Denied"), "{refused}");
    let at_b = stats(&sb);
    assert_eq!(counter(&at_b, "c", "policy_denied"), 2, "{at_b}");
    assert_eq!(counter(&at_b, "a", "policy_denied"), 0, "{at_b}");
    assert_eq!(at_b["drops"]["policy_denied"], 2, "{at_b}");

    // A 16 MiB version on its way to A while B's reload grants C.
    let mut rng = fastrand::Rng::with_seed(7);
    let big: Vec<u8> = (0..16 << 20).map(|_| rng.u8(..)).collect();
    let big_file = dir.join("three-config-big.bin");
    std::fs::write(&big_file, &big).unwrap();
    let published = Instant::now();
    cli(
        &sb,
        &["rom", "publish", "config", &big_file.display().to_string()],
    );
    std::fs::write(&path_b, server(TAG, &lan, &first, "c", true, "")).unwrap();
    let notes = cli(&sb, &["reload"]);
    let reloaded = published.elapsed();
    assert!(notes.contains("keys, policy and routes applied"), "{notes}");
    let arrived = next();
    eprintln!(
        "16 MiB: reload applied {reloaded:?} after the publish, version at A after {:?}",
        published.elapsed()
    );
    assert_eq!(arrived["bytes"], big.len());
    assert_eq!(arrived["blake3"], blake3::hash(&big).to_hex().as_str());
    let at_b = stats(&sb);
    assert_eq!(at_b["sessions"]["revoked"], 0, "{at_b}");
    // C now subscribes and receives the current version.
    let output = Command::new(env!("CARGO_BIN_EXE_xrelay"))
        .args(["rom", "get", "config", "--socket"])
        .arg(&sc)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.stdout == big, "C's copy differs");
    assert_eq!(cli(&sc, &["rpc", "call", "kv", "get", "owner"]), "a\n");

    // C with a wrong key: its frames fail authentication at B, counted;
    // A is not disturbed.
    let before = counter(&stats(&sb), "c", "auth_failed");
    std::fs::write(&path_c, client(TAG, &lan, "c", 3, WRONG, "")).unwrap();
    cli(&sc, &["reload"]);
    eventually("B counts C's frames as auth_failed", || {
        counter(&stats(&sb), "c", "auth_failed") > before + 3
    });
    c.expect("peer b: Down");
    assert_eq!(cli(&sa, &["rpc", "call", "kv", "get", "owner"]), "a\n");

    // Replays: the frame captured before B's reload, and a fresh one.
    let before = counter(&stats(&sb), "a", "replayed");
    inject(lan.switch.name(), &lan.ports[1], captured);
    let fresh = capture_one(lan.switch.name(), &lan.ports[0], a_ip, b_ip);
    inject(lan.switch.name(), &lan.ports[1], fresh);
    eventually("B counts the replayed frame", || {
        counter(&stats(&sb), "a", "replayed") >= before + 2
    });
    assert_eq!(cli(&sa, &["rpc", "call", "kv", "get", "owner"]), "a\n");
    let at_b = stats(&sb);
    assert_eq!(peer(&at_b, "a")["state"], "up");
    assert_eq!(counter(&at_b, "a", "auth_failed"), 0, "{at_b}");

    let _ = watch.kill();
    let _ = watch.wait();
    a.stop();
    b.stop();
    c.stop();
}

#[test]
fn one_node_on_two_queues_serves_peers_owned_by_either() {
    two_queues("queues", "");
}

#[test]
fn two_queues_in_raw_ethernet_mode_find_peers_by_mac() {
    two_queues("ethq", "encapsulation = \"ethernet\"");
}

/// B on two queues with peers owned by either, `extra` in every `[node]`.
fn two_queues(tag: &'static str, extra: &str) {
    let lan = Lan::new(3, 2).expect("three hosts in namespaces (needs root)");
    let dir = support::dir().join(tag);
    std::fs::create_dir_all(&dir).unwrap();
    let first = dir.join("queues-config.txt");
    std::fs::write(&first, "queues = 2\n").unwrap();
    // B serves queues 0 and 1, one pinned thread each. Of its peers, "a"
    // belongs to queue 1 and "g" to queue 0 (`daemon::owner`).
    let queues =
        format!("queues = [{{ queue = 0, core = 0 }}, {{ queue = 1, core = 1 }}]\n{extra}");
    let queues = queues.as_str();
    let path_b = write(
        &format!("{tag}-b"),
        &server(tag, &lan, &first, "g", true, queues),
    );
    // Every host's interface has two queues, so every daemon serves both.
    let path_a = write(
        &format!("{tag}-a"),
        &client(tag, &lan, "a", 1, KEY_AB, queues),
    );
    let path_g = write(
        &format!("{tag}-g"),
        &client(tag, &lan, "g", 3, KEY_BC, queues),
    );
    let b = Daemon::start_in(lan.hosts[1].ns.name(), &path_b);
    let a = Daemon::start_in(lan.hosts[0].ns.name(), &path_a);
    let g = Daemon::start_in(lan.hosts[2].ns.name(), &path_g);
    b.expect("node \"b\" running on xdp at 198.18.0.2 (2 queues");
    b.expect("AF_XDP queue 1:");
    // "running" comes once the control socket is there.
    a.expect("node \"a\" running on xdp");
    g.expect("node \"g\" running on xdp");
    a.expect("peer b: Up");
    g.expect("peer b: Up");
    let (sa, sb, sg) = (socket(tag, "a"), socket(tag, "b"), socket(tag, "g"));

    // One store behind both queues; one module published on both.
    cli(&sa, &["rpc", "call", "kv", "put", "seen-by", "a"]);
    assert_eq!(cli(&sg, &["rpc", "call", "kv", "get", "seen-by"]), "a\n");
    assert_eq!(cli(&sa, &["rom", "get", "config"]), "queues = 2\n");
    let second = dir.join("queues-config-2.txt");
    std::fs::write(&second, "queues = 2, version 2\n").unwrap();
    cli(
        &sb,
        &["rom", "publish", "config", &second.display().to_string()],
    );
    for socket in [&sa, &sg] {
        eventually("the new version on both peers", || {
            cli(socket, &["rom", "get", "config"]) == "queues = 2, version 2\n"
        });
    }

    // Each peer is reported once, by the queue that owns it; frames that
    // arrived on the other queue were handed over, not lost.
    let at_b = stats(&sb);
    let queues = at_b["queues"].as_array().unwrap();
    assert_eq!(queues.len(), 2, "{at_b}");
    assert_eq!(peer(&at_b, "a")["queue"], 1, "{at_b}");
    assert_eq!(peer(&at_b, "g")["queue"], 0, "{at_b}");
    assert_eq!(at_b["peers"].as_array().unwrap().len(), 2);
    for q in queues {
        assert_eq!(q["handoff_dropped"], 0, "{at_b}");
    }
    let sent: u64 = queues
        .iter()
        .map(|q| q["handoff_sent"].as_u64().unwrap())
        .sum();
    let received: u64 = queues
        .iter()
        .map(|q| q["handoff_received"].as_u64().unwrap())
        .sum();
    assert_eq!(sent, received, "{at_b}");
    assert_eq!(at_b["drops"]["unknown_peer"], 0, "{at_b}");

    a.stop();
    g.stop();
    b.stop();
}
