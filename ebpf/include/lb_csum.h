/* SPDX-License-Identifier: (GPL-2.0 OR BSD-2-Clause) */
/* Incremental Internet checksum updates (RFC 1624) over fields already in
 * network order, for headers the program rewrites in place: IPv4 and ICMP
 * always, TCP/UDP at XDP. At TC, TCP/UDP go through bpf_l4_csum_replace,
 * which knows CHECKSUM_PARTIAL skbs (a veth's local traffic). */
#ifndef MESH_LB_CSUM_H
#define MESH_LB_CSUM_H

#include <linux/types.h>
#include <linux/ip.h>

static __always_inline __u16 lb_csum_fold(__u32 c)
{
	c = (c & 0xffff) + (c >> 16);
	c = (c & 0xffff) + (c >> 16);
	return (__u16)c;
}

/* HC' = ~(~HC + ~m + m') for a 32-bit field m. */
static __always_inline void lb_csum_update4(__u16 *sum, __u32 from, __u32 to)
{
	__u32 c = (__u16)~*sum;
	c += (__u16)~(from & 0xffff);
	c += (__u16)~(from >> 16);
	c += to & 0xffff;
	c += to >> 16;
	*sum = ~lb_csum_fold(c);
}

static __always_inline void lb_csum_update2(__u16 *sum, __u16 from, __u16 to)
{
	__u32 c = (__u16)~*sum;
	c += (__u16)~from;
	c += to;
	*sum = ~lb_csum_fold(c);
}

/* The checksum of a 20-byte IPv4 header (no options) whose check is 0. */
static __always_inline __u16 lb_ipv4_csum(struct iphdr *ip)
{
	__u16 *words = (__u16 *)ip;
	__u32 c = 0;
#pragma unroll
	for (int i = 0; i < 10; i++)
		c += words[i];
	return ~lb_csum_fold(c);
}

#endif
