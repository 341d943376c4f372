/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The read path: the method is chosen once when the object state is set
 * up (store.c), then every read of the userspace method hashes each covered
 * 4096-byte block and checks it against the Merkle tree before any of its
 * bytes reach the caller.
 */
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cas-internal.h"

#define BS CFS_VERITY_BLOCK_SIZE
#define DIRECT_SEG (64 * 1024)  /* one read request per 64 KiB of aligned data */
#define WINDOW (2 * 1024 * 1024) /* bytes handled per batch of requests */
#define MAX_SEGS (WINDOW / DIRECT_SEG + 3)

static int file_ident(int fd, struct cfs_file_ident *ret)
{
	struct stat st;

	if (fstat(fd, &st) < 0)
		return -errno;
	*ret = (struct cfs_file_ident){ .dev = st.st_dev, .ino = st.st_ino, .size = st.st_size,
					.mtime = st.st_mtim, .ctime = st.st_ctim };
	return 0;
}

static bool ident_equal(const struct cfs_file_ident *a, const struct cfs_file_ident *b)
{
	return a->dev == b->dev && a->ino == b->ino && a->size == b->size &&
	       a->mtime.tv_sec == b->mtime.tv_sec && a->mtime.tv_nsec == b->mtime.tv_nsec &&
	       a->ctime.tv_sec == b->ctime.tv_sec && a->ctime.tv_nsec == b->ctime.tv_nsec;
}

/* A stored tree (beside the object, then in the tree cache), checked. */
static int load_tree(struct cfs_cas *cas, struct cfs_object *obj, struct cfs_merkle **ret_tree)
{
	char path[sizeof(CFS_STORE_TREES_DIR) + 2 * CFS_DIGEST_SIZE + 2];
	int fd, r;

	/* Nobody stores trees of objects this small: building costs one
	 * read of what the caller reads anyway. */
	if (obj->size <= cas->trees.min_persist_size)
		return -ENOENT;
	memcpy(path, CFS_STORE_TREES_DIR "/", sizeof(CFS_STORE_TREES_DIR));
	cfs_object_path(obj->digest, path + sizeof(CFS_STORE_TREES_DIR));
	fd = cfs_cas_open_beneath(cas, obj->basedir, path);
	if (fd >= 0) {
		r = cfs_tree_file_read(fd, obj->size, obj->digest, ret_tree);
		close(fd);
		if (r == 0) {
			atomic_fetch_add(&cas->stats.trees_from_store, 1);
			return 0;
		}
		/* Not ours to remove: the store belongs to its tools. */
		if (r == -EBADMSG)
			atomic_fetch_add(&cas->stats.trees_rejected, 1);
	}
	r = cfs_tree_cache_load(&cas->trees, obj->size, obj->digest, ret_tree);
	if (r == 0)
		atomic_fetch_add(&cas->stats.trees_from_disk, 1);
	else if (r == -EBADMSG)
		atomic_fetch_add(&cas->stats.trees_rejected, 1);
	return r;
}

static void persist_tree(struct cfs_cas *cas, struct cfs_object *obj, const struct cfs_merkle *t)
{
	int r = 0;

	if (cas->opts.store_trees) {
		r = cfs_store_tree_write(cas->basedir_fds[obj->basedir], t,
					 cas->trees.min_persist_size);
		if (r > 0) {
			atomic_fetch_add(&cas->stats.trees_written, 1);
			return;
		}
		/* read-only store: the tree cache instead */
	}
	r = cfs_tree_cache_store(&cas->trees, t);
	if (r < 0)
		atomic_fetch_add(&cas->stats.tree_write_errors, 1); /* not fatal */
	else if (r > 0)
		atomic_fetch_add(&cas->stats.trees_written, 1);
}

/*
 * Give @obj (USERSPACE) its tree: from memory, from a stored tree, or
 * built from the data.  One thread does it, others wait.  Data that failed
 * the digest fails again without a read while the file is unchanged.
 * With @ret_whole (and a small enough object), a build hands over the data
 * it verified.  -EBADMSG: the data is not the object; else -errno.
 */
static int get_tree(struct cfs_object *obj, void **ret_whole, bool *ret_built, struct cfs_read_fault *ret_fault)
{
	struct cfs_cas *cas = obj->cas;
	struct cfs_merkle *t = NULL;
	void *whole = NULL;
	bool built = false;
	int r;

	pthread_mutex_lock(&obj->lock);
	while (obj->building)
		pthread_cond_wait(&obj->cond, &obj->lock);
	if (atomic_load_explicit(&obj->tree, memory_order_acquire)) {
		pthread_mutex_unlock(&obj->lock);
		return 0;
	}
	if (obj->failed) {
		struct cfs_file_ident id = { 0 };

		if (file_ident(obj->fd, &id) == 0 && ident_equal(&id, &obj->failed_ident)) {
			pthread_mutex_unlock(&obj->lock);
			if (ret_fault)
				*ret_fault = (struct cfs_read_fault){ .kind = CFS_FAULT_MISMATCH, .whole = true };
			return -EBADMSG;
		}
		obj->failed = false;
	}
	obj->building = true;
	pthread_mutex_unlock(&obj->lock);

	r = load_tree(cas, obj, &t);
	if (r < 0) {
		bool keep = ret_whole && obj->size <= CFS_KEEP_WHOLE_MAX;

		r = cfs_merkle_build_fd(&cas->io, obj->fd, obj->size, obj->digest, keep ? &whole : NULL, &t);
		atomic_fetch_add(&cas->stats.bytes_read, obj->size);
		atomic_fetch_add(&cas->stats.blocks_hashed, (obj->size + BS - 1) / BS);
		if (r == 0) {
			built = true;
			atomic_fetch_add(&cas->stats.trees_built, 1);
			persist_tree(cas, obj, t);
		} else if (r == -EBADMSG) {
			atomic_fetch_add(&cas->stats.objects_mismatched, 1);
			if (ret_fault)
				*ret_fault = (struct cfs_read_fault){ .kind = CFS_FAULT_MISMATCH, .whole = true };
		} else if (r != -ENOMEM) {
			atomic_fetch_add(&cas->stats.read_io_errors, 1);
			if (ret_fault)
				*ret_fault = (struct cfs_read_fault){ .kind = CFS_FAULT_IO, .err = -r, .whole = true };
		}
	}

	pthread_mutex_lock(&obj->lock);
	obj->building = false;
	if (r == 0) {
		atomic_store_explicit(&obj->tree, t, memory_order_release);
	} else if (r == -EBADMSG && file_ident(obj->fd, &obj->failed_ident) == 0) {
		obj->failed = true;
	}
	pthread_cond_broadcast(&obj->cond);
	pthread_mutex_unlock(&obj->lock);
	if (ret_whole)
		*ret_whole = whole;
	if (ret_built)
		*ret_built = built;
	return r;
}

/* ---- reads ---- */

struct read_ctx {
	struct cfs_object *obj;
	uint8_t *user;       /* caller's buffer */
	uint64_t off, end;   /* requested range, end <= size */
	int err;
	struct cfs_read_fault fault; /* the first failure */
};

static void fault_note(struct read_ctx *c, enum cfs_fault_kind kind, int err, uint64_t off)
{
	if (c->fault.kind == CFS_FAULT_NONE)
		c->fault = (struct cfs_read_fault){ .kind = kind, .err = err, .off = off };
}

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
	if (seg->res > 0)
		atomic_fetch_add(&obj->cas->stats.bytes_read, (uint64_t)seg->res);
	if (seg->res < 0 || (uint64_t)seg->res != expect) {
		if (seg->res < 0) {
			atomic_fetch_add(&obj->cas->stats.read_io_errors, 1);
			fault_note(c, CFS_FAULT_IO, -seg->res, seg->off);
		} else {
			atomic_fetch_add(&obj->cas->stats.size_mismatches, 1);
			fault_note(c, CFS_FAULT_SIZE, 0, seg->off);
		}
		bad = true;
	} else if (obj->method == CFS_VERIFY_USERSPACE) {
		const struct cfs_merkle *t = atomic_load_explicit(&obj->tree, memory_order_acquire);

		atomic_fetch_add(&obj->cas->stats.blocks_hashed, (expect + BS - 1) / BS);
		for (uint64_t o = 0; o < expect; o += BS) {
			uint8_t *blk = (uint8_t *)seg->buf + o;
			uint64_t n = expect - o < BS ? expect - o : BS;
			uint8_t h[CFS_DIGEST_SIZE];

			if (n < BS)
				memset(blk + n, 0, BS - n); /* bounce block: room for padding */
			cfs_sha256(blk, BS, h);
			/* Go on after a bad block: each one is counted. */
			if (cfs_merkle_verify_hash(t, (seg->off + o) / BS, h) < 0) {
				atomic_fetch_add(&obj->cas->stats.blocks_failed, 1);
				fault_note(c, CFS_FAULT_MISMATCH, 0, seg->off + o);
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
static int read_window(struct cfs_object *obj, uint8_t *user, uint64_t off, uint64_t end,
		       struct cfs_read_fault *fault)
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
		if (fault->kind == CFS_FAULT_NONE)
			*fault = c.fault;
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
	if (fault->kind == CFS_FAULT_NONE)
		*fault = c.fault;
	return r < 0 ? r : c.err;
}

ssize_t cfs_object_pread_whole(struct cfs_object *obj, void *buf, size_t len, uint64_t off, void **ret_whole,
			       struct cfs_read_fault *ret_fault)
{
	struct cfs_read_fault fault = { .kind = CFS_FAULT_NONE };
	uint64_t end;
	int err = 0;

	if (ret_whole)
		*ret_whole = NULL;
	if (ret_fault)
		*ret_fault = fault;
	if (off >= obj->size || len == 0)
		return 0;
	end = obj->size - off < len ? obj->size : off + len;
	if (end - off > SSIZE_MAX)
		end = off + SSIZE_MAX;
	if (obj->method == CFS_VERIFY_USERSPACE && !atomic_load_explicit(&obj->tree, memory_order_acquire)) {
		void *whole = NULL;
		int r = get_tree(obj, &whole, NULL, ret_fault);

		if (r < 0)
			return r == -EBADMSG ? -EIO : r;
		if (whole) {
			/* The pass that built the tree read this: serve it. */
			memcpy(buf, (uint8_t *)whole + off, end - off);
			if (ret_whole)
				*ret_whole = whole;
			else
				free(whole);
			return (ssize_t)(end - off);
		}
	}
	/* Windows start on block boundaries so no block is read twice. */
	for (uint64_t o = off; o < end;) {
		uint64_t wend = (o / BS) * BS + WINDOW;
		int r;

		if (wend > end)
			wend = end;
		r = read_window(obj, (uint8_t *)buf + (o - off), o, wend, &fault);
		if (r < 0 && err == 0)
			err = r; /* go on: the caller gets no partial success, but
				    every block is checked and counted */
		o = wend;
	}
	if (err < 0 && ret_fault)
		*ret_fault = fault;
	return err < 0 ? err : (ssize_t)(end - off);
}

ssize_t cfs_object_pread(struct cfs_object *obj, void *buf, size_t len, uint64_t off)
{
	return cfs_object_pread_whole(obj, buf, len, off, NULL, NULL);
}

const char *cfs_fault_describe(const struct cfs_read_fault *f, char *buf, size_t bufsz)
{
	switch (f->kind) {
	case CFS_FAULT_MISMATCH:
		if (f->whole)
			snprintf(buf, bufsz, "the object's data do not match its fs-verity digest "
					     "(no trusted tree: the whole file fails)");
		else
			snprintf(buf, bufsz, "the block at offset %llu does not match the fs-verity digest",
				 (unsigned long long)f->off);
		break;
	case CFS_FAULT_SIZE:
		snprintf(buf, bufsz, "the object changed size (read at offset %llu came back short or long)",
			 (unsigned long long)f->off);
		break;
	case CFS_FAULT_IO:
		if (f->whole)
			snprintf(buf, bufsz, "I/O error from the object store while reading it whole: %s",
				 strerror(f->err));
		else
			snprintf(buf, bufsz, "I/O error from the object store at offset %llu: %s",
				 (unsigned long long)f->off, strerror(f->err));
		break;
	default:
		snprintf(buf, bufsz, "read failed");
		break;
	}
	return buf;
}

int cfs_object_check_all(struct cfs_object *obj)
{
	_cleanup_free_ uint8_t *buf = NULL;
	int err = 0;

	if (obj->method == CFS_VERIFY_OFF)
		return 0;
	if (obj->method == CFS_VERIFY_USERSPACE && !atomic_load_explicit(&obj->tree, memory_order_acquire)) {
		bool built = false;
		int r = get_tree(obj, NULL, &built, NULL);

		if (r < 0)
			return r == -EBADMSG ? -EIO : r;
		if (built)
			return 0; /* that pass hashed every block just now */
	}
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
