/* SPDX-License-Identifier: (GPL-2.0 OR BSD-2-Clause) */
/* Sizes and constants of the ingress routing mesh. Sizes can be overridden at
 * build time; userspace (dataplane/src/lb/bpf/maps.rs) mirrors the defaults. */
#ifndef MESH_LB_CONSTS_H
#define MESH_LB_CONSTS_H

#ifndef LB_MAX_SERVICES
#define LB_MAX_SERVICES 64 /* services with published ports (Maglev tables) */
#endif
#ifndef LB_MAGLEV_SIZE
#define LB_MAGLEV_SIZE 16381 /* slots per Maglev table; prime */
#endif
#ifndef LB_MAX_PORTS
#define LB_MAX_PORTS 1024 /* published (proto, port) pairs */
#endif
#ifndef LB_MAX_BACKENDS
#define LB_MAX_BACKENDS 4096 /* backends of all services */
#endif
#ifndef LB_MAX_FLOWS
#define LB_MAX_FLOWS 65536 /* client flows remembered (LRU) */
#endif
#ifndef LB_MAX_LEGS
#define LB_MAX_LEGS 256 /* overlay networks with a leg */
#endif
/* Derived: one flat array holds every table. */
#define LB_MAGLEV_ENTRIES (LB_MAX_SERVICES * LB_MAGLEV_SIZE)

/* Bytes VXLAN adds on an IPv4 underlay: outer IPv4 20, UDP 8, VXLAN 8, inner
 * Ethernet 14. */
#define LB_VXLAN_OVERHEAD 50
/* The mesh's VNI range: 0xFE0000 | published port. Overlay networks get VNIs
 * below it. */
#define LB_MESH_VNI_BASE 0xFE0000
#define LB_MESH_VNI_MASK 0xFF0000
/* VXLAN flags word with the I bit (VNI valid), in network order. */
#define LB_VXLAN_FLAG_I 0x08

/* Backend flags. */
#define LB_BACKEND_LOCAL 1    /* runs on this host: deliver through its leg */
#define LB_BACKEND_DRAINING 2 /* out of the Maglev table; keeps its flows */

/* Service flags. */
#define LB_SERVICE_LOCAL_ONLY 1 /* host mode: only this host's backends listed */

/* Network-order constants, precomputed so the fast path compares without a
 * byte swap (little-endian host). */
#define LB_BE_ETH_P_IP 0x0008 /* 0x0800 */
#define LB_BE_IP_MF 0x0020     /* 0x2000: more fragments */
#define LB_BE_IP_OFFSET 0xFF1F /* 0x1FFF: fragment offset */
#define LB_BE_IP_DF 0x0040     /* 0x4000: don't fragment */

#define LB_ICMP_DEST_UNREACH 3
#define LB_ICMP_TIME_EXCEEDED 11
#define LB_ICMP_FRAG_NEEDED 4

/* Entropy source ports of the mesh's VXLAN: 49152..65535. */
#define LB_SPORT_BASE 0xC000
#define LB_SPORT_MASK 0x3FFF

#define LB_TTL 64

/* Bytes pulled into the linear area at TC before parsing: outer Ethernet,
 * IPv4 with options, UDP, VXLAN, inner Ethernet, inner IPv4 with options and
 * an ICMP error's embedded header. */
#define LB_PULL_LEN 256

#endif
