/* SPDX-License-Identifier: (GPL-2.0 OR BSD-2-Clause) */
/* Constants of the service-VIP balancer (ebpf/vip.c), shared with its loader
 * (dataplane/src/lb/vip/maps.rs mirrors every number here; keep them stable). */
#ifndef MESH_VIP_CONSTS_H
#define MESH_VIP_CONSTS_H

/* Sizes; override at build time with -D. */
#ifndef VIP_RING_SIZE
/* Slots of one VIP's Maglev table. A prime; about 10 backends within 1 % of
 * their fair share, 100 within 10 %. */
#define VIP_RING_SIZE 1021
#endif
#ifndef VIP_MAX_SERVICES
/* (network, VIP) pairs one host can hold: the Maglev array is
 * VIP_MAX_SERVICES * VIP_RING_SIZE u32s (4 MiB by default). */
#define VIP_MAX_SERVICES 1024
#endif
#ifndef VIP_MAX_BACKENDS
/* (VIP, backend) memberships. */
#define VIP_MAX_BACKENDS 65536
#endif
#ifndef VIP_MAX_FLOWS
/* Flows remembered per direction (LRU). */
#define VIP_MAX_FLOWS 262144
#endif
/* The UDP port of each network namespace's marker socket: the loader binds
 * one to 127.0.0.1 there (IP_FREEBIND: loopback need not be up), with
 * SO_MARK set to the network's ID. A socket lookup resolves in the namespace
 * of the packet's device, so finding the marker names the network. */
#define VIP_MARKER_PORT 1023
#define BE_VIP_MARKER_PORT 0xFF03 /* 1023 */
#define BE_LOOPBACK 0x0100007F    /* 127.0.0.1 */
#define VIP_RING_ENTRIES (VIP_MAX_SERVICES * VIP_RING_SIZE)

/* Backend states (struct vip_backend.state). */
#define VIP_BACKEND_ACTIVE 0
#define VIP_BACKEND_DRAINING 1

/* struct vip_rev.flags */
/* The client is its own backend: the entry's key is the reply as the task
 * sends it to the VIP, seen at ingress, not at egress. */
#define VIP_REV_HAIRPIN 1

/* The MAC every VIP answers ARP with and sends from: locally administered,
 * "\x02MESHV". */
#define VIP_MAC_0 0x02
#define VIP_MAC_1 0x4d
#define VIP_MAC_2 0x45
#define VIP_MAC_3 0x53
#define VIP_MAC_4 0x48
#define VIP_MAC_5 0x56

/* Counter reasons: the index into VIP_COUNTERS. Never renumber or reuse. */
#define VIP_FWD_NEW 0             /* new flow to a VIP, DNAT to a Maglev pick */
#define VIP_FWD_ESTABLISHED 1     /* flow to a VIP found in the connection map */
#define VIP_FWD_HAIRPIN 2         /* the client is the backend: looped back */
#define VIP_REPLY_NAT 3           /* a backend's reply, source set back to the VIP */
#define VIP_REPLY_ICMP_ERROR 4    /* an ICMP error about a VIP flow, rewritten */
#define VIP_ANSWER_ARP 5          /* ARP request for a VIP answered */
#define VIP_ANSWER_ECHO 6         /* ICMP echo to a VIP answered */
#define VIP_ANSWER_RST 7          /* TCP to a VIP without backends: RST */
#define VIP_DROP_NO_BACKEND 8     /* UDP (or a RST) to a VIP without backends */
#define VIP_DROP_MALFORMED 9      /* shorter than its headers claim */
#define VIP_DROP_FRAGMENT 10      /* a non-first IPv4 fragment to a VIP */
#define VIP_DROP_UNSUPPORTED 11   /* another protocol, or ICMP other than echo, to a VIP */
#define VIP_DROP_REWRITE 12       /* a rewrite helper failed */
#define VIP_PASS_UNKNOWN_NET 13   /* in a namespace without a marker socket */
#define VIP_REASONS 14

/* Network byte order, precomputed so the fast path compares without a swap. */
#define BE_ETH_P_IP 0x0008    /* 0x0800 */
#define BE_ETH_P_ARP 0x0608   /* 0x0806 */
#define BE_ARPHRD_ETHER 0x0100 /* 1 */
#define BE_ARPOP_REQUEST 0x0100 /* 1 */
#define BE_ARPOP_REPLY 0x0200   /* 2 */
#define BE_IP_MF 0x0020       /* 0x2000: more fragments */
#define BE_IP_OFFSET 0xFF1F   /* 0x1FFF: fragment offset */
#define BE_IP_DF 0x0040       /* 0x4000: don't fragment */

#define ICMP_ECHOREPLY_T 0
#define ICMP_DEST_UNREACH_T 3
#define ICMP_ECHO_T 8
#define ICMP_TIME_EXCEEDED_T 11

/* Offsets in an Ethernet + IPv4 frame. */
#define ETH_DST_OFF 0
#define ETH_SRC_OFF 6
#define IP_OFF 14
#define IP_CSUM_OFF (IP_OFF + 10)
#define IP_SRC_OFF (IP_OFF + 12)
#define IP_DST_OFF (IP_OFF + 16)
#define TCP_CSUM_AT 16 /* from the TCP header */
#define UDP_CSUM_AT 6  /* from the UDP header */
#define ICMP_CSUM_AT 2 /* from the ICMP header */

/* The helpers' verdict for "not decided yet, go on" (Katran's habit). */
#define VIP_CONTINUE -1

#endif
