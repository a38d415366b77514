/* SPDX-License-Identifier: (GPL-2.0 OR BSD-2-Clause) */
/* Bounds-checked parsing of Ethernet, IPv4 (options allowed: the IHL gives
 * the header length) and the TCP/UDP ports, by offset from the frame's start
 * so that callers can re-derive pointers after a helper moved the data. */
#ifndef MESH_LB_PARSE_H
#define MESH_LB_PARSE_H

#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include "lb_consts.h"
#include "lb_ctx.h"
#include "lb_maps.h"

/* What the program knows about a packet after parsing. */
struct lb_pkt {
	__u32 l3_off;   /* offset of the IPv4 header */
	__u32 l4_off;   /* offset of the transport header (after options) */
	__be32 saddr;
	__be32 daddr;
	__be16 sport;   /* TCP/UDP only */
	__be16 dport;
	__be16 frag_off;
	__u16 tot_len;  /* host order */
	__u8 proto;
	__u8 opens;     /* a TCP SYN without ACK: a new connection */
	__u8 gso;       /* TC: an aggregate (GRO) skb, whose lengths the kernel built */
	__u8 pad;
};

/* The frame's length from its start: the whole packet at XDP; at TC the skb's,
 * which may reach past the linear area. */
static __always_inline __u32 lb_frame_len(void *ctx, const bool xdp)
{
	if (xdp)
		return lb_data_end(ctx, xdp) - lb_data(ctx, xdp);
	return ((struct __sk_buff *)ctx)->len;
}

static __always_inline bool lb_is_gso(void *ctx, const bool xdp)
{
	return !xdp && ((struct __sk_buff *)ctx)->gso_segs > 1;
}

/* The IPv4 header at `off`: LB_CONTINUE with `p` filled, or a drop verdict
 * (truncated, IHL below 5, not version 4, a total length shorter than the
 * header or longer than the frame: what the kernel's ip_rcv drops too, so that
 * nothing it would refuse is balanced or leaves state behind). A total length
 * shorter than the frame is fine: Ethernet pads short frames. Aggregates
 * (GRO, BIG TCP's zero length) carry lengths the kernel set itself. */
static __always_inline int lb_parse_ipv4(void *ctx, const bool xdp, __u32 off,
					 struct lb_pkt *p)
{
	void *data = lb_data(ctx, xdp);
	void *end = lb_data_end(ctx, xdp);
	off &= 0xff;
	struct iphdr *ip = data + off;
	if ((void *)(ip + 1) > end)
		return LB_DROP(xdp, LB_DROP_TRUNCATED_IP);
	if (ip->ihl < 5)
		return LB_DROP(xdp, LB_DROP_BAD_IHL);
	__u32 hl = ip->ihl * 4;
	if ((void *)ip + hl > end)
		return LB_DROP(xdp, LB_DROP_TRUNCATED_IP);
	__u32 tot_len = bpf_ntohs(ip->tot_len);
	p->gso = lb_is_gso(ctx, xdp);
	if (!p->gso &&
	    (ip->version != 4 || tot_len < hl || off + tot_len > lb_frame_len(ctx, xdp)))
		return LB_DROP(xdp, LB_DROP_BAD_IP);
	p->l3_off = off;
	p->l4_off = off + hl;
	p->saddr = ip->saddr;
	p->daddr = ip->daddr;
	p->frag_off = ip->frag_off;
	p->tot_len = tot_len;
	p->proto = ip->protocol;
	p->sport = 0;
	p->dport = 0;
	return LB_CONTINUE;
}

/* Ethernet then IPv4: LB_CONTINUE, the pass verdict for anything but IPv4,
 * or a drop verdict. */
static __always_inline int lb_parse_frame(void *ctx, const bool xdp, struct lb_pkt *p)
{
	void *data = lb_data(ctx, xdp);
	void *end = lb_data_end(ctx, xdp);
	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > end)
		return LB_DROP(xdp, LB_DROP_TRUNCATED_ETH);
	if (eth->h_proto != LB_BE_ETH_P_IP)
		return LB_PASS(xdp);
	return lb_parse_ipv4(ctx, xdp, sizeof(*eth), p);
}

/* Whether the packet is a fragment (more to come, or not the first). */
static __always_inline bool lb_is_fragment(const struct lb_pkt *p)
{
	return p->frag_off & (LB_BE_IP_MF | LB_BE_IP_OFFSET);
}

/* Whether the packet is a later fragment (no transport header in it). */
static __always_inline bool lb_is_later_fragment(const struct lb_pkt *p)
{
	return p->frag_off & LB_BE_IP_OFFSET;
}

/* The TCP or UDP ports: LB_CONTINUE, or a drop verdict when the transport
 * header is cut short (by the frame or the IP total length), or its own length
 * disagrees with the packet (TCP data offset below 5 or past the end, UDP
 * length below 8 or past the end), as the kernel's TCP and UDP would drop it.
 * A first fragment's UDP length counts the whole datagram: fragments are
 * judged by the caller. */
static __always_inline int lb_parse_ports(void *ctx, const bool xdp, struct lb_pkt *p)
{
	void *data = lb_data(ctx, xdp);
	void *end = lb_data_end(ctx, xdp);
	__u32 off = p->l4_off & 0xff;
	__u32 need = p->proto == IPPROTO_TCP ? sizeof(struct tcphdr) : sizeof(struct udphdr);
	if (data + off + need > end)
		return LB_DROP(xdp, LB_DROP_TRUNCATED_L4);
	struct udphdr *ports = data + off;
	if ((void *)(ports + 1) > end)
		return LB_DROP(xdp, LB_DROP_TRUNCATED_L4);
	/* What the IP header says is left for the transport: lb_parse_ipv4 saw
	 * that the total length covers the header, options included. */
	__u32 l4_len = p->tot_len - (p->l4_off - p->l3_off);
	bool check_len = !p->gso && !lb_is_fragment(p);
	if (check_len && need > l4_len)
		return LB_DROP(xdp, LB_DROP_TRUNCATED_L4);
	p->sport = ports->source;
	p->dport = ports->dest;
	if (p->proto == IPPROTO_TCP) {
		struct tcphdr *tcp = data + off;
		if ((void *)(tcp + 1) > end)
			return LB_DROP(xdp, LB_DROP_TRUNCATED_L4);
		if (check_len && (tcp->doff < 5 || tcp->doff * 4 > l4_len))
			return LB_DROP(xdp, LB_DROP_BAD_L4);
		p->opens = tcp->syn && !tcp->ack;
	} else if (check_len) {
		__u32 udp_len = bpf_ntohs(ports->len);
		if (udp_len < sizeof(struct udphdr) || udp_len > l4_len)
			return LB_DROP(xdp, LB_DROP_BAD_L4);
	}
	return LB_CONTINUE;
}

#endif
