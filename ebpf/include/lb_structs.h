/* SPDX-License-Identifier: (GPL-2.0 OR BSD-2-Clause) */
/* Structures shared with userspace (dataplane/src/lb/bpf/maps.rs mirrors them
 * as #[repr(C)] types): explicit padding, no bitfields. Addresses and ports
 * are in network byte order. */
#ifndef MESH_LB_STRUCTS_H
#define MESH_LB_STRUCTS_H

#include <linux/types.h>

/* The host's settings (LB_CONFIG[0]). */
struct lb_config {
	__be32 host_ip;          /* this host's underlay address (and VTEP) */
	__u32 underlay_ifindex;  /* the interface lb_ingress is attached to */
	__u32 mtu;               /* the underlay's MTU */
	__be16 data_path_port;   /* VXLAN's UDP port */
	__u8 host_mac[6];        /* the underlay interface's MAC */
	__u32 ready;             /* nonzero once userspace filled this in */
};

/* LB_SERVICES key: a published port. */
struct lb_service_key {
	__u8 proto; /* IPPROTO_TCP or IPPROTO_UDP */
	__u8 pad;
	__be16 port; /* the published port */
};

/* LB_SERVICES value. */
struct lb_service {
	__u32 index;        /* the service's Maglev table, < LB_MAX_SERVICES */
	__be16 target_port; /* the port inside the task */
	__u16 flags;        /* LB_SERVICE_* */
};

/* LB_BACKENDS value, by backend id (0 is invalid). */
struct lb_backend {
	__be32 ip;           /* the task's overlay address */
	__be32 vtep;         /* its host's underlay address */
	__u32 leg_ifindex;   /* local: the leg mg-<network> in this namespace */
	__u32 flags;         /* LB_BACKEND_* */
	__u8 leg_host_mac[6]; /* local: mg-<network>'s MAC (frame source) */
	__u8 leg_ns_mac[6];   /* local: gw0's MAC (frame destination) */
};

/* LB_FLOWS key: a client flow to a published port, as the client sent it. */
struct lb_flow_key {
	__be32 client_ip;
	__be32 host_ip;
	__be16 client_port;
	__be16 published_port;
	__u8 proto;
	__u8 pad[3];
};

/* LB_FLOWS value. */
struct lb_flow {
	__u32 backend_id;
	__u32 pad;
};

/* LB_REVNAT key: a flow as the task sees it. */
struct lb_revnat_key {
	__be32 task_ip;
	__be32 client_ip;
	__be16 task_port;   /* the target port */
	__be16 client_port;
	__u8 proto;
	__u8 pad[3];
};

/* LB_REVNAT value: what the task's replies must come from. */
struct lb_revnat {
	__be32 ingress_ip;     /* the host the client connected to */
	__be16 published_port; /* the port it connected to */
	__u16 pad;
};

/* LB_LEGS value, by the ifindex of mg-<network>. */
struct lb_leg {
	__u8 host_mac[6];
	__u8 ns_mac[6];
	__u32 flags;
};

#endif
