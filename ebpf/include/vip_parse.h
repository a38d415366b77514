/* SPDX-License-Identifier: (GPL-2.0 OR BSD-2-Clause) */
/* Header parsing for the VIP balancer at TC. Headers are copied to the stack
 * with bpf_skb_load_bytes, which checks every read against the skb (linear
 * part or not), so frames decapsulated by vxlan0 parse like local ones. */
#ifndef MESH_VIP_PARSE_H
#define MESH_VIP_PARSE_H

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "vip_consts.h"

/* Fragment position of an IPv4 packet. */
#define VIP_FRAG_NONE 0
#define VIP_FRAG_FIRST 1 /* offset 0, more fragments: the L4 header is here */
#define VIP_FRAG_LATER 2 /* offset > 0: no L4 header */

/* An IPv4 packet, parsed. */
struct vip_pkt {
	__u32 l4_off;      /* L4 header, from the frame's start */
	__be32 saddr;
	__be32 daddr;
	__be16 sport;      /* TCP/UDP ports; 0 for other protocols */
	__be16 dport;
	__u16 tot_len;     /* IPv4 total length, host order */
	__u8 proto;
	__u8 ihl;          /* IPv4 header length in bytes */
	__u8 frag;         /* VIP_FRAG_* */
	__u8 tcp_flags;    /* byte 13 of the TCP header */
	__u8 icmp_type;
	__u8 pad;
};

#define TCP_FLAG_FIN 0x01
#define TCP_FLAG_SYN 0x02
#define TCP_FLAG_RST 0x04
#define TCP_FLAG_ACK 0x10

/* The EtherType of the frame, or 0 when it is shorter than an Ethernet
 * header. */
static __always_inline __be16 vip_ethertype(struct __sk_buff *skb, struct ethhdr *eth)
{
	if (bpf_skb_load_bytes(skb, 0, eth, sizeof(*eth)))
		return 0;
	return eth->h_proto;
}

/* Parses the IPv4 header and, for the first (or only) fragment, the TCP/UDP
 * ports or the ICMP type. Returns 0, or -1 when the frame is shorter than
 * its headers claim. */
static __always_inline int vip_parse_ipv4(struct __sk_buff *skb, struct vip_pkt *p)
{
	struct iphdr ip;

	if (bpf_skb_load_bytes(skb, IP_OFF, &ip, sizeof(ip)))
		return -1;
	if (ip.version != 4 || ip.ihl < 5)
		return -1;
	p->ihl = ip.ihl * 4;
	p->l4_off = IP_OFF + p->ihl;
	p->saddr = ip.saddr;
	p->daddr = ip.daddr;
	p->proto = ip.protocol;
	p->tot_len = bpf_ntohs(ip.tot_len);
	if (p->tot_len < p->ihl)
		return -1;
	p->sport = 0;
	p->dport = 0;
	p->tcp_flags = 0;
	p->icmp_type = 0;
	p->pad = 0;
	if (ip.frag_off & BE_IP_OFFSET) {
		p->frag = VIP_FRAG_LATER;
		return 0;
	}
	p->frag = (ip.frag_off & BE_IP_MF) ? VIP_FRAG_FIRST : VIP_FRAG_NONE;

	switch (p->proto) {
	case IPPROTO_TCP: {
		__u8 hdr[14]; /* ports, seq, ack, offset, flags */
		if (bpf_skb_load_bytes(skb, p->l4_off, hdr, sizeof(hdr)))
			return -1;
		__builtin_memcpy(&p->sport, &hdr[0], 2);
		__builtin_memcpy(&p->dport, &hdr[2], 2);
		p->tcp_flags = hdr[13];
		break;
	}
	case IPPROTO_UDP: {
		__be16 ports[2];
		if (bpf_skb_load_bytes(skb, p->l4_off, ports, sizeof(ports)))
			return -1;
		p->sport = ports[0];
		p->dport = ports[1];
		break;
	}
	case IPPROTO_ICMP:
		if (bpf_skb_load_bytes(skb, p->l4_off, &p->icmp_type, 1))
			return -1;
		break;
	default:
		break;
	}
	return 0;
}

#endif
