/* SPDX-License-Identifier: (GPL-2.0 OR BSD-2-Clause) */
/* Answers the ingress host sends itself, built in place from the packet they
 * answer and sent back out of the underlay (XDP_TX, or at TC a redirect to the
 * same interface's egress) with the MACs swapped:
 * - ICMP "fragmentation needed" (type 3 code 4, next-hop MTU = underlay MTU -
 *   LB_VXLAN_OVERHEAD) for a DF packet that would not fit the underlay once
 *   encapsulated, so the client's path MTU discovery works through the mesh;
 * - a TCP RST for a segment to a published port whose service has no backend,
 *   so the client fails fast, as at a closed port.
 *
 * Both carry full checksums (XDP_TX frames keep no offload state). At TC an
 * skb from a local veth may still be CHECKSUM_PARTIAL after the rewrite: no
 * helper clears that, so the receiver accepts it unverified, which is right
 * since the checksums written here are complete. NICs never hand up PARTIAL
 * skbs. Packets whose IPv4 header has options get no answer (dropped and
 * counted). */
#ifndef MESH_LB_ANSWER_H
#define MESH_LB_ANSWER_H

#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/tcp.h>
#include "lb_csum.h"
#include "lb_encap.h"
#include "lb_icmp.h"
#include "lb_maps.h"
#include "lb_parse.h"

/* Bytes of the offending packet an ICMP error quotes: its IPv4 header (no
 * options) and 20 bytes of transport header. RFC 792 asks for 8; 20 keeps a
 * TCP checksum field inside, which bpf_skb_change_tail needs for a
 * CHECKSUM_PARTIAL skb (it refuses to cut below the checksum field). */
#define LB_ICMP_QUOTE 40
/* An ICMP error's new headers, inserted before the quoted packet. */
#define LB_ICMP_GROW (sizeof(struct iphdr) + sizeof(struct icmphdr))
/* The whole frag-needed frame: Ethernet, IPv4, ICMP, quote (82 bytes). */
#define LB_ICMP_FRAME_LEN (sizeof(struct ethhdr) + LB_ICMP_GROW + LB_ICMP_QUOTE)
/* The whole RST frame: Ethernet, IPv4, TCP without options (54 bytes). */
#define LB_RST_FRAME_LEN (sizeof(struct ethhdr) + sizeof(struct iphdr) + sizeof(struct tcphdr))
/* IPTOS_PREC_INTERNETCONTROL, as the kernel's own ICMP errors. */
#define LB_TOS_ICMP 0xc0

/* Sums `words` 16-bit words at `buf` (aligned stack memory) into a 32-bit
 * accumulator. */
static __always_inline __u32 lb_csum_words(const void *buf, const int words, __u32 sum)
{
	const __u16 *w = buf;
#pragma unroll
	for (int i = 0; i < words; i++)
		sum += w[i];
	return sum;
}

/* Makes the packet `len` bytes long with `grow` bytes inserted right after
 * its Ethernet header (the rest kept from the start). Returns 0 or -1.
 * Invalidates every packet pointer. */
static __always_inline int lb_reshape(void *ctx, const bool xdp, const __u32 grow, const __u32 len)
{
	if (xdp) {
		/* The new headers go in front: the old Ethernet header ends up at
		 * `grow`, the IPv4 header right where the quote belongs. */
		if (grow && bpf_xdp_adjust_head(ctx, -(int)grow))
			return -1;
		long have = lb_data_end(ctx, xdp) - lb_data(ctx, xdp);
		if (have < (long)len)
			return -1;
		if (bpf_xdp_adjust_tail(ctx, (int)len - (int)have))
			return -1;
		return 0;
	}
	/* Cut first (less to move), then open the room after the MAC header. */
	if (bpf_skb_change_tail(ctx, len - grow, 0))
		return -1;
	if (grow && bpf_skb_adjust_room(ctx, grow, BPF_ADJ_ROOM_MAC, 0))
		return -1;
	return 0;
}

/* Writes `len` bytes of `src` (stack) at `off` of the packet. Returns 0 or
 * -1. */
static __always_inline int lb_store(void *ctx, const bool xdp, __u32 off, const void *src,
				    const __u32 len)
{
	if (!xdp)
		return bpf_skb_store_bytes(ctx, off, src, len, 0) ? -1 : 0;
	void *data = lb_data(ctx, xdp);
	void *end = lb_data_end(ctx, xdp);
	off &= 0xff;
	if (data + off + len > end)
		return -1;
	__builtin_memcpy(data + off, src, len);
	return 0;
}

/* Sends the rewritten frame back where it came from, counting `outcome`. */
static __always_inline int lb_bounce(const bool xdp, const struct lb_config *cfg, __u32 outcome)
{
	if (xdp) {
		LB_FORWARDED(outcome);
		return XDP_TX;
	}
	long rc = bpf_redirect(cfg->underlay_ifindex, 0);
	if (rc != TC_ACT_REDIRECT)
		return LB_DROP(xdp, LB_DROP_REDIRECT_FAIL);
	LB_FORWARDED(outcome);
	return rc;
}

/* The IPv4 header of an answer from this host to `daddr`. */
static __always_inline void lb_answer_ip(struct iphdr *ip, __u8 tos, __u16 tot_len, __u8 proto,
					 __be32 saddr, __be32 daddr)
{
	ip->version = 4;
	ip->ihl = 5;
	ip->tos = tos;
	ip->tot_len = bpf_htons(tot_len);
	ip->id = 0;
	ip->frag_off = 0;
	ip->ttl = LB_TTL;
	ip->protocol = proto;
	ip->check = 0;
	ip->saddr = saddr;
	ip->daddr = daddr;
	ip->check = lb_ipv4_csum(ip);
}

/* Answers packet `p` (DF set, too big once encapsulated) with ICMP
 * "fragmentation needed" from this host. A verdict, always. */
static __always_inline int lb_answer_frag_needed(void *ctx, const bool xdp,
						 const struct lb_config *cfg,
						 const struct lb_pkt *p)
{
	if (p->l3_off != sizeof(struct ethhdr) || p->l4_off != p->l3_off + sizeof(struct iphdr))
		return LB_DROP(xdp, LB_DROP_ENCAP_TOO_BIG); /* options: no answer */
	void *data = lb_data(ctx, xdp);
	void *end = lb_data_end(ctx, xdp);
	struct ethhdr *eth = data;
	if (data + sizeof(struct ethhdr) + LB_ICMP_QUOTE > end)
		return LB_DROP(xdp, LB_DROP_ENCAP_TOO_BIG);
	struct ethhdr neth = {};
	lb_copy_mac(neth.h_dest, eth->h_source);
	lb_copy_mac(neth.h_source, eth->h_dest);
	neth.h_proto = LB_BE_ETH_P_IP;
	__u32 quote[LB_ICMP_QUOTE / 4];
	__builtin_memcpy(quote, data + sizeof(struct ethhdr), LB_ICMP_QUOTE);

	struct iphdr ip = {};
	lb_answer_ip(&ip, LB_TOS_ICMP, LB_ICMP_GROW + LB_ICMP_QUOTE, IPPROTO_ICMP, cfg->host_ip,
		     p->saddr);
	struct icmphdr icmp = {
		.type = LB_ICMP_DEST_UNREACH,
		.code = LB_ICMP_FRAG_NEEDED,
		.checksum = 0,
		/* 16 unused bits, then the next-hop MTU. */
		.rest = bpf_htonl(cfg->mtu - LB_VXLAN_OVERHEAD),
	};
	__u32 sum = lb_csum_words(&icmp, sizeof(icmp) / 2, 0);
	sum = lb_csum_words(quote, LB_ICMP_QUOTE / 2, sum);
	icmp.checksum = ~lb_csum_fold(sum);

	if (lb_reshape(ctx, xdp, LB_ICMP_GROW, LB_ICMP_FRAME_LEN))
		return LB_DROP(xdp, LB_DROP_REDIRECT_FAIL);
	__u32 off = 0;
	if (lb_store(ctx, xdp, off, &neth, sizeof(neth)))
		return LB_DROP(xdp, LB_DROP_REDIRECT_FAIL);
	off += sizeof(neth);
	if (lb_store(ctx, xdp, off, &ip, sizeof(ip)))
		return LB_DROP(xdp, LB_DROP_REDIRECT_FAIL);
	off += sizeof(ip);
	if (lb_store(ctx, xdp, off, &icmp, sizeof(icmp)))
		return LB_DROP(xdp, LB_DROP_REDIRECT_FAIL);
	off += sizeof(icmp);
	if (lb_store(ctx, xdp, off, quote, LB_ICMP_QUOTE))
		return LB_DROP(xdp, LB_DROP_REDIRECT_FAIL);
	return lb_bounce(xdp, cfg, LB_FWD_FRAG_NEEDED);
}

/* Answers TCP segment `p` (to a published port without backends) with a RST
 * from the published address, as RFC 9293 has a closed port do: seq = the
 * segment's ack if it had one, else ack = its seq + length, counted as
 * forward:rst. LB_CONTINUE when it gets no answer (not TCP, a RST itself,
 * IPv4 options, short): the caller drops it. */
static __always_inline int lb_answer_rst(void *ctx, const bool xdp, const struct lb_config *cfg,
					 const struct lb_pkt *p)
{
	if (p->proto != IPPROTO_TCP || p->l3_off != sizeof(struct ethhdr) ||
	    p->l4_off != p->l3_off + sizeof(struct iphdr))
		return LB_CONTINUE;
	void *data = lb_data(ctx, xdp);
	void *end = lb_data_end(ctx, xdp);
	struct ethhdr *eth = data;
	struct tcphdr *tcp = data + sizeof(struct ethhdr) + sizeof(struct iphdr);
	if ((void *)(tcp + 1) > end)
		return LB_CONTINUE;
	if (tcp->rst)
		return LB_CONTINUE;
	struct ethhdr neth = {};
	lb_copy_mac(neth.h_dest, eth->h_source);
	lb_copy_mac(neth.h_source, eth->h_dest);
	neth.h_proto = LB_BE_ETH_P_IP;

	struct tcphdr rst = {};
	rst.source = tcp->dest;
	rst.dest = tcp->source;
	rst.doff = sizeof(rst) / 4;
	rst.rst = 1;
	if (tcp->ack) {
		rst.seq = tcp->ack_seq;
	} else {
		__u32 seg_len = p->tot_len - sizeof(struct iphdr) - tcp->doff * 4 + tcp->syn + tcp->fin;
		rst.ack = 1;
		rst.ack_seq = bpf_htonl(bpf_ntohl(tcp->seq) + seg_len);
	}
	struct iphdr ip = {};
	lb_answer_ip(&ip, 0, sizeof(struct iphdr) + sizeof(rst), IPPROTO_TCP, p->daddr, p->saddr);
	/* Pseudo-header (addresses, protocol, TCP length) and the header. */
	__u32 sum = lb_csum_words(&ip.saddr, 4, 0);
	sum += bpf_htons(IPPROTO_TCP) + bpf_htons(sizeof(rst));
	sum = lb_csum_words(&rst, sizeof(rst) / 2, sum);
	rst.check = ~lb_csum_fold(sum);

	if (lb_reshape(ctx, xdp, 0, LB_RST_FRAME_LEN))
		return LB_DROP(xdp, LB_DROP_REDIRECT_FAIL);
	if (lb_store(ctx, xdp, 0, &neth, sizeof(neth)) ||
	    lb_store(ctx, xdp, sizeof(neth), &ip, sizeof(ip)) ||
	    lb_store(ctx, xdp, sizeof(neth) + sizeof(ip), &rst, sizeof(rst)))
		return LB_DROP(xdp, LB_DROP_REDIRECT_FAIL);
	return lb_bounce(xdp, cfg, LB_FWD_RST);
}

#endif
