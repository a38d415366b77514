/* SPDX-License-Identifier: (GPL-2.0 OR BSD-2-Clause) */
/* Stable reason codes of the ingress routing mesh (ebpf/lb.c): the index into
 * LB_DROPS and LB_FORWARDS. Mirrored in dataplane/src/lb/bpf/counters.rs.
 * Never renumber or reuse a code; add new ones at the end. */
#ifndef MESH_LB_DROP_REASONS_H
#define MESH_LB_DROP_REASONS_H

/* Drops. */
#define LB_DROP_TRUNCATED_ETH 0  /* frame shorter than an Ethernet header */
#define LB_DROP_TRUNCATED_IP 1   /* shorter than its IPv4 header (IHL included) */
#define LB_DROP_BAD_IHL 2        /* IHL below 5 */
#define LB_DROP_TRUNCATED_L4 3   /* shorter than its TCP/UDP/ICMP/VXLAN header */
#define LB_DROP_FRAGMENT 4       /* first fragment to a published port */
#define LB_DROP_NO_BACKEND 5     /* published port whose service has no active backend (TCP: answered, see LB_FWD_RST) */
#define LB_DROP_MAGLEV_MISSING 6 /* Maglev slot unreadable (service index out of range) */
#define LB_DROP_BACKEND_MISSING 7 /* Maglev slot names a backend the map lacks */
#define LB_DROP_ENCAP_TOO_BIG 8  /* would exceed the underlay MTU once encapsulated */
#define LB_DROP_FIB_FAIL 9       /* no route or no neighbour towards the backend's host */
#define LB_DROP_REDIRECT_FAIL 10 /* a redirect or head/room adjustment failed */
#define LB_DROP_NO_CONFIG 11     /* the config map is not filled in yet */
#define LB_DROP_DECAP_NO_BACKEND 12 /* mesh VXLAN for an address no local backend has */
#define LB_DROP_REPLY_NO_NAT 13  /* a leg's packet without a reverse-NAT entry */
#define LB_DROP_REPLY_NOT_IPV4 14 /* retired: a leg's non-IPv4 frames now pass to the host */
#define LB_DROP_CSUM_FAIL 15     /* a checksum or store helper failed */
#define LB_DROP_BAD_INNER 16     /* mesh VXLAN whose inner frame is not IPv4 TCP/UDP/ICMP */
#define LB_DROP_UNKNOWN_LEG 17   /* lb_reply on an interface the legs map lacks */
#define LB_DROP_BAD_IP 18        /* IPv4 header not version 4, or total length below the header or past the frame */
#define LB_DROP_BAD_L4 19        /* TCP data offset below 5 or past the packet; UDP length below 8 or past it */
#define LB_DROP_MAX 20

/* Forwarding outcomes. */
#define LB_FWD_LOCAL 0          /* delivered to a local backend through its leg */
#define LB_FWD_REMOTE 1         /* encapsulated to the backend's host */
#define LB_FWD_DECAP 2          /* mesh VXLAN decapsulated and delivered locally */
#define LB_FWD_ICMP 3           /* ICMP error forwarded to a flow's backend */
#define LB_FWD_REPLY 4          /* a task's reply sent out directly (DSR) */
#define LB_FWD_REPLY_ICMP 5     /* a task's ICMP error sent out to the client */
#define LB_FWD_FRAG_NEEDED 6    /* ICMP fragmentation needed answered to a client */
#define LB_FWD_RST 7            /* TCP RST answered for a service without backends */
#define LB_FWD_MAX 8

#endif
