/* SPDX-License-Identifier: (GPL-2.0 OR BSD-2-Clause) */
/* Choosing a flow's backend: the connection map first (sticky, also for a
 * draining backend), else the service's Maglev table by flow hash. */
#ifndef MESH_LB_LOOKUP_H
#define MESH_LB_LOOKUP_H

#include "lb_hash.h"
#include "lb_maps.h"
#include "lb_parse.h"

static __always_inline struct lb_service *lb_service(__u8 proto, __be16 port)
{
	struct lb_service_key key = { .proto = proto, .port = port };
	return bpf_map_lookup_elem(&LB_SERVICES, &key);
}

/* The backend of client flow {client, published port}: 0 with `out` filled,
 * or a drop reason. A flow whose backend is gone (removed, not draining) is
 * picked again and re-recorded, and so is a new TCP connection (`opens`) that
 * reuses the 5-tuple of an old one pinned to a draining backend: the task may
 * already have stopped listening. */
static __always_inline int lb_pick(__be32 client_ip, __be32 host_ip, __be16 client_port,
				   __be16 published_port, __u8 proto, __u8 opens,
				   const struct lb_service *svc, struct lb_backend *out,
				   __u32 *reason)
{
	struct lb_flow_key key = {
		.client_ip = client_ip,
		.host_ip = host_ip,
		.client_port = client_port,
		.published_port = published_port,
		.proto = proto,
	};
	struct lb_flow *flow = bpf_map_lookup_elem(&LB_FLOWS, &key);
	if (flow) {
		__u32 id = flow->backend_id;
		struct lb_backend *be = bpf_map_lookup_elem(&LB_BACKENDS, &id);
		if (be && !(opens && (be->flags & LB_BACKEND_DRAINING))) {
			*out = *be;
			return 0;
		}
	}
	__u32 index = svc->index;
	if (index >= LB_MAX_SERVICES) {
		*reason = LB_DROP_MAGLEV_MISSING;
		return -1;
	}
	__u32 hash = lb_flow_hash(client_ip, client_port, published_port, proto);
	__u32 slot = index * LB_MAGLEV_SIZE + hash % LB_MAGLEV_SIZE;
	__u32 *id = bpf_map_lookup_elem(&LB_MAGLEV, &slot);
	if (!id) {
		*reason = LB_DROP_MAGLEV_MISSING;
		return -1;
	}
	__u32 backend_id = *id;
	if (backend_id == 0) {
		*reason = LB_DROP_NO_BACKEND;
		return -1;
	}
	struct lb_backend *be = bpf_map_lookup_elem(&LB_BACKENDS, &backend_id);
	if (!be) {
		*reason = LB_DROP_BACKEND_MISSING;
		return -1;
	}
	struct lb_flow value = { .backend_id = backend_id };
	bpf_map_update_elem(&LB_FLOWS, &key, &value, BPF_ANY);
	*out = *be;
	return 0;
}

/* Remembers where a task's replies for this flow must come from, unless the
 * entry is already right. */
static __always_inline void lb_record_revnat(__be32 task_ip, __be16 task_port, __be32 client_ip,
					     __be16 client_port, __u8 proto, __be32 ingress_ip,
					     __be16 published_port)
{
	struct lb_revnat_key key = {
		.task_ip = task_ip,
		.client_ip = client_ip,
		.task_port = task_port,
		.client_port = client_port,
		.proto = proto,
	};
	struct lb_revnat *have = bpf_map_lookup_elem(&LB_REVNAT, &key);
	if (have && have->ingress_ip == ingress_ip && have->published_port == published_port)
		return;
	struct lb_revnat value = { .ingress_ip = ingress_ip, .published_port = published_port };
	bpf_map_update_elem(&LB_REVNAT, &key, &value, BPF_ANY);
}

#endif
