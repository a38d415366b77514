/* SPDX-License-Identifier: (GPL-2.0 OR BSD-2-Clause) */
#ifndef MESH_STATS_MAPS_H
#define MESH_STATS_MAPS_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "stats_consts.h"

/* One counter pair per traffic class. Shared with userspace as two u64s,
 * no padding; userspace sums the per-CPU values. */
struct traffic_counter {
	__u64 packets; /* frames seen */
	__u64 bytes;   /* bytes of those frames, L2 header included */
};

/* TRAFFIC_STATS[class]: frames and bytes seen on the interface, per CPU. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, STATS_CLASSES);
	__type(key, __u32);
	__type(value, struct traffic_counter);
} TRAFFIC_STATS SEC(".maps");

#endif
