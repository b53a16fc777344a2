// SPDX-License-Identifier: MIT OR Apache-2.0
//
// xrelay's XDP program: redirects relay frames to the AF_XDP socket of the
// receive queue they arrived on and passes everything else to the kernel
// (ARP, ICMP, SSH, other UDP ports keep working).
//
// A relay frame is, depending on the configured encapsulation:
//   * Ethernet + IPv4 (no options) + UDP to `relay_port`, or
//   * Ethernet with EtherType `relay_ethertype` (raw Ethernet mode).
// Both are configured by the loader through the read-only globals below
// before the program is loaded; 0 disables that encapsulation.
//
// Per-CPU counters (map `stats`): index 0 counts frames redirected to a
// socket, index 1 frames passed to the kernel, index 2 relay frames for a
// queue without a socket (passed too).
//
// Built by datapath/build.rs with `clang -O2 -target bpf`.

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/udp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

// Host byte order; the program compares in network order.
volatile const __u16 relay_port = 9555;
volatile const __u16 relay_ethertype = 0;

enum stat {
    STAT_REDIRECTED = 0,
    STAT_PASSED = 1,
    STAT_NO_SOCKET = 2,
    STAT_COUNT = 3,
};

struct {
    __uint(type, BPF_MAP_TYPE_XSKMAP);
    __uint(max_entries, 64);
    __type(key, __u32);
    __type(value, __u32);
} xsks SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
    __uint(max_entries, STAT_COUNT);
    __type(key, __u32);
    __type(value, __u64);
} stats SEC(".maps");

static __always_inline void count(__u32 which)
{
    __u64 *counter = bpf_map_lookup_elem(&stats, &which);
    if (counter)
        *counter += 1;
}

static __always_inline int pass(void)
{
    count(STAT_PASSED);
    return XDP_PASS;
}

static __always_inline int redirect(struct xdp_md *ctx)
{
    __u32 queue = ctx->rx_queue_index;
    if (!bpf_map_lookup_elem(&xsks, &queue)) {
        count(STAT_NO_SOCKET);
        return XDP_PASS;
    }
    count(STAT_REDIRECTED);
    return bpf_redirect_map(&xsks, queue, XDP_PASS);
}

SEC("xdp")
int xrelay(struct xdp_md *ctx)
{
    void *data = (void *)(long)ctx->data;
    void *data_end = (void *)(long)ctx->data_end;

    struct ethhdr *eth = data;
    if ((void *)(eth + 1) > data_end)
        return pass();

    if (relay_ethertype != 0 && eth->h_proto == bpf_htons(relay_ethertype))
        return redirect(ctx);
    if (relay_port == 0 || eth->h_proto != bpf_htons(ETH_P_IP))
        return pass();

    // IPv4 without options only: the relay never sends options, and a
    // fixed offset keeps the verifier simple.
    struct iphdr *ip = (void *)(eth + 1);
    if ((void *)(ip + 1) > data_end)
        return pass();
    if (ip->ihl != 5 || ip->protocol != IPPROTO_UDP)
        return pass();
    // Fragments (other than a whole datagram) are the kernel's business.
    if (ip->frag_off & bpf_htons(0x3fff))
        return pass();

    struct udphdr *udp = (void *)(ip + 1);
    if ((void *)(udp + 1) > data_end)
        return pass();
    if (udp->dest != bpf_htons(relay_port))
        return pass();
    return redirect(ctx);
}

char LICENSE[] SEC("license") = "Dual MIT/GPL";
