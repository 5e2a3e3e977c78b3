/* plex steering program: the map layouts shared by the XDP program (steer.bpf.c) and the
 * Rust side (poll-loop/src/xdp.rs mirrors these; a test checks the sizes). One source of
 * truth: change them here and there together. */
#ifndef PLEX_STEER_H
#define PLEX_STEER_H

/* Sizes of the maps. */
#define PLEX_MAX_QUEUES 64
#define PLEX_MAX_HOMES 1024
#define PLEX_MAX_FLOWS 65536
#define PLEX_MAX_SYN_TABLES 256
#define PLEX_SYN_SLOTS 64 /* a power of two (the program masks the slot index) */

/* home map: key = IPv4 address in network byte order (__u32), value = struct plex_home. */
struct plex_home {
	__u32 flags; /* PLEX_HOME_* */
};

/* The address is internal: accepted, but ARP for it is left to the kernel/others. */
#define PLEX_HOME_INTERNAL 1u
/* The address is distributed by this stack (it routes it): TCP segments of flows in the flows
 * map are sent on to their target stack from here (XDP_TX), without reaching the poll thread. */
#define PLEX_HOME_DISTRIBUTED 2u

/* flows map (the distributor's connection routing table, mirrored): key = the segment's
 * addresses and ports as they are on the wire (network byte order), value = the MACs to put
 * on the frame before it goes back out. */
struct plex_flow_key {
	__u32 saddr;
	__u32 daddr;
	__u16 sport;
	__u16 dport;
};

struct plex_flow {
	__u8 dmac[6]; /* the target stack's MAC */
	__u8 smac[6]; /* ours */
	__u8 cmac[6]; /* the client's (or its router's) MAC, from its last segment */
	__u8 pad[2];
	__u32 ack;    /* the client's last acknowledgment number, as on the wire */
	__u32 acked;  /* 1 once `ack` is set: the router can reset the client if the target dies */
};

/* syn map (the router's SYN steering): key = a distributed address and port as on the wire,
 * value = the targets new connections go to, in turn. A pure SYN of an unknown flow to that
 * address and port goes to the next one (its flow installed in the flows map by the program)
 * without reaching the poll thread; the router learns the connection from its target's
 * NEWCONN. No entry (or n = 0): the poll thread decides. */
struct plex_syn_key {
	__u32 daddr;
	__u16 dport;
	__u16 pad;
};

struct plex_syn_table {
	__u32 n;      /* slots in use, at most PLEX_SYN_SLOTS */
	__u32 cursor; /* the next slot (advanced atomically) */
	__u8 smac[6]; /* ours */
	__u8 pad[2];
	__u8 dmac[PLEX_SYN_SLOTS][6]; /* each slot's target MAC */
};

/* stats map: per-CPU array of __u64 counters indexed by these. */
enum plex_stat {
	PLEX_STAT_IP_REDIRECTED = 0,
	PLEX_STAT_ARP_REDIRECTED = 1,
	PLEX_STAT_PASSED = 2,
	PLEX_STAT_REDIRECT_FAILED = 3,
	PLEX_STAT_FORWARDED = 4,
	PLEX_STAT_SYN_STEERED = 5,
	PLEX_STAT_MAX = 6,
};

#endif
