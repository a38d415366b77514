/* SPDX-License-Identifier: (GPL-2.0 OR BSD-2-Clause) */
/* Maps of the service-VIP balancer. Structs shared with userspace have
 * explicit padding and no bitfields; dataplane/src/lb/vip/maps.rs mirrors
 * them field by field. Addresses and ports are in network byte order. */
#ifndef MESH_VIP_MAPS_H
#define MESH_VIP_MAPS_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "vip_consts.h"

/* A VIP on one network. */
struct vip_key {
	__u32 net;     /* the network's ID (its marker socket's mark) */
	__be32 addr;   /* the VIP */
};

/* What a VIP maps to. */
struct vip_service {
	__u32 ring;    /* its Maglev table: VIP_RING[ring * VIP_RING_SIZE + slot] */
	__u32 flags;   /* reserved, 0 */
};

/* One backend of one VIP. */
struct vip_backend {
	__be32 ip;     /* the task's address on the VIP's network */
	__u8 mac[6];   /* the task's MAC there */
	__u8 state;    /* VIP_BACKEND_ACTIVE or VIP_BACKEND_DRAINING */
	__u8 pad;
};

/* A flow as one direction of it looks on the wire. */
struct vip_flow {
	__u32 net;
	__be32 saddr;
	__be32 daddr;
	__be16 sport;
	__be16 dport;
	__u8 proto;
	__u8 pad[3];
};

/* The backend a client's flow to a VIP goes to. */
struct vip_fwd {
	__u32 backend; /* key of VIP_BACKENDS; 0 never names one */
	__u32 pad;
};

/* What a backend's reply gets its source rewritten to. */
struct vip_rev {
	__be32 vip;
	__u32 flags;   /* VIP_REV_* */
};

/* VIP_SERVICES[{net, vip}]: every VIP of this host's networks. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, VIP_MAX_SERVICES);
	__type(key, struct vip_key);
	__type(value, struct vip_service);
} VIP_SERVICES SEC(".maps");

/* VIP_RING[ring * VIP_RING_SIZE + slot]: backend IDs of each VIP's Maglev
 * table over its active backends; 0 everywhere when it has none. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, VIP_RING_ENTRIES);
	__type(key, __u32);
	__type(value, __u32);
} VIP_RING SEC(".maps");

/* VIP_BACKENDS[id]: active and draining backends. IDs are never reused by a
 * loader, so a connection entry naming a removed backend finds nothing. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, VIP_MAX_BACKENDS);
	__type(key, __u32);
	__type(value, struct vip_backend);
} VIP_BACKENDS SEC(".maps");

/* VIP_CONNS[client → VIP flow]: the backend it was given. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, VIP_MAX_FLOWS);
	__type(key, struct vip_flow);
	__type(value, struct vip_fwd);
} VIP_CONNS SEC(".maps");

/* VIP_REVERSE[reply flow, as the backend sends it]: the VIP to put back as
 * its source. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, VIP_MAX_FLOWS);
	__type(key, struct vip_flow);
	__type(value, struct vip_rev);
} VIP_REVERSE SEC(".maps");

/* VIP_COUNTERS[reason]: packets per outcome, per CPU. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, VIP_REASONS);
	__type(key, __u32);
	__type(value, __u64);
} VIP_COUNTERS SEC(".maps");

static __always_inline void vip_count(__u32 reason)
{
	__u64 *packets = bpf_map_lookup_elem(&VIP_COUNTERS, &reason);
	/* Per-CPU slot: no other CPU writes it, a plain add is exact. */
	if (packets)
		*packets += 1;
}

#endif
