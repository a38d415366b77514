/* SPDX-License-Identifier: (GPL-2.0 OR BSD-2-Clause) */
/* Delivering a DNATed packet: into a local backend's network namespace
 * through its leg, or to the backend's host in VXLAN (VNI 0xFE0000 | published
 * port); and stripping that VXLAN on the backend's host. */
#ifndef MESH_LB_ENCAP_H
#define MESH_LB_ENCAP_H

#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/udp.h>
#include "lb_csum.h"
#include "lb_maps.h"
#include "lb_parse.h"

#ifndef AF_INET
#define AF_INET 2
#endif

/* The VXLAN header (RFC 7348). */
struct lb_vxlanhdr {
	__be32 flags; /* 0x08000000: the VNI is valid */
	__be32 vni;   /* VNI << 8 */
};

/* The fixed inner destination MAC of the mesh's VXLAN (the receiving program
 * rewrites it): 02:6d:65:73:68:00, locally administered. Written byte by byte:
 * a constant array would land in .rodata, which the loader does not map. */
static __always_inline void lb_inner_dmac(__u8 *mac)
{
	mac[0] = 0x02;
	mac[1] = 0x6d;
	mac[2] = 0x65;
	mac[3] = 0x73;
	mac[4] = 0x68;
	mac[5] = 0x00;
}

static __always_inline void lb_copy_mac(__u8 *dst, const __u8 *src)
{
	__builtin_memcpy(dst, src, ETH_ALEN);
}

/* Frames the packet for backend `be`'s leg and redirects it into the network
 * namespace: at TC straight to gw0's ingress (bpf_redirect_peer), at XDP to
 * mg-<network>'s transmit (gw0 carries an XDP_PASS program for it). */
static __always_inline int lb_deliver_local(void *ctx, const bool xdp, const struct lb_backend *be)
{
	void *data = lb_data(ctx, xdp);
	void *end = lb_data_end(ctx, xdp);
	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > end)
		return LB_DROP(xdp, LB_DROP_TRUNCATED_ETH);
	lb_copy_mac(eth->h_dest, be->leg_ns_mac);
	lb_copy_mac(eth->h_source, be->leg_host_mac);
	eth->h_proto = LB_BE_ETH_P_IP;
	long rc = xdp ? bpf_redirect(be->leg_ifindex, 0) : bpf_redirect_peer(be->leg_ifindex, 0);
	if (rc == (xdp ? XDP_REDIRECT : TC_ACT_REDIRECT))
		return rc;
	return LB_DROP(xdp, LB_DROP_REDIRECT_FAIL);
}

/* Writes the outer IPv4/UDP/VXLAN and inner Ethernet headers at `hdr`
 * (the outer IPv4 header; the frame's Ethernet header is before it).
 * `len` is the frame length after encapsulation. */
static __always_inline void lb_write_encap(struct iphdr *ip, const struct lb_config *cfg,
					   __be32 vtep, __u32 hash, __be16 published_port,
					   __u32 len)
{
	struct udphdr *udp = (void *)(ip + 1);
	struct lb_vxlanhdr *vx = (void *)(udp + 1);
	struct ethhdr *inner = (void *)(vx + 1);

	ip->version = 4;
	ip->ihl = 5;
	ip->tos = 0;
	ip->tot_len = bpf_htons(len - sizeof(struct ethhdr));
	ip->id = 0;
	ip->frag_off = LB_BE_IP_DF;
	ip->ttl = LB_TTL;
	ip->protocol = IPPROTO_UDP;
	ip->check = 0;
	ip->saddr = cfg->host_ip;
	ip->daddr = vtep;
	ip->check = lb_ipv4_csum(ip);

	udp->source = bpf_htons(LB_SPORT_BASE | (hash & LB_SPORT_MASK));
	udp->dest = cfg->data_path_port;
	udp->len = bpf_htons(len - sizeof(struct ethhdr) - sizeof(struct iphdr));
	udp->check = 0;

	vx->flags = bpf_htonl(LB_VXLAN_FLAG_I << 24);
	vx->vni = bpf_htonl((LB_MESH_VNI_BASE | bpf_ntohs(published_port)) << 8);

	lb_inner_dmac(inner->h_dest);
	lb_copy_mac(inner->h_source, cfg->host_mac);
	inner->h_proto = LB_BE_ETH_P_IP;
}

/* Encapsulates the (DNATed) packet towards `be->vtep` and sends it out of the
 * underlay. `ip_len` is the inner IPv4 packet's length, checked against the
 * MTU (GSO skbs at TC are resegmented by the kernel, with gso_size lowered by
 * bpf_skb_adjust_room, so only their segments count). */
static __always_inline int lb_encap_remote(void *ctx, const bool xdp, const struct lb_config *cfg,
					   const struct lb_backend *be, __u32 hash,
					   __be16 published_port, __u32 ip_len)
{
	bool gso = false;
	if (!xdp)
		gso = ((struct __sk_buff *)ctx)->gso_segs > 1;
	if (!gso && ip_len + LB_VXLAN_OVERHEAD > cfg->mtu)
		return LB_DROP(xdp, LB_DROP_ENCAP_TOO_BIG);

	if (!xdp) {
		struct __sk_buff *skb = ctx;
		__u64 flags = BPF_F_ADJ_ROOM_ENCAP_L3_IPV4 | BPF_F_ADJ_ROOM_ENCAP_L4_UDP |
			      BPF_F_ADJ_ROOM_ENCAP_L2(sizeof(struct ethhdr));
		if (bpf_skb_adjust_room(skb, LB_VXLAN_OVERHEAD, BPF_ADJ_ROOM_MAC, flags))
			return LB_DROP(xdp, LB_DROP_REDIRECT_FAIL);
		void *data = lb_data(ctx, xdp);
		void *end = lb_data_end(ctx, xdp);
		struct ethhdr *eth = data;
		struct iphdr *ip = (void *)(eth + 1);
		if ((void *)ip + LB_VXLAN_OVERHEAD > end)
			return LB_DROP(xdp, LB_DROP_REDIRECT_FAIL);
		eth->h_proto = LB_BE_ETH_P_IP;
		lb_write_encap(ip, cfg, be->vtep, hash, published_port, skb->len);
		/* The kernel routes towards the VTEP and resolves its neighbour
		 * (queueing the packet while it does), then fills both MACs. */
		long rc = bpf_redirect_neigh(cfg->underlay_ifindex, NULL, 0, 0);
		if (rc == TC_ACT_REDIRECT)
			return rc;
		return LB_DROP(xdp, LB_DROP_REDIRECT_FAIL);
	}

	struct bpf_fib_lookup fib = {};
	fib.family = AF_INET;
	fib.l4_protocol = IPPROTO_UDP;
	fib.tot_len = ip_len + LB_VXLAN_OVERHEAD;
	fib.ipv4_src = cfg->host_ip;
	fib.ipv4_dst = be->vtep;
	fib.ifindex = cfg->underlay_ifindex;
	/* An output lookup: the host namespace need not forward (an ingress
	 * lookup fails with FWD_DISABLED unless ip_forward is on). */
	long rc = bpf_fib_lookup(ctx, &fib, sizeof(fib), BPF_FIB_LOOKUP_OUTPUT);
	/* An unresolved neighbour cannot wait in XDP: count and drop. Userspace
	 * primes the neighbours of every remote VTEP on apply. */
	if (rc != BPF_FIB_LKUP_RET_SUCCESS)
		return LB_DROP(xdp, LB_DROP_FIB_FAIL);
	if (bpf_xdp_adjust_head(ctx, -LB_VXLAN_OVERHEAD))
		return LB_DROP(xdp, LB_DROP_REDIRECT_FAIL);
	void *data = lb_data(ctx, xdp);
	void *end = lb_data_end(ctx, xdp);
	struct ethhdr *eth = data;
	struct iphdr *ip = (void *)(eth + 1);
	if ((void *)ip + LB_VXLAN_OVERHEAD > end)
		return LB_DROP(xdp, LB_DROP_REDIRECT_FAIL);
	lb_copy_mac(eth->h_dest, fib.dmac);
	lb_copy_mac(eth->h_source, fib.smac);
	eth->h_proto = LB_BE_ETH_P_IP;
	lb_write_encap(ip, cfg, be->vtep, hash, published_port, (__u32)(end - data));
	if (fib.ifindex == ((struct xdp_md *)ctx)->ingress_ifindex)
		return XDP_TX;
	rc = bpf_redirect(fib.ifindex, 0);
	if (rc == XDP_REDIRECT)
		return rc;
	return LB_DROP(xdp, LB_DROP_REDIRECT_FAIL);
}

/* Strips the outer IPv4 (`outer_hl` bytes), UDP, VXLAN and inner Ethernet
 * headers, keeping an Ethernet header in front of the inner IPv4 packet.
 * Returns 0 or -1. Invalidates every packet pointer. */
static __always_inline int lb_decap(void *ctx, const bool xdp, __u32 outer_hl)
{
	__u32 strip = (outer_hl & 0x3c) + sizeof(struct udphdr) + sizeof(struct lb_vxlanhdr) +
		      sizeof(struct ethhdr);
	if (xdp) {
		if (bpf_xdp_adjust_head(ctx, strip))
			return -1;
		void *data = lb_data(ctx, xdp);
		void *end = lb_data_end(ctx, xdp);
		struct ethhdr *eth = data;
		if ((void *)(eth + 1) > end)
			return -1;
		eth->h_proto = LB_BE_ETH_P_IP; /* the MACs are set on delivery */
		return 0;
	}
	/* gso_size stays: it counts the inner payload, which is unchanged. */
	if (bpf_skb_adjust_room(ctx, -(__s32)strip, BPF_ADJ_ROOM_MAC, BPF_F_ADJ_ROOM_FIXED_GSO))
		return -1;
	return 0;
}

#endif
