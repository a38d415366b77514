/* SPDX-License-Identifier: (GPL-2.0 OR BSD-2-Clause) */
/* Picking a VIP flow's backend: the connection map first, then the VIP's
 * Maglev table (computed in userspace over its active backends). */
#ifndef MESH_VIP_LB_H
#define MESH_VIP_LB_H

#include <linux/bpf.h>
#include <linux/in.h>
#include <bpf/bpf_helpers.h>
#include "vip_consts.h"
#include "vip_maps.h"
#include "vip_parse.h"

/* Mixes a flow's 5-tuple (murmur3's finalizer on each word). Any hash will
 * do: only this host hashes the flows of its own tasks, and the connection
 * map pins a flow once picked. */
static __always_inline __u32 vip_mix(__u32 h, __u32 k)
{
	k *= 0xcc9e2d51;
	k = (k << 15) | (k >> 17);
	k *= 0x1b873593;
	h ^= k;
	h = (h << 13) | (h >> 19);
	return h * 5 + 0xe6546b64;
}

static __always_inline __u32 vip_flow_hash(const struct vip_flow *f)
{
	__u32 h = 0x6d657368; /* "mesh" */
	h = vip_mix(h, f->saddr);
	h = vip_mix(h, f->daddr);
	h = vip_mix(h, ((__u32)f->sport << 16) | f->dport);
	h = vip_mix(h, f->proto);
	h ^= h >> 16;
	h *= 0x85ebca6b;
	h ^= h >> 13;
	h *= 0xc2b2ae35;
	h ^= h >> 16;
	return h;
}

/* The backend of an established flow, or NULL. A new TCP connection (a SYN
 * without ACK) that reuses the 5-tuple of a flow pinned to a draining
 * backend is not established: it gets a new pick. */
static __always_inline struct vip_backend *vip_established(const struct vip_flow *f,
							   const struct vip_pkt *p, __u32 *id)
{
	struct vip_fwd *fwd = bpf_map_lookup_elem(&VIP_CONNS, f);
	if (!fwd)
		return NULL;
	struct vip_backend *be = bpf_map_lookup_elem(&VIP_BACKENDS, &fwd->backend);
	if (!be)
		return NULL;
	if (be->state != VIP_BACKEND_ACTIVE && p->proto == IPPROTO_TCP &&
	    (p->tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK)) == TCP_FLAG_SYN)
		return NULL;
	*id = fwd->backend;
	return be;
}

/* A new flow's backend from the VIP's Maglev table, or NULL when the VIP
 * has no active backend (every slot 0) or the maps disagree. */
static __always_inline struct vip_backend *vip_pick(const struct vip_flow *f,
						    const struct vip_service *svc, __u32 *id)
{
	if (svc->ring >= VIP_MAX_SERVICES)
		return NULL;
	__u32 index = svc->ring * VIP_RING_SIZE + vip_flow_hash(f) % VIP_RING_SIZE;
	__u32 *slot = bpf_map_lookup_elem(&VIP_RING, &index);
	if (!slot || *slot == 0)
		return NULL;
	*id = *slot;
	return bpf_map_lookup_elem(&VIP_BACKENDS, slot);
}

/* Remembers a new flow: forward (client -> VIP) and reverse (backend reply,
 * as sent). Returns 0, or -1 when a map is full beyond LRU eviction. */
static __always_inline int vip_remember(const struct vip_flow *f, __u32 id,
					const struct vip_backend *be)
{
	struct vip_fwd fwd = {.backend = id};
	struct vip_rev rev = {.vip = f->daddr};
	struct vip_flow reply = {
		.net = f->net,
		.saddr = be->ip,
		.daddr = f->saddr,
		.sport = f->dport,
		.dport = f->sport,
		.proto = f->proto,
	};
	if (be->ip == f->saddr) {
		/* Hairpin: the task answers the VIP, seen at its own ingress. */
		reply.daddr = f->daddr;
		rev.flags = VIP_REV_HAIRPIN;
	}
	if (bpf_map_update_elem(&VIP_CONNS, f, &fwd, BPF_ANY))
		return -1;
	return bpf_map_update_elem(&VIP_REVERSE, &reply, &rev, BPF_ANY);
}

#endif
