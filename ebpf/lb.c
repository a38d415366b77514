/* SPDX-License-Identifier: (GPL-2.0 OR BSD-2-Clause) */
/* lb: the ingress routing mesh. Published ports answer on every host's
 * underlay address; a flow is pinned to a backend (connection map, else the
 * service's Maglev table), DNATed, and delivered into the backend's network
 * namespace through its leg (mg-<network> / gw0), or encapsulated in VXLAN
 * (VNI 0xFE0000 | published port) to the backend's host, which strips it and
 * delivers locally. Replies leave the backend's host directly (DSR) with the
 * ingress host's address put back by lb_reply on the leg.
 *
 * lb_ingress runs at TC (tcx ingress) or XDP on the underlay interface, the
 * same code for both: the headers under include/lb_*.h take the hook as a
 * constant and only the final actions differ. Everything that is not ours
 * (ARP, ICMP echo, SSH, Raft, gossip, the overlay's own VXLAN) passes to the
 * kernel untouched.
 *
 * TC programs are in SEC("classifier"), the section name aya 0.14 knows for
 * sched_cls (libbpf's "tc").
 *
 * Fragments to a published port are counted and dropped, as Katran does: a
 * later fragment has no ports to balance by. Later fragments themselves pass
 * (they carry no ports; the kernel's reassembly of a datagram whose first
 * fragment was dropped times out).
 *
 * Two answers come from the ingress host itself (include/lb_answer.h): ICMP
 * "fragmentation needed" for a DF packet to a remote backend that would not
 * fit the underlay once encapsulated, and a TCP RST for a published port
 * whose service has no backend. */
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "lb_consts.h"
#include "lb_drop_reasons.h"
#include "lb_maps.h"
#include "lb_ctx.h"
#include "lb_parse.h"
#include "lb_lookup.h"
#include "lb_nat.h"
#include "lb_encap.h"
#include "lb_icmp.h"
#include "lb_answer.h"

/* Sends a DNATed packet (or a rewritten ICMP error) to its backend, counting
 * `outcome` when it leaves. */
static __always_inline int lb_forward(void *ctx, const bool xdp, const struct lb_config *cfg,
				      const struct lb_backend *be, __u32 hash,
				      __be16 published_port, __u32 ip_len, __u32 local_outcome,
				      __u32 remote_outcome)
{
	int rc;
	if (be->flags & LB_BACKEND_LOCAL) {
		rc = lb_deliver_local(ctx, xdp, be);
		if (rc == (xdp ? XDP_REDIRECT : TC_ACT_REDIRECT))
			LB_FORWARDED(local_outcome);
		return rc;
	}
	rc = lb_encap_remote(ctx, xdp, cfg, be, hash, published_port, ip_len);
	if (rc == (xdp ? XDP_TX : TC_ACT_REDIRECT) || (xdp && rc == XDP_REDIRECT))
		LB_FORWARDED(remote_outcome);
	return rc;
}

/* Mesh VXLAN to this host: strip it and deliver to the local backend the
 * inner destination names, remembering where replies must come from. */
static __always_inline int lb_ingress_vxlan(void *ctx, const bool xdp, const struct lb_pkt *p)
{
	void *data = lb_data(ctx, xdp);
	void *end = lb_data_end(ctx, xdp);
	struct lb_vxlanhdr *vx = data + (p->l4_off & 0xff) + sizeof(struct udphdr);
	if ((void *)(vx + 1) > end)
		return LB_PASS(xdp); /* not a VXLAN frame of ours: the kernel decides */
	if (!(vx->flags & bpf_htonl(LB_VXLAN_FLAG_I << 24)))
		return LB_PASS(xdp);
	__u32 vni = bpf_ntohl(vx->vni) >> 8;
	if ((vni & LB_MESH_VNI_MASK) != LB_MESH_VNI_BASE)
		return LB_PASS(xdp); /* an overlay network's VNI */
	if (lb_is_fragment(p))
		return LB_DROP(xdp, LB_DROP_FRAGMENT);
	struct ethhdr *inner_eth = (void *)(vx + 1);
	if ((void *)(inner_eth + 1) > end)
		return LB_DROP(xdp, LB_DROP_TRUNCATED_L4);
	if (inner_eth->h_proto != LB_BE_ETH_P_IP)
		return LB_DROP(xdp, LB_DROP_BAD_INNER);
	/* Checked before the decap too: TC's room adjustment refuses to leave
	 * less than an IPv4 header, which would count as a failed adjustment. */
	if ((void *)(inner_eth + 1) + sizeof(struct iphdr) > end)
		return LB_DROP(xdp, LB_DROP_TRUNCATED_IP);
	__be32 ingress_ip = p->saddr;
	__be16 published_port = bpf_htons(vni & 0xffff);

	if (lb_decap(ctx, xdp, p->l4_off - p->l3_off))
		return LB_DROP(xdp, LB_DROP_REDIRECT_FAIL);
	struct lb_pkt in = {};
	int rc = lb_parse_ipv4(ctx, xdp, sizeof(struct ethhdr), &in);
	if (rc >= 0)
		return rc;
	__u32 *id = bpf_map_lookup_elem(&LB_LOCAL, &in.daddr);
	if (!id)
		return LB_DROP(xdp, LB_DROP_DECAP_NO_BACKEND);
	struct lb_backend *found = bpf_map_lookup_elem(&LB_BACKENDS, id);
	if (!found)
		return LB_DROP(xdp, LB_DROP_BACKEND_MISSING);
	struct lb_backend be = *found;
	if (in.proto == IPPROTO_TCP || in.proto == IPPROTO_UDP) {
		if (lb_is_fragment(&in))
			return LB_DROP(xdp, LB_DROP_FRAGMENT);
		rc = lb_parse_ports(ctx, xdp, &in);
		if (rc >= 0)
			return rc;
		lb_record_revnat(in.daddr, in.dport, in.saddr, in.sport, in.proto, ingress_ip,
				 published_port);
	} else if (in.proto != IPPROTO_ICMP) {
		return LB_DROP(xdp, LB_DROP_BAD_INNER);
	}
	rc = lb_deliver_local(ctx, xdp, &be);
	if (rc == (xdp ? XDP_REDIRECT : TC_ACT_REDIRECT))
		LB_FORWARDED(LB_FWD_DECAP);
	return rc;
}

/* An ICMP error to this host about a reply one of our backends sent by DSR:
 * rewrite it as the flow's DNAT would and send it after the flow. */
static __always_inline int lb_ingress_icmp(void *ctx, const bool xdp, const struct lb_config *cfg,
					   const struct lb_pkt *p)
{
	if (lb_is_fragment(p))
		return LB_PASS(xdp);
	struct lb_icmp_inner in = {};
	int rc = lb_parse_icmp_error(ctx, xdp, p, &in);
	if (rc == LB_NOT_OURS)
		return LB_PASS(xdp);
	if (rc >= 0)
		return rc;
	if (in.saddr != cfg->host_ip)
		return LB_PASS(xdp);
	struct lb_service *found_svc = lb_service(in.proto, in.sport);
	if (!found_svc)
		return LB_PASS(xdp);
	__be16 target_port = found_svc->target_port;
	struct lb_flow_key key = {
		.client_ip = in.daddr,
		.host_ip = cfg->host_ip,
		.client_port = in.dport,
		.published_port = in.sport,
		.proto = in.proto,
	};
	struct lb_flow *flow = bpf_map_lookup_elem(&LB_FLOWS, &key);
	if (!flow)
		return LB_PASS(xdp); /* no such flow here: the kernel ignores it */
	__u32 id = flow->backend_id;
	struct lb_backend *found = bpf_map_lookup_elem(&LB_BACKENDS, &id);
	if (!found)
		return LB_PASS(xdp);
	struct lb_backend be = *found;
	if (lb_icmp_rewrite(ctx, xdp, p, &in, true, true, be.ip, target_port))
		return LB_DROP(xdp, LB_DROP_CSUM_FAIL);
	__u32 hash = lb_flow_hash(in.daddr, in.dport, in.sport, in.proto);
	return lb_forward(ctx, xdp, cfg, &be, hash, in.sport, p->tot_len, LB_FWD_ICMP, LB_FWD_ICMP);
}

static __always_inline int lb_ingress(void *ctx, const bool xdp)
{
	lb_pull(ctx, xdp);
	struct lb_config *cfg = lb_config();
	if (!cfg)
		return LB_PASS(xdp); /* not configured yet: stay out of the way */
	struct lb_pkt p = {};
	int rc = lb_parse_frame(ctx, xdp, &p);
	if (rc >= 0)
		return rc;
	if (p.daddr != cfg->host_ip)
		return LB_PASS(xdp);
	if (p.proto == IPPROTO_ICMP)
		return lb_ingress_icmp(ctx, xdp, cfg, &p);
	if (p.proto != IPPROTO_TCP && p.proto != IPPROTO_UDP)
		return LB_PASS(xdp);
	if (lb_is_later_fragment(&p))
		return LB_PASS(xdp);
	rc = lb_parse_ports(ctx, xdp, &p);
	if (rc >= 0)
		return rc;
	if (p.proto == IPPROTO_UDP && p.dport == cfg->data_path_port)
		return lb_ingress_vxlan(ctx, xdp, &p);

	struct lb_service *found_svc = lb_service(p.proto, p.dport);
	if (!found_svc)
		return LB_PASS(xdp);
	struct lb_service svc = *found_svc;
	if (lb_is_fragment(&p))
		return LB_DROP(xdp, LB_DROP_FRAGMENT);
	struct lb_backend be;
	__u32 reason = LB_DROP_NO_BACKEND;
	if (lb_pick(p.saddr, p.daddr, p.sport, p.dport, p.proto, p.opens, &svc, &be, &reason)) {
		/* No backend: TCP clients get a RST, as from a closed port. */
		if (reason == LB_DROP_NO_BACKEND) {
			rc = lb_answer_rst(ctx, xdp, cfg, &p);
			if (rc >= 0)
				return rc;
		}
		return LB_DROP(xdp, reason);
	}
	if (!(be.flags & LB_BACKEND_LOCAL) && p.tot_len + LB_VXLAN_OVERHEAD > cfg->mtu) {
		/* Checked before any rewrite. GSO skbs at TC are resegmented
		 * after encapsulation and pass on; see lb_encap_remote. With DF
		 * the client learns the mesh's MTU; without, the packet is lost
		 * as on any link it does not fit. */
		bool gso = false;
		if (!xdp)
			gso = ((struct __sk_buff *)ctx)->gso_segs > 1;
		if (!gso) {
			if (p.frag_off & LB_BE_IP_DF)
				return lb_answer_frag_needed(ctx, xdp, cfg, &p);
			return LB_DROP(xdp, LB_DROP_ENCAP_TOO_BIG);
		}
	}
	if (lb_rewrite(ctx, xdp, &p, true, be.ip, svc.target_port))
		return LB_DROP(xdp, LB_DROP_CSUM_FAIL);
	if (be.flags & LB_BACKEND_LOCAL)
		lb_record_revnat(be.ip, svc.target_port, p.saddr, p.sport, p.proto, cfg->host_ip,
				 p.dport);
	__u32 hash = lb_flow_hash(p.saddr, p.sport, p.dport, p.proto);
	return lb_forward(ctx, xdp, cfg, &be, hash, p.dport, p.tot_len, LB_FWD_LOCAL,
			  LB_FWD_REMOTE);
}

SEC("classifier")
int lb_ingress_tc(struct __sk_buff *skb)
{
	return lb_ingress(skb, false);
}

SEC("xdp")
int lb_ingress_xdp(struct xdp_md *ctx)
{
	return lb_ingress(ctx, true);
}

/* A task's packet arriving on a leg (TC ingress of mg-<network>): give it the
 * address and port the client connected to and send it out of the underlay
 * directly (DSR). Anything without a reverse-NAT entry is dropped: tasks have
 * no other way out. */
SEC("classifier")
int lb_reply(struct __sk_buff *skb)
{
	const bool xdp = false;
	lb_pull(skb, xdp);
	struct lb_config *cfg = lb_config();
	if (!cfg)
		return LB_DROP(xdp, LB_DROP_NO_CONFIG);
	__u32 ifindex = skb->ingress_ifindex;
	if (!bpf_map_lookup_elem(&LB_LEGS, &ifindex))
		return LB_DROP(xdp, LB_DROP_UNKNOWN_LEG);
	void *data = lb_data(skb, xdp);
	void *end = lb_data_end(skb, xdp);
	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > end)
		return LB_DROP(xdp, LB_DROP_TRUNCATED_ETH);
	/* IPv6 link-local housekeeping (ND, MLD) of gw0's stack: the host's own business on its
	 * own interface, not a task's reply to a client. */
	if (eth->h_proto != LB_BE_ETH_P_IP)
		return TC_ACT_OK;
	struct lb_pkt p = {};
	int rc = lb_parse_ipv4(skb, xdp, sizeof(struct ethhdr), &p);
	if (rc >= 0)
		return rc;
	if (lb_is_fragment(&p))
		return LB_DROP(xdp, LB_DROP_FRAGMENT);

	if (p.proto == IPPROTO_TCP || p.proto == IPPROTO_UDP) {
		rc = lb_parse_ports(skb, xdp, &p);
		if (rc >= 0)
			return rc;
		struct lb_revnat_key key = {
			.task_ip = p.saddr,
			.client_ip = p.daddr,
			.task_port = p.sport,
			.client_port = p.dport,
			.proto = p.proto,
		};
		struct lb_revnat *found = bpf_map_lookup_elem(&LB_REVNAT, &key);
		if (!found)
			return LB_DROP(xdp, LB_DROP_REPLY_NO_NAT);
		struct lb_revnat rn = *found;
		if (lb_rewrite(skb, xdp, &p, false, rn.ingress_ip, rn.published_port))
			return LB_DROP(xdp, LB_DROP_CSUM_FAIL);
		rc = bpf_redirect_neigh(cfg->underlay_ifindex, NULL, 0, 0);
		if (rc != TC_ACT_REDIRECT)
			return LB_DROP(xdp, LB_DROP_REDIRECT_FAIL);
		LB_FORWARDED(LB_FWD_REPLY);
		return rc;
	}
	if (p.proto != IPPROTO_ICMP)
		return LB_DROP(xdp, LB_DROP_REPLY_NO_NAT);
	struct lb_icmp_inner in = {};
	rc = lb_parse_icmp_error(skb, xdp, &p, &in);
	if (rc == LB_NOT_OURS)
		return LB_DROP(xdp, LB_DROP_REPLY_NO_NAT);
	if (rc >= 0)
		return rc;
	struct lb_revnat_key key = {
		.task_ip = in.daddr,
		.client_ip = in.saddr,
		.task_port = in.dport,
		.client_port = in.sport,
		.proto = in.proto,
	};
	struct lb_revnat *found = bpf_map_lookup_elem(&LB_REVNAT, &key);
	if (!found)
		return LB_DROP(xdp, LB_DROP_REPLY_NO_NAT);
	struct lb_revnat rn = *found;
	if (lb_icmp_rewrite(skb, xdp, &p, &in, false, false, rn.ingress_ip, rn.published_port))
		return LB_DROP(xdp, LB_DROP_CSUM_FAIL);
	rc = bpf_redirect_neigh(cfg->underlay_ifindex, NULL, 0, 0);
	if (rc != TC_ACT_REDIRECT)
		return LB_DROP(xdp, LB_DROP_REDIRECT_FAIL);
	LB_FORWARDED(LB_FWD_REPLY_ICMP);
	return rc;
}

/* XDP_PASS for the peers of interfaces the XDP path transmits on: a veth
 * delivers XDP_TX and XDP_REDIRECT frames only when its peer has an XDP
 * program (gw0 of every leg, in XDP mode). */
SEC("xdp")
int lb_peer_pass(struct xdp_md *ctx)
{
	return XDP_PASS;
}

char _license[] SEC("license") = "Dual BSD/GPL";
