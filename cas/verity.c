/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Verification per object: the method is chosen once when the object state
 * is set up, then every read of the userspace method hashes each covered
 * 4096-byte block and checks it against the Merkle tree before any of its
 * bytes reach the caller.
 */
#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "cas-internal.h"

#define BS CFS_VERITY_BLOCK_SIZE
#define DIRECT_SEG (64 * 1024)  /* one read request per 64 KiB of aligned data */
#define WINDOW (2 * 1024 * 1024) /* bytes handled per batch of requests */
#define MAX_SEGS (WINDOW / DIRECT_SEG + 3)

const char *cfs_verify_method_name(enum cfs_verify_method m)
{
	switch (m) {
	case CFS_VERIFY_OFF:
		return "off";
	case CFS_VERIFY_KERNEL:
		return "kernel";
	case CFS_VERIFY_USERSPACE:
		return "userspace";
	}
	return "unknown";
}

int cfs_object_setup_method(struct cfs_cas *cas, struct cfs_object *obj)
{
	struct cfs_merkle *t = NULL;
	int r;

	if (!cas->opts.verify || !obj->has_digest) {
		/* No digest and not required (the open checked require_digest):
		 * nothing to verify against. */
		obj->method = CFS_VERIFY_OFF;
		return 0;
	}

	if (cas->opts.method != CFS_METHOD_USERSPACE) {
		uint8_t measured[CFS_DIGEST_SIZE];

		r = cas->verity.measure ? cas->verity.measure(cas->verity.userdata, obj->fd, measured)
					: -EOPNOTSUPP;
		if (r == 0) {
			/* The kernel checks every block of this file against
			 * its digest; it must be the digest the image wants. */
			if (memcmp(measured, obj->digest, CFS_DIGEST_SIZE) != 0)
				return -EIO;
			obj->method = CFS_VERIFY_KERNEL;
			return 0;
		}
		if (cas->opts.method == CFS_METHOD_KERNEL)
			return r;
	}

	pthread_mutex_lock(&cas->lock);
	t = cfs_tree_cache_take(&cas->trees, obj->digest);
	pthread_mutex_unlock(&cas->lock);
	if (t && t->data_size != obj->size) {
		/* Cannot be: the digest covers the size.  Do not use it. */
		cfs_merkle_free(t);
		t = NULL;
	}
	if (t) {
		atomic_fetch_add(&cas->stats.trees_from_memory, 1);
	} else {
		r = cfs_tree_cache_load(&cas->trees, obj->size, obj->digest, &t);
		if (r == 0)
			atomic_fetch_add(&cas->stats.trees_from_disk, 1);
		else if (r == -EBADMSG)
			atomic_fetch_add(&cas->stats.trees_rejected, 1);
		/* other errors (unreadable cache): rebuild from data */
	}
	if (!t) {
		r = cfs_merkle_build_fd(&cas->io, obj->fd, obj->size, obj->digest, &t);
		if (r < 0)
			return r;
		atomic_fetch_add(&cas->stats.trees_built, 1);
		obj->data_checked = true;
		r = cfs_tree_cache_store(&cas->trees, t);
		if (r < 0)
			atomic_fetch_add(&cas->stats.tree_write_errors, 1); /* not fatal */
		else if (r > 0)
			atomic_fetch_add(&cas->stats.trees_written, 1);
	}
	obj->tree = t;
	obj->method = CFS_VERIFY_USERSPACE;
	return 0;
}

/* ---- reads ---- */

struct read_ctx {
	struct cfs_object *obj;
	uint8_t *user;       /* caller's buffer */
	uint64_t off, end;   /* requested range, end <= size */
	int err;
};

/* A segment is either direct (whole blocks read into the caller's buffer)
 * or a bounce block (head/tail/last block of the file, read into an
 * aligned scratch block and copied out once verified). */
static int seg_done(void *userdata, struct cfs_io_seg *seg)
{
	struct read_ctx *c = userdata;
	struct cfs_object *obj = c->obj;
	bool direct = seg->buf != NULL && (uint8_t *)seg->buf >= c->user &&
		      (uint8_t *)seg->buf < c->user + (c->end - c->off);
	uint64_t expect = obj->size - seg->off < seg->len ? obj->size - seg->off : seg->len;
	bool bad = false;

	/* Shorter: truncated since open.  Longer: the last block was
	 * requested whole and more than the recorded size came back. */
	if (seg->res < 0 || (uint64_t)seg->res != expect) {
		bad = true;
	} else if (obj->method == CFS_VERIFY_USERSPACE) {
		for (uint64_t o = 0; o < expect; o += BS) {
			uint8_t *blk = (uint8_t *)seg->buf + o;
			uint64_t n = expect - o < BS ? expect - o : BS;
			uint8_t h[CFS_DIGEST_SIZE];

			if (n < BS)
				memset(blk + n, 0, BS - n); /* bounce block: room for padding */
			cfs_sha256(blk, BS, h);
			/* Go on after a bad block: each one is counted. */
			if (cfs_merkle_verify_hash(obj->tree, (seg->off + o) / BS, h) < 0) {
				atomic_fetch_add(&obj->cas->stats.blocks_failed, 1);
				bad = true;
			}
		}
	}
	if (bad) {
		/* No unverified byte stays in the caller's buffer. */
		if (direct)
			memset(seg->buf, 0, seg->len);
		c->err = seg->res < 0 && seg->res != -EIO ? seg->res : -EIO;
		return 0;
	}
	if (!direct) {
		/* copy the requested part of the verified block */
		uint64_t from = c->off > seg->off ? c->off : seg->off;
		uint64_t to = c->end < seg->off + expect ? c->end : seg->off + expect;

		if (to > from)
			memcpy(c->user + (from - c->off), (uint8_t *)seg->buf + (from - seg->off), to - from);
	}
	return 0;
}

/* One window [off, end) with end - off <= WINDOW. */
static int read_window(struct cfs_object *obj, uint8_t *user, uint64_t off, uint64_t end)
{
	_Alignas(64) uint8_t bounce[2][BS];
	struct cfs_io_seg segs[MAX_SEGS];
	struct read_ctx c = { .obj = obj, .user = user, .off = off, .end = end };
	unsigned n = 0, nb = 0;
	uint64_t b0 = off / BS, b1 = (end - 1) / BS; /* covered blocks */
	uint64_t last_blk = (obj->size - 1) / BS;
	bool last_partial = obj->size % BS != 0;
	int r;

	if (obj->method != CFS_VERIFY_USERSPACE) {
		/* Kernel fs-verity (it checks) or no verification: plain reads. */
		for (uint64_t o = off; o < end; o += DIRECT_SEG) {
			segs[n].buf = user + (o - off);
			segs[n].off = o;
			segs[n].len = (uint32_t)(end - o < DIRECT_SEG ? end - o : DIRECT_SEG);
			n++;
		}
		r = cfs_io_read_segs(&obj->cas->io, obj->fd, segs, n, seg_done, &c);
		return r < 0 ? r : c.err;
	}

	for (uint64_t b = b0; b <= b1;) {
		uint64_t bstart = b * BS;
		bool whole = bstart >= off && bstart + BS <= end && !(b == last_blk && last_partial);

		if (!whole) {
			segs[n].buf = bounce[nb++];
			segs[n].off = bstart;
			segs[n].len = BS;
			n++;
			b++;
			continue;
		}
		/* a run of whole blocks, read straight into the caller's buffer */
		{
			uint64_t run = 1;

			while (b + run <= b1 && run * BS < DIRECT_SEG) {
				uint64_t nstart = (b + run) * BS;

				if (nstart + BS > end || (b + run == last_blk && last_partial))
					break;
				run++;
			}
			segs[n].buf = user + (bstart - off);
			segs[n].off = bstart;
			segs[n].len = (uint32_t)(run * BS);
			n++;
			b += run;
		}
	}
	r = cfs_io_read_segs(&obj->cas->io, obj->fd, segs, n, seg_done, &c);
	return r < 0 ? r : c.err;
}

ssize_t cfs_object_pread(struct cfs_object *obj, void *buf, size_t len, uint64_t off)
{
	uint64_t end;
	int err = 0;

	if (off >= obj->size || len == 0)
		return 0;
	end = obj->size - off < len ? obj->size : off + len;
	if (end - off > SSIZE_MAX)
		end = off + SSIZE_MAX;
	/* Windows start on block boundaries so no block is read twice. */
	for (uint64_t o = off; o < end;) {
		uint64_t wend = (o / BS) * BS + WINDOW;
		int r;

		if (wend > end)
			wend = end;
		r = read_window(obj, (uint8_t *)buf + (o - off), o, wend);
		if (r < 0 && err == 0)
			err = r; /* go on: the caller gets no partial success, but
				    every block is checked and counted */
		o = wend;
	}
	return err < 0 ? err : (ssize_t)(end - off);
}

int cfs_object_check_all(struct cfs_object *obj)
{
	_cleanup_free_ uint8_t *buf = NULL;
	int err = 0;

	if (obj->method == CFS_VERIFY_OFF)
		return 0;
	if (obj->method == CFS_VERIFY_USERSPACE && obj->data_checked)
		return 0;
	buf = malloc(WINDOW);
	if (!buf)
		return -ENOMEM;
	for (uint64_t o = 0; o < obj->size; o += WINDOW) {
		ssize_t n = cfs_object_pread(obj, buf, WINDOW, o);

		if (n < 0 && err == 0)
			err = (int)n;
		else if (n >= 0 && (uint64_t)n != (obj->size - o < WINDOW ? obj->size - o : WINDOW) && err == 0)
			err = -EIO;
	}
	return err;
}
