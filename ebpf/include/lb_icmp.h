/* SPDX-License-Identifier: (GPL-2.0 OR BSD-2-Clause) */
/* ICMP errors about balanced flows. On the ingress host: an error about a
 * reply the backend sent by DSR (embedded: host:published → client) is
 * rewritten as the flow's DNAT would (embedded source and outer destination →
 * the task) and follows the flow, so the task's path MTU discovery works. On
 * the backend's host: a task's error about a client's packet (embedded:
 * client → task:target) gets the ingress host's address back. */
#ifndef MESH_LB_ICMP_H
#define MESH_LB_ICMP_H

/* linux/icmp.h pulls in libc headers the BPF target lacks: the ICMP header
 * is declared here. */
struct icmphdr {
	__u8 type;
	__u8 code;
	__sum16 checksum;
	__be32 rest; /* unused, or the next-hop MTU of "fragmentation needed" */
};
#include "lb_csum.h"
#include "lb_parse.h"

/* The header an ICMP error quotes. */
struct lb_icmp_inner {
	__u32 off;    /* offset of the quoted IPv4 header */
	__u32 l4_off; /* offset of its quoted transport header */
	__be32 saddr;
	__be32 daddr;
	__be16 sport;
	__be16 dport;
	__u8 proto;   /* TCP or UDP */
	__u8 pad[3];
};

/* Whether `p` (proto ICMP) is an error quoting TCP or UDP: LB_CONTINUE with
 * `in` filled, LB_NOT_OURS for any other ICMP, or a drop verdict when its
 * ICMP header is cut short. */
static __always_inline int lb_parse_icmp_error(void *ctx, const bool xdp, const struct lb_pkt *p,
					       struct lb_icmp_inner *in)
{
	void *data = lb_data(ctx, xdp);
	void *end = lb_data_end(ctx, xdp);
	__u32 off = p->l4_off & 0xff;
	struct icmphdr *icmp = data + off;
	if ((void *)(icmp + 1) > end)
		return LB_DROP(xdp, LB_DROP_TRUNCATED_L4);
	if (icmp->type != LB_ICMP_DEST_UNREACH && icmp->type != LB_ICMP_TIME_EXCEEDED)
		return LB_NOT_OURS;
	struct iphdr *ip = (void *)(icmp + 1);
	if ((void *)(ip + 1) > end)
		return LB_NOT_OURS; /* too little quoted to be about one of our flows */
	if (ip->ihl < 5 || (ip->protocol != IPPROTO_TCP && ip->protocol != IPPROTO_UDP))
		return LB_NOT_OURS;
	__u32 hl = ip->ihl * 4;
	struct udphdr *ports = (void *)ip + hl;
	if ((void *)(ports + 1) > end)
		return LB_NOT_OURS;
	in->off = off + sizeof(*icmp);
	in->l4_off = in->off + hl;
	in->saddr = ip->saddr;
	in->daddr = ip->daddr;
	in->sport = ports->source;
	in->dport = ports->dest;
	in->proto = ip->protocol;
	return LB_CONTINUE;
}

/* Rewrites an ICMP error in place: the outer destination (outer_dst) or
 * source to `ip`, the quoted source (quoted_src) or destination address to
 * `ip` and its port to `port`; fixes the outer and quoted IPv4 checksums and
 * the ICMP checksum. ICMP has no pseudo-header and its errors are never
 * checksum-offloaded, so plain incremental updates are right at both hooks.
 * Returns 0 or -1. */
static __always_inline int lb_icmp_rewrite(void *ctx, const bool xdp, const struct lb_pkt *p,
					   const struct lb_icmp_inner *in, const bool outer_dst,
					   const bool quoted_src, __be32 ip_addr, __be16 port)
{
	void *data = lb_data(ctx, xdp);
	void *end = lb_data_end(ctx, xdp);
	struct iphdr *outer = data + (p->l3_off & 0xff);
	if ((void *)(outer + 1) > end)
		return -1;
	struct icmphdr *icmp = data + (p->l4_off & 0xff);
	if ((void *)(icmp + 1) > end)
		return -1;
	struct iphdr *quoted = data + (in->off & 0xff);
	if ((void *)(quoted + 1) > end)
		return -1;
	__be16 *qport = data + ((in->l4_off + (quoted_src ? 0 : 2)) & 0x1ff);
	if ((void *)(qport + 1) > end)
		return -1;

	/* Outer header: not covered by the ICMP checksum. */
	__be32 *outer_addr = outer_dst ? &outer->daddr : &outer->saddr;
	lb_csum_update4(&outer->check, *outer_addr, ip_addr);
	*outer_addr = ip_addr;

	/* Quoted header: its own checksum, and the ICMP checksum over both. */
	__be32 *qaddr = quoted_src ? &quoted->saddr : &quoted->daddr;
	__be32 old_addr = *qaddr;
	__u16 old_check = quoted->check;
	lb_csum_update4(&quoted->check, old_addr, ip_addr);
	*qaddr = ip_addr;
	lb_csum_update4(&icmp->checksum, old_addr, ip_addr);
	lb_csum_update2(&icmp->checksum, old_check, quoted->check);
	lb_csum_update2(&icmp->checksum, *qport, port);
	*qport = port;
	return 0;
}

#endif
