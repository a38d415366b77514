/* SPDX-License-Identifier: (GPL-2.0 OR BSD-2-Clause) */
/* vip: service VIPs between tasks, balanced at TC on each task's veth
 * (`ve-<task>`, in its overlay network's namespace).
 *
 * vip_ingress (frames from the task):
 *   ARP request for a VIP      -> answered with the VIP MAC, back into the task
 *   ICMP echo to a VIP         -> answered by the VIP
 *   TCP/UDP to a VIP           -> connection map, else Maglev pick; DNAT to the
 *                                 backend's address and MAC; the bridge then
 *                                 forwards by MAC (local veth or vxlan0)
 *   ... picking the task itself -> hairpin: back into the task from the VIP
 *   ... without backends       -> TCP RST from the VIP; UDP dropped
 * vip_egress (frames to the task):
 *   a backend's reply          -> source back to the VIP (and VIP MAC)
 *   ICMP error about a VIP flow -> quoted destination and source back to the VIP
 *
 * The network a frame belongs to is named by a marker socket in its
 * namespace (one namespace per overlay network; see VIP_MARKER_PORT), so one
 * loaded object serves every network. bpf_get_netns_cookie will not do: at
 * TC it names the namespace of the packet's socket, if any, not of the
 * device. */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include "vip_consts.h"
#include "vip_maps.h"
#include "vip_parse.h"
#include "vip_nat.h"
#include "vip_lb.h"
#include "vip_answer.h"
#include "vip_icmp.h"

/* The loader's ID of the frame's network: the mark of the marker socket in
 * the namespace of the frame's device (see VIP_MARKER_PORT). -1 (counted)
 * when there is none: not a namespace the loader set up. */
static __always_inline int vip_network(struct __sk_buff *skb, __u32 *net)
{
	struct bpf_sock_tuple tuple = {
		.ipv4 = {
			.saddr = BE_LOOPBACK,
			.daddr = BE_LOOPBACK,
			.sport = BE_VIP_MARKER_PORT,
			.dport = BE_VIP_MARKER_PORT,
		},
	};
	struct bpf_sock *sk =
		bpf_sk_lookup_udp(skb, &tuple, sizeof(tuple.ipv4), BPF_F_CURRENT_NETNS, 0);
	if (!sk) {
		vip_count(VIP_PASS_UNKNOWN_NET);
		return -1;
	}
	*net = sk->mark;
	bpf_sk_release(sk);
	if (*net == 0) {
		vip_count(VIP_PASS_UNKNOWN_NET);
		return -1;
	}
	return 0;
}

/* TCP or UDP to a VIP. */
static __always_inline int vip_forward(struct __sk_buff *skb, const struct vip_pkt *p,
				       const struct ethhdr *eth, const struct vip_service *svc,
				       __u32 net)
{
	struct vip_flow flow = {
		.net = net,
		.saddr = p->saddr,
		.daddr = p->daddr,
		.sport = p->sport,
		.dport = p->dport,
		.proto = p->proto,
	};
	struct vip_backend *be;
	__u32 id = 0;
	__u32 outcome = VIP_FWD_ESTABLISHED;

	if (p->frag == VIP_FRAG_LATER) {
		vip_count(VIP_DROP_FRAGMENT);
		return TC_ACT_SHOT;
	}
	be = vip_established(&flow, p, &id);
	if (!be) {
		/* The task answering a hairpinned flow, to the VIP. */
		struct vip_rev *rev = bpf_map_lookup_elem(&VIP_REVERSE, &flow);
		if (rev && (rev->flags & VIP_REV_HAIRPIN)) {
			if (vip_hairpin(skb, p, eth, p->daddr))
				goto fail;
			vip_count(VIP_FWD_HAIRPIN);
			return bpf_redirect(skb->ifindex, 0);
		}
		outcome = VIP_FWD_NEW;
		be = vip_pick(&flow, svc, &id);
		if (!be) {
			if (p->proto == IPPROTO_TCP)
				return vip_answer_rst(skb, p, eth);
			vip_count(VIP_DROP_NO_BACKEND);
			return TC_ACT_SHOT;
		}
		if (vip_remember(&flow, id, be))
			goto fail;
	}
	if (be->ip == p->saddr) {
		if (vip_hairpin(skb, p, eth, p->daddr))
			goto fail;
		vip_count(VIP_FWD_HAIRPIN);
		return bpf_redirect(skb->ifindex, 0);
	}
	if (vip_dnat(skb, p, be->ip, be->mac))
		goto fail;
	vip_count(outcome);
	return TC_ACT_OK;
fail:
	vip_count(VIP_DROP_REWRITE);
	return TC_ACT_SHOT;
}

SEC("classifier")
int vip_ingress(struct __sk_buff *skb)
{
	struct ethhdr eth;
	struct vip_pkt p;
	__u32 net;

	__be16 proto = vip_ethertype(skb, &eth);
	if (proto != BE_ETH_P_IP && proto != BE_ETH_P_ARP)
		return TC_ACT_OK;
	if (vip_network(skb, &net))
		return TC_ACT_OK;
	if (proto == BE_ETH_P_ARP) {
		int verdict = vip_answer_arp(skb, net);
		return verdict == VIP_CONTINUE ? TC_ACT_OK : verdict;
	}
	if (vip_parse_ipv4(skb, &p)) {
		vip_count(VIP_DROP_MALFORMED);
		return TC_ACT_SHOT;
	}
	struct vip_key key = {.net = net, .addr = p.daddr};
	struct vip_service *svc = bpf_map_lookup_elem(&VIP_SERVICES, &key);
	if (!svc)
		return TC_ACT_OK;

	switch (p.proto) {
	case IPPROTO_TCP:
	case IPPROTO_UDP:
		return vip_forward(skb, &p, &eth, svc, net);
	case IPPROTO_ICMP:
		if (p.icmp_type == ICMP_ECHO_T && p.frag == VIP_FRAG_NONE)
			return vip_answer_echo(skb, &p, &eth);
		/* fallthrough */
	default:
		vip_count(VIP_DROP_UNSUPPORTED);
		return TC_ACT_SHOT;
	}
}

SEC("classifier")
int vip_egress(struct __sk_buff *skb)
{
	struct ethhdr eth;
	struct vip_pkt p;
	__u32 net;

	if (vip_ethertype(skb, &eth) != BE_ETH_P_IP)
		return TC_ACT_OK;
	/* Not ours to judge: the task's kernel drops what does not parse. */
	if (vip_parse_ipv4(skb, &p))
		return TC_ACT_OK;
	if (p.proto == IPPROTO_ICMP) {
		if (vip_network(skb, &net))
			return TC_ACT_OK;
		int verdict = vip_reply_icmp_error(skb, &p, net);
		return verdict == VIP_CONTINUE ? TC_ACT_OK : verdict;
	}
	if ((p.proto != IPPROTO_TCP && p.proto != IPPROTO_UDP) || p.frag == VIP_FRAG_LATER)
		return TC_ACT_OK;
	if (vip_network(skb, &net))
		return TC_ACT_OK;

	struct vip_flow reply = {
		.net = net,
		.saddr = p.saddr,
		.daddr = p.daddr,
		.sport = p.sport,
		.dport = p.dport,
		.proto = p.proto,
	};
	struct vip_rev *rev = bpf_map_lookup_elem(&VIP_REVERSE, &reply);
	if (!rev || (rev->flags & VIP_REV_HAIRPIN))
		return TC_ACT_OK;
	if (vip_snat(skb, &p, rev->vip)) {
		vip_count(VIP_DROP_REWRITE);
		return TC_ACT_SHOT;
	}
	vip_count(VIP_REPLY_NAT);
	return TC_ACT_OK;
}

char _license[] SEC("license") = "Dual BSD/GPL";
