//! Two nodes on the in-memory network, virtual time, seeded faults: the
//! signal and liveness engines over real frames (Frame emit/parse inside
//! Ethernet + IPv4 + UDP, as the `mem` transport carries them).

use std::time::Duration;

use xrelay_datapath::engine::peer::{LivenessConfig, PeerEvent, PeerLiveness};
use xrelay_datapath::engine::signal::{SignalReceiver, SignalSender};
use xrelay_datapath::time::Instant;
use xrelay_datapath::transport::mem::{host_endpoint, Faults, MemNetwork, MemTransport};
use xrelay_datapath::transport::Transport;
use xrelay_datapath::wire::{Flags, Frame, Message};

/// One simulated node: a transport, liveness of its one peer, and either
/// end of one signal context.
struct Node {
    transport: MemTransport,
    peer: PeerLiveness,
    peer_host: u8,
    sequence: u64,
    sender: SignalSender,
    receiver: SignalReceiver,
    events: Vec<PeerEvent>,
}

impl Node {
    fn new(network: &MemNetwork, host: u8, peer_host: u8, incarnation: u64) -> Self {
        Node {
            transport: network.attach(host),
            peer: PeerLiveness::new(LivenessConfig::default(), incarnation, Instant::ZERO),
            peer_host,
            sequence: 1,
            sender: SignalSender::new(1, Duration::from_millis(2)),
            receiver: SignalReceiver::new(1),
            events: Vec::new(),
        }
    }

    fn send(&mut self, message: Message<'_>) {
        let frame = Frame {
            flags: Flags::NONE,
            channel: 1,
            sequence: self.sequence,
            message,
        };
        self.sequence += 1;
        let to = host_endpoint(self.peer_host);
        let sent = self
            .transport
            .send(&mut |buf| {
                let len = frame.buffer_len();
                frame.emit(&mut buf[..len]);
                Some((to, len))
            })
            .unwrap();
        assert!(sent, "the transport has room for a step's frames");
    }

    fn step(&mut self, now: Instant) {
        let (peer, sender, receiver) = (&mut self.peer, &mut self.sender, &mut self.receiver);
        self.transport
            .recv(now, 64, &mut |_, bytes| {
                let Ok((frame, _)) = Frame::parse(bytes) else {
                    return;
                };
                peer.handle_frame(now);
                match frame.message {
                    Message::Heartbeat(heartbeat) => {
                        let _rtt = peer.handle_heartbeat(now, &heartbeat);
                    }
                    Message::Signal(signal) => receiver.handle_signal(&signal),
                    Message::SignalAck(ack) => sender.handle_ack(&ack),
                    _ => {}
                }
            })
            .unwrap();
        while let Some(event) = self.peer.poll_event(now) {
            self.events.push(event);
        }
        if let Some(heartbeat) = self.peer.poll_transmit(now) {
            self.send(Message::Heartbeat(heartbeat));
        }
        if let Some(signal) = self.sender.poll_transmit(now) {
            self.send(Message::Signal(signal));
        }
        if let Some(ack) = self.receiver.poll_transmit(now) {
            self.send(Message::SignalAck(ack));
        }
        self.transport.flush(now).unwrap();
    }
}

#[test]
fn signal_counts_survive_loss_duplication_and_reordering() {
    for seed in [1, 2, 3] {
        let network = MemNetwork::new(seed, Faults::lossy(0.2), 1500);
        let mut a = Node::new(&network, 1, 2, 11);
        let mut b = Node::new(&network, 2, 1, 22);
        let mut rng = fastrand::Rng::with_seed(seed);
        let (mut delivered, mut wake_ups) = (0u64, 0u64);
        let mut now = Instant::ZERO;
        let step = Duration::from_micros(50);
        for i in 0..20_000u32 {
            if i < 10_000 && rng.f64() < 0.3 {
                a.sender.submit(rng.u64(1..4));
            }
            a.step(now);
            b.step(now);
            if let Some(count) = b.receiver.take() {
                delivered += count;
                wake_ups += 1;
            }
            now += step;
        }
        let submitted = a.sender.submitted();
        assert!(submitted > 5000, "the test submitted something");
        assert_eq!(
            delivered, submitted,
            "seed {seed}: every submission delivered exactly once"
        );
        assert!(a.sender.is_acknowledged(), "seed {seed}: the sender knows");
        assert!(
            wake_ups < 3001,
            "seed {seed}: bursts coalesce into fewer wake-ups ({wake_ups})"
        );
        let stats = network.stats();
        assert!(
            stats.lost > 0 && stats.duplicated > 0 && stats.reordered > 0,
            "{stats:?}"
        );
        assert_eq!(
            a.events,
            vec![PeerEvent::Up { incarnation: 22 }],
            "no false down under loss"
        );
    }
}

#[test]
fn a_silent_peer_is_declared_down_within_the_dead_time() {
    let network = MemNetwork::new(5, Faults::default(), 1500);
    let mut a = Node::new(&network, 1, 2, 11);
    let mut b = Node::new(&network, 2, 1, 22);
    let step = Duration::from_millis(1);
    let mut now = Instant::ZERO;
    for _ in 0..100 {
        a.step(now);
        b.step(now);
        now += step;
    }
    assert_eq!(a.events, vec![PeerEvent::Up { incarnation: 22 }]);
    network.set_host_up(2, false);
    let cut = now;
    while a.events.len() < 2 {
        a.step(now);
        b.step(now);
        now += step;
        assert!(
            now - cut < Duration::from_secs(2),
            "peer-down never reported"
        );
    }
    assert_eq!(a.events[1], PeerEvent::Down);
    let dead_after = LivenessConfig::default().dead_after;
    assert!(
        now - cut <= dead_after + Duration::from_millis(2),
        "down after {:?}",
        now - cut
    );

    // b restarts with a new incarnation: a sees it come back as restarted.
    network.set_host_up(2, true);
    let mut b = Node::new(&network, 2, 1, 23);
    for _ in 0..10 {
        a.step(now);
        b.step(now);
        now += step;
    }
    assert_eq!(a.events[2], PeerEvent::Restarted { incarnation: 23 });
}
