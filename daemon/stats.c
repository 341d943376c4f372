/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The stats_file= report: the settings in words, then every counter of the
 * daemon and of its object store as "key value" lines.  Tests read these
 * counters (requests by type, bytes read, trees built), never times.
 */
#include "config.h"

#include <inttypes.h>
#include <stddef.h>
#include <stdio.h>

#include "cfsd.h"

/* Where a counter comes from: the daemon's own (atomic), the store's, or a
 * function. */
enum src { DAEMON, CAS, PUSH_PENDING, URING_REQUESTS };

#define D(name) { #name, DAEMON, offsetof(struct cfsd_stats, name) }
#define C(key, name) { key, CAS, offsetof(struct cfs_cas_stats, name) }

/* In the order of the report (tests and scripts read it by name). */
static const struct counter {
	const char *name;
	enum src src;
	size_t off;
} counters[] = {
	D(opens), D(opens_image), D(opens_daemon), D(opens_passthrough), D(open_errors),
	D(reads), D(read_bytes), D(read_errors), D(pushed_bytes),
	{ "push_pending_bytes", PUSH_PENDING, 0 },
	{ "uring_requests", URING_REQUESTS, 0 },
	D(lookups), D(readdirs), D(opendirs), D(getattrs), D(getxattrs), D(listxattrs), D(readlinks),
	C("objects_kernel", objects_by_method[CFS_VERIFY_KERNEL]),
	C("objects_userspace", objects_by_method[CFS_VERIFY_USERSPACE]),
	C("objects_unverified", objects_by_method[CFS_VERIFY_OFF]),
	C("cas_objects_opened", objects_opened),
	C("cas_objects_evicted", objects_evicted),
	C("cas_idle_objects", idle_objects),
	C("cas_bytes_read", bytes_read),
	C("cas_blocks_hashed", blocks_hashed),
	C("cas_trees_from_store", trees_from_store),
	C("cas_read_io_errors", read_io_errors),
	C("cas_objects_mismatched", objects_mismatched),
	C("cas_size_mismatches", size_mismatches),
	D(objects_missing), D(objects_refused),
	C("cas_trees_built", trees_built),
	C("cas_trees_from_memory", trees_from_memory),
	C("cas_trees_from_disk", trees_from_disk),
	C("cas_trees_rejected", trees_rejected),
	C("cas_trees_written", trees_written),
	C("cas_tree_write_errors", tree_write_errors),
	C("cas_blocks_failed", blocks_failed),
	C("cas_lru_bytes", lru_bytes),
};

#undef D
#undef C

static uint64_t counter_value(struct cfsd *d, const struct cfs_cas_stats *cs, const struct counter *c)
{
	switch (c->src) {
	case DAEMON:
		return atomic_load((const atomic_uint_fast64_t *)((const char *)&d->stats + c->off));
	case CAS:
		return *(const uint64_t *)((const char *)cs + c->off);
	case PUSH_PENDING:
		return cfsd_push_pending(d);
	case URING_REQUESTS:
		return cfsd_uring_requests();
	}
	return 0;
}

void cfsd_stats_print(struct cfsd *d, FILE *out)
{
	static const enum cfs_verify_method methods[] = {
		CFS_VERIFY_KERNEL, CFS_VERIFY_USERSPACE, CFS_VERIFY_OFF
	};
	struct cfs_cas_stats cs = { 0 };
	const char *sep = "";

	/* The object store's own counters (all 0 without basedir=). */
	if (d->cas)
		cfs_cas_get_stats(d->cas, &cs);

	/* Settings first (words, not numbers), then counters. */
	fprintf(out, "verity %s\n", cfsd_verity_name(d->verity));
	fprintf(out, "passthrough %s\n", cfsd_passthrough_name(d->passthrough));
	fprintf(out, "xattrs %s\n", cfsd_xattrs_names[d->xattrs]);
	fprintf(out, "image_xattrs %s\n", d->image_has_acls ? "acls" : d->image_has_xattrs ? "yes" : "none");
	fprintf(out, "io %s\n", d->cas ? cfs_cas_io_backend(d->cas) : "none");
	fprintf(out, "transport %s\n", atomic_load(&d->uring_on) ? "io_uring" : "dev-fuse");
	/* The methods objects were verified with so far ("none" before the
	 * first external file is opened). */
	fputs("verification ", out);
	for (size_t i = 0; i < sizeof(methods) / sizeof(methods[0]); i++) {
		if (cs.objects_by_method[methods[i]]) {
			fprintf(out, "%s%s", sep, cfs_verify_method_name(methods[i]));
			sep = ",";
		}
	}
	fprintf(out, "%s\n", *sep ? "" : "none");

	fprintf(out, "open_mode %s\n", cfsd_files_mode_name(d));
	for (size_t i = 0; i < sizeof(counters) / sizeof(counters[0]); i++)
		fprintf(out, "%s %" PRIu64 "\n", counters[i].name, counter_value(d, &cs, &counters[i]));
}
