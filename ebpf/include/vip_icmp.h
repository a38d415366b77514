/* SPDX-License-Identifier: (GPL-2.0 OR BSD-2-Clause) */
/* ICMP errors about VIP flows. A backend that answers a client's datagram
 * with, say, "port unreachable" quotes the packet it got (client -> backend);
 * the client's socket knows the flow as client -> VIP. On the way into the
 * client, the quoted destination and the outer source become the VIP again.
 * The quoted IPv4 header keeps a valid checksum, so its sum, and with it the
 * ICMP checksum, does not change; the quoted L4 checksum is left stale, as
 * receivers do not check it. */
#ifndef MESH_VIP_ICMP_H
#define MESH_VIP_ICMP_H

#include <linux/bpf.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include "vip_consts.h"
#include "vip_maps.h"
#include "vip_nat.h"
#include "vip_parse.h"

/* Length of the ICMP header before the quoted packet. */
#define ICMP_HDR_LEN 8

/* Rewrites an ICMP error about a VIP flow on its way into the client.
 * Returns a TC verdict, or VIP_CONTINUE when the error is about something
 * else. */
static __always_inline int vip_reply_icmp_error(struct __sk_buff *skb, const struct vip_pkt *p,
						__u32 net)
{
	struct iphdr inner;
	__be16 ports[2];

	if (p->icmp_type != ICMP_DEST_UNREACH_T && p->icmp_type != ICMP_TIME_EXCEEDED_T)
		return VIP_CONTINUE;
	if (p->frag != VIP_FRAG_NONE)
		return VIP_CONTINUE;
	__u32 inner_off = p->l4_off + ICMP_HDR_LEN;
	if (bpf_skb_load_bytes(skb, inner_off, &inner, sizeof(inner)))
		return VIP_CONTINUE;
	if (inner.version != 4 || inner.ihl < 5 ||
	    (inner.protocol != IPPROTO_TCP && inner.protocol != IPPROTO_UDP))
		return VIP_CONTINUE;
	if (bpf_skb_load_bytes(skb, inner_off + inner.ihl * 4, ports, sizeof(ports)))
		return VIP_CONTINUE;

	/* The quoted packet went client -> backend; its reply is keyed as the
	 * backend sends it. */
	struct vip_flow reply = {
		.net = net,
		.saddr = inner.daddr,
		.daddr = inner.saddr,
		.sport = ports[1],
		.dport = ports[0],
		.proto = inner.protocol,
	};
	struct vip_rev *rev = bpf_map_lookup_elem(&VIP_REVERSE, &reply);
	if (!rev || (rev->flags & VIP_REV_HAIRPIN))
		return VIP_CONTINUE;
	__be32 vip = rev->vip;

	if (bpf_l3_csum_replace(skb, inner_off + 10, inner.daddr, vip, sizeof(vip)) ||
	    bpf_skb_store_bytes(skb, inner_off + 16, &vip, sizeof(vip), 0))
		goto fail;
	/* The backend itself sent the error: it comes from the VIP. */
	if (p->saddr == inner.daddr && vip_snat(skb, p, vip))
		goto fail;
	vip_count(VIP_REPLY_ICMP_ERROR);
	return TC_ACT_OK;
fail:
	vip_count(VIP_DROP_REWRITE);
	return TC_ACT_SHOT;
}

#endif
