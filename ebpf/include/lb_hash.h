/* SPDX-License-Identifier: (GPL-2.0 OR BSD-2-Clause) */
/* Bob Jenkins' jhash over three words (as the kernel's jhash_3words), for
 * the flow hash that picks a Maglev slot and the VXLAN entropy port. Every
 * host computes the same hash, so a client's flow maps to the same backend
 * whichever host it enters through. */
#ifndef MESH_LB_HASH_H
#define MESH_LB_HASH_H

#include <linux/types.h>

#define LB_JHASH_INITVAL 0xdeadbeef

static __always_inline __u32 lb_rol32(__u32 word, unsigned int shift)
{
	return (word << shift) | (word >> ((-shift) & 31));
}

#define lb_jhash_final(a, b, c)                 \
	{                                       \
		c ^= b;                         \
		c -= lb_rol32(b, 14);           \
		a ^= c;                         \
		a -= lb_rol32(c, 11);           \
		b ^= a;                         \
		b -= lb_rol32(a, 25);           \
		c ^= b;                         \
		c -= lb_rol32(b, 16);           \
		a ^= c;                         \
		a -= lb_rol32(c, 4);            \
		b ^= a;                         \
		b -= lb_rol32(a, 14);           \
		c ^= b;                         \
		c -= lb_rol32(b, 24);           \
	}

static __always_inline __u32 lb_jhash_3words(__u32 a, __u32 b, __u32 c, __u32 initval)
{
	a += LB_JHASH_INITVAL + (3 << 2) + initval;
	b += LB_JHASH_INITVAL + (3 << 2) + initval;
	c += LB_JHASH_INITVAL + (3 << 2) + initval;
	lb_jhash_final(a, b, c);
	return c;
}

/* The flow hash: client address, both ports, protocol. The host address is
 * left out so every host picks the same backend for the same client flow. */
static __always_inline __u32 lb_flow_hash(__be32 client_ip, __be16 client_port,
					  __be16 published_port, __u8 proto)
{
	return lb_jhash_3words(client_ip,
			       ((__u32)client_port << 16) | published_port,
			       proto, 0);
}

#endif
