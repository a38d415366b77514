/* SPDX-License-Identifier: (GPL-2.0 OR BSD-2-Clause) */
/* xdp_stats: counts every frame on an interface by traffic class and passes
 * it on unchanged. It proves the toolchain end to end (clang -> aya -> a
 * veth in a namespace) and is the interface meter that diagnostics read.
 * Loaded with drop_ipv4_udp set, it drops the IPv4 UDP it counted: the
 * XDP_DROP limit the benchmarks measure packet rates against. */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "stats_consts.h"
#include "stats_maps.h"
#include "parse.h"

static __always_inline void count(__u32 class, __u64 bytes)
{
	struct traffic_counter *ctr = bpf_map_lookup_elem(&TRAFFIC_STATS, &class);
	if (!ctr)
		return;
	/* Per-CPU slot: no other CPU writes it, a plain add is exact. */
	ctr->packets += 1;
	ctr->bytes += bytes;
}

static __always_inline __u32 classify(struct cursor *c)
{
	struct ethhdr *eth = parse_eth(c);
	if (!eth)
		return STATS_MALFORMED;
	switch (eth->h_proto) {
	case BE_ETH_P_IP: {
		struct iphdr *ip = parse_ipv4(c);
		if (!ip)
			return STATS_MALFORMED;
		if (ip->protocol == IPPROTO_TCP)
			return STATS_IPV4_TCP;
		if (ip->protocol == IPPROTO_UDP)
			return STATS_IPV4_UDP;
		return STATS_IPV4;
	}
	case BE_ETH_P_IPV6:
		return STATS_IPV6;
	case BE_ETH_P_ARP:
		return STATS_ARP;
	default:
		return STATS_OTHER;
	}
}

/* Set by the loader before the program is verified; constant afterwards, so
 * the verifier prunes the branch it does not take. */
volatile const __u8 drop_ipv4_udp = 0;

SEC("xdp")
int xdp_stats(struct xdp_md *ctx)
{
	struct cursor c = {
		.pos = (void *)(long)ctx->data,
		.end = (void *)(long)ctx->data_end,
	};
	__u64 bytes = c.end - c.pos;
	__u32 class = classify(&c);

	count(STATS_ALL, bytes);
	/* TCP and UDP over IPv4 are also IPv4: count both levels. */
	if (class == STATS_IPV4_TCP || class == STATS_IPV4_UDP)
		count(STATS_IPV4, bytes);
	count(class, bytes);
	if (drop_ipv4_udp && class == STATS_IPV4_UDP)
		return XDP_DROP;
	return XDP_PASS;
}

char _license[] SEC("license") = "Dual BSD/GPL";
