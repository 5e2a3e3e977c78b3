// SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause
/* plex's XDP program: steer into the AF_XDP socket only what the stack owns, namely IPv4
 * whose destination is in the home map and ARP whose target address is in it (and is not
 * internal); pass everything else to the kernel. For an address this stack distributes, TCP
 * segments of flows in the flows map go straight back out to their target stack (XDP_TX,
 * MACs rewritten, nothing else touched): the distributor's fast path. */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/tcp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "steer.h"

struct {
	__uint(type, BPF_MAP_TYPE_XSKMAP);
	__uint(max_entries, PLEX_MAX_QUEUES);
	__type(key, __u32);
	__type(value, __u32);
} xsks SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, PLEX_MAX_HOMES);
	__type(key, __u32);
	__type(value, struct plex_home);
} home SEC(".maps");

/* LRU: the flows of SYNs the program steered whose connection never came (refused, abandoned)
 * are never removed by the poll thread, which learns of a connection only from its target. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, PLEX_MAX_FLOWS);
	__type(key, struct plex_flow_key);
	__type(value, struct plex_flow);
} flows SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, PLEX_MAX_SYN_TABLES);
	__type(key, struct plex_syn_key);
	__type(value, struct plex_syn_table);
} syns SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, PLEX_STAT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} stats SEC(".maps");

struct arp_eth_ipv4 {
	__be16 htype;
	__be16 ptype;
	__u8 hlen;
	__u8 plen;
	__be16 op;
	__u8 sha[6];
	__u8 spa[4];
	__u8 tha[6];
	__u8 tpa[4];
} __attribute__((packed));

static __always_inline void count(__u32 idx)
{
	__u64 *v = bpf_map_lookup_elem(&stats, &idx);
	if (v)
		*v += 1;
}

/* A pure SYN of an unknown flow to a steered address and port: to the next target in turn,
 * its flow installed (the segments that follow take the flow), or -1 (the poll thread
 * decides: no table, or the flow appeared meanwhile). */
static __always_inline int steer_syn(struct ethhdr *eth, struct plex_flow_key *k)
{
	struct plex_syn_key sk = { .daddr = k->daddr, .dport = k->dport, .pad = 0 };
	struct plex_syn_table *t = bpf_map_lookup_elem(&syns, &sk);
	if (!t)
		return -1;
	__u32 n = t->n;
	if (n == 0 || n > PLEX_SYN_SLOTS)
		return -1;
	__u32 i = __sync_fetch_and_add(&t->cursor, 1) % n;
	/* The compiler knows i < n <= PLEX_SYN_SLOTS; the verifier must be shown. */
	asm volatile("" : "+r"(i));
	i &= PLEX_SYN_SLOTS - 1;
	struct plex_flow f = {};
	__builtin_memcpy(f.dmac, t->dmac[i], 6);
	__builtin_memcpy(f.smac, t->smac, 6);
	__builtin_memcpy(f.cmac, eth->h_source, 6);
	if (bpf_map_update_elem(&flows, k, &f, BPF_NOEXIST) != 0)
		return -1;
	__builtin_memcpy(eth->h_dest, f.dmac, 6);
	__builtin_memcpy(eth->h_source, f.smac, 6);
	count(PLEX_STAT_SYN_STEERED);
	return XDP_TX;
}

/* A TCP segment of a known flow of a distributed address: to its target, or -1. */
static __always_inline int forward(struct ethhdr *eth, struct iphdr *ip, void *end)
{
	if (ip->protocol != IPPROTO_TCP || ip->ihl < 5 || (ip->frag_off & bpf_htons(0x3fff)))
		return -1;
	struct tcphdr *tcp = (void *)ip + ip->ihl * 4;
	if ((void *)(tcp + 1) > end)
		return -1;
	struct plex_flow_key k = {
		.saddr = ip->saddr,
		.daddr = ip->daddr,
		.sport = tcp->source,
		.dport = tcp->dest,
	};
	struct plex_flow *f = bpf_map_lookup_elem(&flows, &k);
	if (!f)
		return (tcp->syn && !tcp->ack && !tcp->rst && !tcp->fin) ? steer_syn(eth, &k) : -1;
	if (tcp->ack) {
		__builtin_memcpy(f->cmac, eth->h_source, 6);
		f->ack = tcp->ack_seq;
		f->acked = 1;
	}
	__builtin_memcpy(eth->h_dest, f->dmac, 6);
	__builtin_memcpy(eth->h_source, f->smac, 6);
	count(PLEX_STAT_FORWARDED);
	return XDP_TX;
}

static __always_inline int redirect(struct xdp_md *ctx, __u32 stat)
{
	int r = bpf_redirect_map(&xsks, ctx->rx_queue_index, XDP_PASS);
	count(r == XDP_REDIRECT ? stat : PLEX_STAT_REDIRECT_FAILED);
	return r;
}

SEC("xdp")
int plex_steer(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;

	if ((void *)(eth + 1) > end)
		goto pass;
	if (eth->h_proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = (void *)(eth + 1);
		if ((void *)(ip + 1) > end)
			goto pass;
		__u32 dst = ip->daddr;
		struct plex_home *h = bpf_map_lookup_elem(&home, &dst);
		if (h) {
			if (h->flags & PLEX_HOME_DISTRIBUTED) {
				int r = forward(eth, ip, end);
				if (r >= 0)
					return r;
			}
			return redirect(ctx, PLEX_STAT_IP_REDIRECTED);
		}
	} else if (eth->h_proto == bpf_htons(ETH_P_ARP)) {
		struct arp_eth_ipv4 *arp = (void *)(eth + 1);
		if ((void *)(arp + 1) > end)
			goto pass;
		__u32 tpa;
		__builtin_memcpy(&tpa, arp->tpa, 4);
		struct plex_home *h = bpf_map_lookup_elem(&home, &tpa);
		if (h && !(h->flags & PLEX_HOME_INTERNAL))
			return redirect(ctx, PLEX_STAT_ARP_REDIRECTED);
		/* ARP from a peer announcing one of our addresses' neighbours is the kernel's. */
	}
pass:
	count(PLEX_STAT_PASSED);
	return XDP_PASS;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
