/* SPDX-License-Identifier: (GPL-2.0 OR BSD-2-Clause) */
/* One program body for two hooks: every helper takes the context as void *
 * and a compile-time `xdp` flag. The functions are always inlined into an
 * entry point that passes a constant, so clang drops the other hook's branch
 * and the verifier only sees helpers the hook may call. */
#ifndef MESH_LB_CTX_H
#define MESH_LB_CTX_H

#include <stdbool.h>
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include "lb_consts.h"

/* "Not decided yet, go on": every verdict of both hooks is >= 0. */
#define LB_CONTINUE -1
/* "Not a packet this path handles": the caller passes it on (or, on a leg,
 * drops it). */
#define LB_NOT_OURS -2

#define LB_PASS(xdp) ((xdp) ? XDP_PASS : TC_ACT_OK)

static __always_inline void *lb_data(void *ctx, const bool xdp)
{
	if (xdp)
		return (void *)(long)((struct xdp_md *)ctx)->data;
	return (void *)(long)((struct __sk_buff *)ctx)->data;
}

static __always_inline void *lb_data_end(void *ctx, const bool xdp)
{
	if (xdp)
		return (void *)(long)((struct xdp_md *)ctx)->data_end;
	return (void *)(long)((struct __sk_buff *)ctx)->data_end;
}

/* At TC the headers may sit outside the linear area (GRO, a veth's
 * fragments): pull up to LB_PULL_LEN bytes so direct access reaches them. */
static __always_inline void lb_pull(void *ctx, const bool xdp)
{
	if (xdp)
		return;
	struct __sk_buff *skb = ctx;
	__u32 want = skb->len < LB_PULL_LEN ? skb->len : LB_PULL_LEN;
	if ((__u32)(skb->data_end - skb->data) < want)
		bpf_skb_pull_data(skb, want);
}

#endif
