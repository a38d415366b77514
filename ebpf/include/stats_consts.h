/* SPDX-License-Identifier: (GPL-2.0 OR BSD-2-Clause) */
/* Constants shared by the traffic-stats XDP program and its userspace reader
 * (dataplane/src/bpf/traffic_stats.rs mirrors them; keep the numbers stable). */
#ifndef MESH_STATS_CONSTS_H
#define MESH_STATS_CONSTS_H

/* Traffic classes: the index into the per-CPU stats array. Never renumber. */
#define STATS_ALL 0       /* every frame seen, including malformed ones */
#define STATS_IPV4 1      /* well-formed IPv4 */
#define STATS_IPV4_TCP 2  /* IPv4 carrying TCP */
#define STATS_IPV4_UDP 3  /* IPv4 carrying UDP */
#define STATS_IPV6 4      /* IPv6, any payload */
#define STATS_ARP 5       /* ARP */
#define STATS_MALFORMED 6 /* too short for the header its EtherType announces */
#define STATS_OTHER 7     /* any other EtherType */
#define STATS_CLASSES 8

/* EtherTypes and protocol numbers in network byte order, precomputed so the
 * fast path compares without a byte swap. */
#define BE_ETH_P_IP 0x0008   /* 0x0800 */
#define BE_ETH_P_IPV6 0xDD86 /* 0x86DD */
#define BE_ETH_P_ARP 0x0608  /* 0x0806 */

#endif
