/* SPDX-License-Identifier: (GPL-2.0 OR BSD-2-Clause) */
/* Rewriting a TCP/UDP packet's address and port in place: the destination
 * (DNAT, towards a backend) or the source (reverse NAT, a task's reply), with
 * incremental IPv4 and L4 checksum updates. */
#ifndef MESH_LB_NAT_H
#define MESH_LB_NAT_H

#include "lb_csum.h"
#include "lb_parse.h"

#define LB_TCP_CSUM_OFF 16
#define LB_UDP_CSUM_OFF 6

/* Sets the destination (dst) or source (!dst) to new_ip:new_port. Returns 0,
 * or -1 when the packet is too short or a helper failed. Invalidates every
 * packet pointer. */
static __always_inline int lb_rewrite(void *ctx, const bool xdp, const struct lb_pkt *p,
				      const bool dst, __be32 new_ip, __be16 new_port)
{
	__u32 l3 = p->l3_off & 0xff;
	__u32 l4 = p->l4_off & 0xff;
	bool udp = p->proto == IPPROTO_UDP;
	__u32 csum_off = l4 + (udp ? LB_UDP_CSUM_OFF : LB_TCP_CSUM_OFF);
	__u32 ip_off = l3 + (dst ? offsetof(struct iphdr, daddr) : offsetof(struct iphdr, saddr));
	__u32 port_off = l4 + (dst ? offsetof(struct udphdr, dest) : offsetof(struct udphdr, source));
	__be32 old_ip = dst ? p->daddr : p->saddr;
	__be16 old_port = dst ? p->dport : p->sport;

	if (xdp) {
		void *data = lb_data(ctx, xdp);
		void *end = lb_data_end(ctx, xdp);
		struct iphdr *ip = data + l3;
		if ((void *)(ip + 1) > end)
			return -1;
		__u16 *csum = data + csum_off;
		__be16 *port = data + port_off;
		if ((void *)(csum + 1) > end || (void *)(port + 1) > end)
			return -1;
		/* A UDP checksum of 0 means "none": leave it so. */
		if (!(udp && *csum == 0)) {
			lb_csum_update4(csum, old_ip, new_ip);
			lb_csum_update2(csum, old_port, new_port);
			if (udp && *csum == 0)
				*csum = 0xffff;
		}
		*port = new_port;
		lb_csum_update4(&ip->check, old_ip, new_ip);
		if (dst)
			ip->daddr = new_ip;
		else
			ip->saddr = new_ip;
		return 0;
	}

	/* TC: the helpers keep CHECKSUM_PARTIAL (the L4 field then holds the
	 * pseudo-header sum) and CHECKSUM_COMPLETE skbs right. */
	__u64 mangled = udp ? BPF_F_MARK_MANGLED_0 : 0;
	if (bpf_l4_csum_replace(ctx, csum_off, old_ip, new_ip, BPF_F_PSEUDO_HDR | mangled | 4))
		return -1;
	if (bpf_l4_csum_replace(ctx, csum_off, old_port, new_port, mangled | 2))
		return -1;
	if (bpf_l3_csum_replace(ctx, l3 + offsetof(struct iphdr, check), old_ip, new_ip, 4))
		return -1;
	if (bpf_skb_store_bytes(ctx, ip_off, &new_ip, 4, BPF_F_RECOMPUTE_CSUM))
		return -1;
	if (bpf_skb_store_bytes(ctx, port_off, &new_port, 2, BPF_F_RECOMPUTE_CSUM))
		return -1;
	return 0;
}

#endif
