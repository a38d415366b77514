/* SPDX-License-Identifier: (GPL-2.0 OR BSD-2-Clause) */
/* Maps of the ingress routing mesh. Userspace (dataplane/src/lb/bpf) writes
 * every map but the flows, reverse-NAT entries and counters. */
#ifndef MESH_LB_MAPS_H
#define MESH_LB_MAPS_H

#include <stdbool.h>
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include "lb_consts.h"
#include "lb_drop_reasons.h"
#include "lb_structs.h"

/* LB_CONFIG[0]: this host's settings. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct lb_config);
} LB_CONFIG SEC(".maps");

/* LB_SERVICES[{proto, port}]: published ports → service and target port. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, LB_MAX_PORTS);
	__type(key, struct lb_service_key);
	__type(value, struct lb_service);
} LB_SERVICES SEC(".maps");

/* LB_MAGLEV[index * LB_MAGLEV_SIZE + slot]: backend id (0 = none) of every
 * service's Maglev table, computed in userspace over its active backends. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, LB_MAGLEV_ENTRIES);
	__type(key, __u32);
	__type(value, __u32);
} LB_MAGLEV SEC(".maps");

/* LB_BACKENDS[id]: every backend, active or draining. A flow whose backend
 * is gone from here is picked again. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, LB_MAX_BACKENDS);
	__type(key, __u32);
	__type(value, struct lb_backend);
} LB_BACKENDS SEC(".maps");

/* LB_LOCAL[task ip]: backend id of this host's backends, for decapsulated
 * mesh traffic (addressed by the inner destination). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, LB_MAX_BACKENDS);
	__type(key, __be32);
	__type(value, __u32);
} LB_LOCAL SEC(".maps");

/* LB_FLOWS[client 5-tuple]: the backend a flow was given (sticky). */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, LB_MAX_FLOWS);
	__type(key, struct lb_flow_key);
	__type(value, struct lb_flow);
} LB_FLOWS SEC(".maps");

/* LB_REVNAT[flow as the task sees it]: where its replies must come from. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, LB_MAX_FLOWS);
	__type(key, struct lb_revnat_key);
	__type(value, struct lb_revnat);
} LB_REVNAT SEC(".maps");

/* LB_LEGS[ifindex of mg-<network>]: the legs lb_reply runs on. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, LB_MAX_LEGS);
	__type(key, __u32);
	__type(value, struct lb_leg);
} LB_LEGS SEC(".maps");

/* LB_DROPS[reason]: packets dropped, per CPU. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, LB_DROP_MAX);
	__type(key, __u32);
	__type(value, __u64);
} LB_DROPS SEC(".maps");

/* LB_FORWARDS[outcome]: packets forwarded, per CPU. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, LB_FWD_MAX);
	__type(key, __u32);
	__type(value, __u64);
} LB_FORWARDS SEC(".maps");

static __always_inline void lb_count(void *map, __u32 index)
{
	__u64 *ctr = bpf_map_lookup_elem(map, &index);
	if (ctr)
		*ctr += 1; /* per-CPU slot: a plain add is exact */
}

/* Every drop goes through this macro: count by reason, then the hook's drop
 * verdict. `xdp` is the compile-time hook flag of the caller. */
#define LB_DROP(xdp, reason)                        \
	({                                          \
		lb_count(&LB_DROPS, (reason));      \
		(xdp) ? XDP_DROP : TC_ACT_SHOT;     \
	})

#define LB_FORWARDED(outcome) lb_count(&LB_FORWARDS, (outcome))

static __always_inline struct lb_config *lb_config(void)
{
	__u32 zero = 0;
	struct lb_config *cfg = bpf_map_lookup_elem(&LB_CONFIG, &zero);
	if (!cfg || !cfg->ready)
		return NULL;
	return cfg;
}

#endif
