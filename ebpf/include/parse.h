/* SPDX-License-Identifier: (GPL-2.0 OR BSD-2-Clause) */
/* Bounds-checked header parsing for XDP. Every accessor checks against
 * data_end before it reads, so the verifier and a hostile frame agree. */
#ifndef MESH_PARSE_H
#define MESH_PARSE_H

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <bpf/bpf_helpers.h>

/* A cursor over a frame: the next header starts at pos. */
struct cursor {
	void *pos;
	void *end;
};

static __always_inline struct ethhdr *parse_eth(struct cursor *c)
{
	struct ethhdr *eth = c->pos;
	if ((void *)(eth + 1) > c->end)
		return NULL;
	c->pos = eth + 1;
	return eth;
}

/* Returns the IPv4 header, or NULL when the frame is shorter than the
 * header or its IHL claims less than the minimum 20 bytes. */
static __always_inline struct iphdr *parse_ipv4(struct cursor *c)
{
	struct iphdr *ip = c->pos;
	if ((void *)(ip + 1) > c->end)
		return NULL;
	if (ip->ihl < 5)
		return NULL;
	__u32 hdr_len = ip->ihl * 4;
	if (c->pos + hdr_len > c->end)
		return NULL;
	c->pos += hdr_len;
	return ip;
}

#endif
