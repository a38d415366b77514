/* SPDX-License-Identifier: (GPL-2.0 OR BSD-2-Clause) */
/* Answers the VIP gives itself, at TC ingress of a task's veth: the frame
 * is turned into its answer in place and redirected back out of the same
 * veth, into the task (bpf_redirect(ifindex, 0) from ingress delivers to the
 * peer without anything attached there). */
#ifndef MESH_VIP_ANSWER_H
#define MESH_VIP_ANSWER_H

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "vip_consts.h"
#include "vip_maps.h"
#include "vip_nat.h"
#include "vip_parse.h"

/* An Ethernet/IPv4 ARP body. */
struct vip_arp {
	__be16 htype;
	__be16 ptype;
	__u8 hlen;
	__u8 plen;
	__be16 op;
	__u8 sha[ETH_ALEN];
	__be32 sip;
	__u8 tha[ETH_ALEN];
	__be32 tip;
} __attribute__((packed));

/* An ARP request for a VIP of network `net` becomes the VIP's reply.
 * Returns a TC verdict, or VIP_CONTINUE for any other ARP. */
static __always_inline int vip_answer_arp(struct __sk_buff *skb, __u32 net)
{
	struct vip_arp arp;
	struct ethhdr eth;

	if (bpf_skb_load_bytes(skb, sizeof(eth), &arp, sizeof(arp)))
		return VIP_CONTINUE;
	if (arp.htype != BE_ARPHRD_ETHER || arp.ptype != BE_ETH_P_IP || arp.hlen != ETH_ALEN ||
	    arp.plen != 4 || arp.op != BE_ARPOP_REQUEST)
		return VIP_CONTINUE;
	struct vip_key key = {.net = net, .addr = arp.tip};
	if (!bpf_map_lookup_elem(&VIP_SERVICES, &key))
		return VIP_CONTINUE;

	struct vip_arp reply = {
		.htype = arp.htype,
		.ptype = arp.ptype,
		.hlen = ETH_ALEN,
		.plen = 4,
		.op = BE_ARPOP_REPLY,
		.sip = arp.tip,
		.tip = arp.sip,
	};
	__builtin_memcpy(reply.sha, vip_mac, ETH_ALEN);
	__builtin_memcpy(reply.tha, arp.sha, ETH_ALEN);
	__builtin_memcpy(eth.h_dest, arp.sha, ETH_ALEN);
	__builtin_memcpy(eth.h_source, vip_mac, ETH_ALEN);
	eth.h_proto = BE_ETH_P_ARP;
	if (bpf_skb_store_bytes(skb, 0, &eth, sizeof(eth), 0) ||
	    bpf_skb_store_bytes(skb, sizeof(eth), &reply, sizeof(reply), 0)) {
		vip_count(VIP_DROP_REWRITE);
		return TC_ACT_SHOT;
	}
	vip_count(VIP_ANSWER_ARP);
	return bpf_redirect(skb->ifindex, 0);
}

/* ICMP echo request to a VIP: the VIP answers it. */
static __always_inline int vip_answer_echo(struct __sk_buff *skb, const struct vip_pkt *p,
					   const struct ethhdr *eth)
{
	/* Addresses and MACs swap places: the IPv4 checksum does not change. */
	__be32 addrs[2] = {p->daddr, p->saddr};
	struct ethhdr out;
	__u8 type = ICMP_ECHOREPLY_T;

	__builtin_memcpy(out.h_dest, eth->h_source, ETH_ALEN);
	__builtin_memcpy(out.h_source, vip_mac, ETH_ALEN);
	out.h_proto = BE_ETH_P_IP;
	/* Type 8 -> 0 in the first 16-bit word (type, code) of the ICMP sum. */
	if (bpf_l4_csum_replace(skb, p->l4_off + ICMP_CSUM_AT, bpf_htons(ICMP_ECHO_T << 8),
				bpf_htons(ICMP_ECHOREPLY_T << 8), 2) ||
	    bpf_skb_store_bytes(skb, p->l4_off, &type, 1, 0) ||
	    bpf_skb_store_bytes(skb, IP_SRC_OFF, addrs, sizeof(addrs), 0) ||
	    bpf_skb_store_bytes(skb, 0, &out, sizeof(out), 0)) {
		vip_count(VIP_DROP_REWRITE);
		return TC_ACT_SHOT;
	}
	vip_count(VIP_ANSWER_ECHO);
	return bpf_redirect(skb->ifindex, 0);
}

/* A TCP header without options, as RFC 9293 builds a reset. */
struct vip_tcp {
	__be16 sport;
	__be16 dport;
	__be32 seq;
	__be32 ack_seq;
	__u8 doff;   /* data offset << 4 */
	__u8 flags;
	__be16 window;
	__be16 check;
	__be16 urg;
};

/* Pseudo-header and TCP header, summed together. */
struct vip_tcp_sum {
	__be32 saddr;
	__be32 daddr;
	__u8 zero;
	__u8 proto;
	__be16 len;
	struct vip_tcp tcp;
};

static __always_inline __u16 vip_fold(__s64 sum)
{
	__u32 s = (__u32)sum;
	s = (s & 0xffff) + (s >> 16);
	s = (s & 0xffff) + (s >> 16);
	return (__u16)~s;
}

/* TCP to a VIP without backends: the packet becomes a RST from the VIP (a
 * refused connection), trimmed to 40 bytes of IPv4 and TCP. RSTs are
 * dropped, never answered. */
static __always_inline int vip_answer_rst(struct __sk_buff *skb, const struct vip_pkt *p,
					  const struct ethhdr *eth)
{
	struct vip_tcp in;

	if ((p->tcp_flags & TCP_FLAG_RST) || p->ihl != sizeof(struct iphdr) ||
	    p->frag != VIP_FRAG_NONE || skb->gso_size) {
		vip_count(VIP_DROP_NO_BACKEND);
		return TC_ACT_SHOT;
	}
	if (bpf_skb_load_bytes(skb, p->l4_off, &in, sizeof(in))) {
		vip_count(VIP_DROP_MALFORMED);
		return TC_ACT_SHOT;
	}
	__u32 tcp_len = (in.doff >> 4) * 4;
	if (tcp_len < sizeof(in) || p->tot_len < p->ihl + tcp_len) {
		vip_count(VIP_DROP_MALFORMED);
		return TC_ACT_SHOT;
	}
	__u32 payload = p->tot_len - p->ihl - tcp_len;

	struct vip_tcp_sum sum = {
		.saddr = p->daddr,
		.daddr = p->saddr,
		.proto = IPPROTO_TCP,
		.len = bpf_htons(sizeof(struct vip_tcp)),
		.tcp = {
			.sport = in.dport,
			.dport = in.sport,
			.doff = (sizeof(struct vip_tcp) / 4) << 4,
		},
	};
	if (p->tcp_flags & TCP_FLAG_ACK) {
		sum.tcp.seq = in.ack_seq;
		sum.tcp.flags = TCP_FLAG_RST;
	} else {
		__u32 ack = bpf_ntohl(in.seq) + payload + !!(p->tcp_flags & TCP_FLAG_SYN) +
			    !!(p->tcp_flags & TCP_FLAG_FIN);
		sum.tcp.ack_seq = bpf_htonl(ack);
		sum.tcp.flags = TCP_FLAG_RST | TCP_FLAG_ACK;
	}
	sum.tcp.check = vip_fold(bpf_csum_diff(NULL, 0, (__be32 *)&sum, sizeof(sum), 0));

	struct iphdr ip = {
		.version = 4,
		.ihl = 5,
		.tot_len = bpf_htons(sizeof(struct iphdr) + sizeof(struct vip_tcp)),
		.frag_off = BE_IP_DF,
		.ttl = 64,
		.protocol = IPPROTO_TCP,
		.saddr = p->daddr,
		.daddr = p->saddr,
	};
	ip.check = vip_fold(bpf_csum_diff(NULL, 0, (__be32 *)&ip, sizeof(ip), 0));

	struct ethhdr out;
	__builtin_memcpy(out.h_dest, eth->h_source, ETH_ALEN);
	__builtin_memcpy(out.h_source, vip_mac, ETH_ALEN);
	out.h_proto = BE_ETH_P_IP;

	if (bpf_skb_change_tail(skb, sizeof(out) + sizeof(ip) + sizeof(struct vip_tcp), 0) ||
	    bpf_skb_store_bytes(skb, 0, &out, sizeof(out), 0) ||
	    bpf_skb_store_bytes(skb, IP_OFF, &ip, sizeof(ip), 0) ||
	    bpf_skb_store_bytes(skb, IP_OFF + sizeof(ip), &sum.tcp, sizeof(sum.tcp), 0)) {
		vip_count(VIP_DROP_REWRITE);
		return TC_ACT_SHOT;
	}
	vip_count(VIP_ANSWER_RST);
	return bpf_redirect(skb->ifindex, 0);
}

#endif
