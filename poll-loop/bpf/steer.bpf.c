// SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause
/* plex's XDP program: steer into the AF_XDP socket only what the stack owns, namely IPv4
 * whose destination is in the home map and ARP whose target address is in it (and is not
 * internal); pass everything else to the kernel. */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
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
		if (bpf_map_lookup_elem(&home, &dst))
			return redirect(ctx, PLEX_STAT_IP_REDIRECTED);
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
