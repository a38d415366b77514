/* SPDX-License-Identifier: (GPL-2.0 OR BSD-2-Clause) */
/* Address and MAC rewrites with incremental checksum updates. Frames from a
 * task on a veth carry CHECKSUM_PARTIAL (the L4 field holds the pseudo-header
 * sum): bpf_l4_csum_replace with BPF_F_PSEUDO_HDR updates it either way, so
 * the same calls serve offloaded, complete and unchecked packets. */
#ifndef MESH_VIP_NAT_H
#define MESH_VIP_NAT_H

#include <linux/bpf.h>
#include <linux/in.h>
#include <bpf/bpf_helpers.h>
#include "vip_consts.h"
#include "vip_parse.h"

static const __u8 vip_mac[ETH_ALEN] = {VIP_MAC_0, VIP_MAC_1, VIP_MAC_2,
				       VIP_MAC_3, VIP_MAC_4, VIP_MAC_5};

/* The offset of the L4 checksum of p, or 0 when p has none to fix (a later
 * fragment, or a protocol without a pseudo-header sum). */
static __always_inline __u32 vip_l4_csum_off(const struct vip_pkt *p)
{
	if (p->frag == VIP_FRAG_LATER)
		return 0;
	if (p->proto == IPPROTO_TCP)
		return p->l4_off + TCP_CSUM_AT;
	if (p->proto == IPPROTO_UDP)
		return p->l4_off + UDP_CSUM_AT;
	return 0;
}

/* Replaces the IPv4 address at addr_off (IP_SRC_OFF or IP_DST_OFF) with
 * `to`, fixing the IPv4 checksum and, for TCP/UDP, the L4 one. */
static __always_inline int vip_set_addr(struct __sk_buff *skb, const struct vip_pkt *p,
					__u32 addr_off, __be32 from, __be32 to)
{
	__u32 l4_csum = vip_l4_csum_off(p);

	if (from == to)
		return 0;
	if (l4_csum) {
		__u64 flags = BPF_F_PSEUDO_HDR | sizeof(to);
		/* UDP checksum 0 means "none": keep it so. */
		if (p->proto == IPPROTO_UDP)
			flags |= BPF_F_MARK_MANGLED_0;
		if (bpf_l4_csum_replace(skb, l4_csum, from, to, flags))
			return -1;
	}
	if (bpf_l3_csum_replace(skb, IP_CSUM_OFF, from, to, sizeof(to)))
		return -1;
	return bpf_skb_store_bytes(skb, addr_off, &to, sizeof(to), 0);
}

/* Writes a MAC at ETH_DST_OFF or ETH_SRC_OFF. */
static __always_inline int vip_set_mac(struct __sk_buff *skb, __u32 off, const __u8 *mac)
{
	return bpf_skb_store_bytes(skb, off, mac, ETH_ALEN, 0);
}

/* DNAT towards a backend: destination address and MAC. */
static __always_inline int vip_dnat(struct __sk_buff *skb, const struct vip_pkt *p,
				    __be32 ip, const __u8 *mac)
{
	if (vip_set_addr(skb, p, IP_DST_OFF, p->daddr, ip))
		return -1;
	return vip_set_mac(skb, ETH_DST_OFF, mac);
}

/* Reply from a backend: source address back to the VIP, source MAC to the
 * VIP's. */
static __always_inline int vip_snat(struct __sk_buff *skb, const struct vip_pkt *p, __be32 vip)
{
	if (vip_set_addr(skb, p, IP_SRC_OFF, p->saddr, vip))
		return -1;
	return vip_set_mac(skb, ETH_SRC_OFF, vip_mac);
}

/* Hairpin: the packet goes back into the task it came from, as if sent by
 * the VIP: source VIP (and VIP MAC), destination the task (its own MAC,
 * the frame's source). The task answers the VIP, which hairpins back. */
static __always_inline int vip_hairpin(struct __sk_buff *skb, const struct vip_pkt *p,
				       const struct ethhdr *eth, __be32 vip)
{
	if (vip_set_addr(skb, p, IP_SRC_OFF, p->saddr, vip))
		return -1;
	if (vip_set_addr(skb, p, IP_DST_OFF, p->daddr, p->saddr))
		return -1;
	if (vip_set_mac(skb, ETH_DST_OFF, eth->h_source))
		return -1;
	return vip_set_mac(skb, ETH_SRC_OFF, vip_mac);
}

#endif
