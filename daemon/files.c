/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Open files and the data path.  A regular file's content comes either
 * from the image (inline or plain data: fh == 0) or, for external files,
 * from an object in the store.  An external inode that is open has one
 * struct open_inode holding the verified object and, when the kernel reads
 * it directly (passthrough), the one backing id registered for it; both are
 * released on the inode's last release.  Whether an inode is passthrough or
 * daemon-served is decided once per open_inode, because the kernel refuses
 * to mix cached and passthrough opens of one inode.
 */
#include "config.h"

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cfsd.h"

#define BUCKETS 1024
#define LOGGED_MAX 4096

struct open_inode {
	struct open_inode *next;
	uint64_t nid;
	unsigned opens;         /* under files->lock */
	pthread_mutex_t lock;   /* serialises opening the object */
	struct cfs_object *obj; /* set once under ->lock, then read-only */
	int backing_id;         /* >= 0: reads go through the kernel */
	atomic_bool read_error_logged;
};

struct cfsd_files {
	pthread_mutex_t lock;
	struct open_inode *buckets[BUCKETS];
	/* nids whose open failure was already logged: one line per object */
	uint64_t logged[LOGGED_MAX];
	size_t n_logged;
};

int cfsd_files_new(struct cfsd *d)
{
	struct cfsd_files *f = calloc(1, sizeof(*f));
	if (!f)
		return -ENOMEM;
	pthread_mutex_init(&f->lock, NULL);
	d->files = f;
	return 0;
}

static void open_inode_free(fuse_req_t req, struct open_inode *oi)
{
	if (oi->backing_id >= 0)
		cfsd_pt_backing_close(req, oi->backing_id);
	cfs_object_unref(oi->obj);
	pthread_mutex_destroy(&oi->lock);
	free(oi);
}

void cfsd_files_free(struct cfsd *d)
{
	struct cfsd_files *f = d->files;
	if (!f)
		return;
	for (size_t i = 0; i < BUCKETS; i++) {
		while (f->buckets[i]) {
			struct open_inode *oi = f->buckets[i];
			f->buckets[i] = oi->next;
			open_inode_free(NULL, oi);
		}
	}
	pthread_mutex_destroy(&f->lock);
	free(f);
	d->files = NULL;
}

/* True the first time it is called for @nid. */
bool cfsd_first_error(struct cfsd *d, uint64_t nid)
{
	struct cfsd_files *f = d->files;
	bool first = true;

	pthread_mutex_lock(&f->lock);
	for (size_t i = 0; i < f->n_logged; i++) {
		if (f->logged[i] == nid) {
			first = false;
			break;
		}
	}
	if (first && f->n_logged < LOGGED_MAX)
		f->logged[f->n_logged++] = nid;
	pthread_mutex_unlock(&f->lock);
	return first;
}

static struct open_inode *open_inode_get(struct cfsd *d, uint64_t nid)
{
	struct cfsd_files *f = d->files;
	struct open_inode **head = &f->buckets[nid % BUCKETS], *oi;

	pthread_mutex_lock(&f->lock);
	for (oi = *head; oi; oi = oi->next)
		if (oi->nid == nid)
			break;
	if (!oi) {
		oi = calloc(1, sizeof(*oi));
		if (oi) {
			oi->nid = nid;
			oi->backing_id = -1;
			pthread_mutex_init(&oi->lock, NULL);
			oi->next = *head;
			*head = oi;
		}
	}
	if (oi)
		oi->opens++;
	pthread_mutex_unlock(&f->lock);
	return oi;
}

static void open_inode_put(fuse_req_t req, struct cfsd *d, struct open_inode *oi)
{
	struct cfsd_files *f = d->files;
	bool last;

	pthread_mutex_lock(&f->lock);
	last = --oi->opens == 0;
	if (last) {
		struct open_inode **p = &f->buckets[oi->nid % BUCKETS];
		while (*p != oi)
			p = &(*p)->next;
		*p = oi->next;
	}
	pthread_mutex_unlock(&f->lock);
	if (last)
		open_inode_free(req, oi);
}

static void object_name(const struct cfs_backing *b, char *buf, size_t bufsz)
{
	if (b->redirect) {
		size_t n = b->redirect_len < bufsz - 1 ? b->redirect_len : bufsz - 1;
		memcpy(buf, b->redirect, n);
		buf[n] = '\0';
	} else if (b->has_digest) {
		char hex[2 * CFS_DIGEST_SIZE + 1];
		cfs_digest_to_hex(b->digest, hex);
		snprintf(buf, bufsz, "%s", hex);
	} else {
		snprintf(buf, bufsz, "(no redirect)");
	}
}

/* Read the whole object once, so that every block has been checked before
 * the kernel is allowed to read the backing file unchecked. */
static int verify_whole(struct cfs_object *obj, uint64_t size)
{
	const size_t chunk = 1 << 20;
	_cleanup_free_ char *buf = malloc(chunk);
	uint64_t off = 0;

	if (!buf)
		return -ENOMEM;
	while (off < size) {
		size_t want = size - off < chunk ? (size_t)(size - off) : chunk;
		ssize_t n = cfs_object_pread(obj, buf, want, off);
		if (n < 0)
			return (int)n;
		if ((size_t)n != want)
			return -EIO;
		off += (uint64_t)n;
	}
	return 0;
}

static void log_datapath(struct cfsd *d, bool passthrough, enum cfs_verify_method m)
{
	bool expected = false;
	if (!atomic_compare_exchange_strong(&d->logged_datapath, &expected, true))
		return;
	cfsd_log(FUSE_LOG_NOTICE, "data path: %s, verification: %s, io: %s\n",
		 passthrough ? "kernel passthrough" : "daemon-served reads",
		 cfs_verify_method_name(m), d->cas ? cfs_cas_io_backend(d->cas) : "none");
}

/* Open the object of @ci and decide its data path.  Called with oi->lock. */
static int open_object(fuse_req_t req, struct cfsd *d, struct open_inode *oi,
		       const struct cfs_inode *ci, const struct cfs_backing *bp)
{
	const struct cfs_backing b = *bp;
	char where[1024], what[320];
	enum cfs_verify_method m;
	int r;

	object_name(&b, what, sizeof(what));
	if (!b.redirect) {
		r = -ENOENT;
		goto fail_msg;
	}
	if (!b.has_digest && d->verity == CFSD_VERITY_REQUIRE) {
		if (cfsd_first_error(d, ci->nid)) {
			cfsd_describe_nid(d, ci->nid, where, sizeof(where));
			cfsd_log(FUSE_LOG_ERR, "%s: object %s has no fs-verity digest and verity=require\n",
				 where, what);
		}
		return -EIO;
	}
	if (!d->cas) {
		r = -ENOENT;
		goto fail_msg;
	}
	r = cfs_cas_open_object(d->cas, b.redirect, b.redirect_len, b.has_digest ? b.digest : NULL,
				ci->size, &oi->obj);
	if (r < 0)
		goto fail_msg;

	m = cfs_object_method(oi->obj);
	if (cfsd_pt_available() && d->passthrough != CFSD_PT_OFF &&
	    (m != CFS_VERIFY_USERSPACE || d->passthrough == CFSD_PT_ALWAYS)) {
		if (m == CFS_VERIFY_USERSPACE) {
			r = verify_whole(oi->obj, ci->size);
			if (r < 0) {
				oi->obj = cfs_object_unref(oi->obj);
				goto fail_msg;
			}
		}
		r = cfsd_pt_backing_open(req, cfs_object_fd(oi->obj));
		if (r >= 0)
			oi->backing_id = r;
	}
	log_datapath(d, oi->backing_id >= 0, m);
	return 0;

fail_msg:
	if (cfsd_first_error(d, ci->nid)) {
		cfsd_describe_nid(d, ci->nid, where, sizeof(where));
		cfsd_log(FUSE_LOG_ERR, "%s: cannot open object %s: %s\n", where, what,
			 !d->cas && r == -ENOENT ? "no basedir= given" : strerror(-r));
	}
	return r == -ENOMEM ? -ENOMEM : -EIO;
}

void cfsd_op_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct cfsd *d = fuse_req_userdata(req);
	struct cfs_backing b = { 0 };
	struct open_inode *oi;
	struct cfs_inode ci;
	int r;

	if ((fi->flags & O_ACCMODE) != O_RDONLY || (fi->flags & O_TRUNC))
		return (void)fuse_reply_err(req, EROFS);
	r = cfsd_get_inode(d, ino, &ci);
	if (r < 0)
		return (void)fuse_reply_err(req, -r);
	if (S_ISDIR(ci.mode))
		return (void)fuse_reply_err(req, EISDIR);
	if (!S_ISREG(ci.mode))
		return (void)fuse_reply_err(req, EINVAL);

	if (ci.size > 0) {
		r = cfs_img_get_backing(d->img, &ci, &b);
		if (r < 0) {
			atomic_fetch_add(&d->stats.open_errors, 1);
			if (cfsd_first_error(d, ci.nid)) {
				char where[1024];
				cfsd_describe_nid(d, ci.nid, where, sizeof(where));
				cfsd_log(FUSE_LOG_ERR, "%s: corrupt overlay metadata: %s\n", where,
					 strerror(-r));
			}
			return (void)fuse_reply_err(req, EIO);
		}
	}
	if (ci.size == 0 || !b.is_external) {
		/* Content lives in the image, which never changes. */
		fi->fh = 0;
		fi->keep_cache = 1;
		atomic_fetch_add(&d->stats.opens_image, 1);
		fuse_reply_open(req, fi);
		return;
	}

	oi = open_inode_get(d, ci.nid);
	if (!oi)
		return (void)fuse_reply_err(req, ENOMEM);
	pthread_mutex_lock(&oi->lock);
	r = oi->obj ? 0 : open_object(req, d, oi, &ci, &b);
	pthread_mutex_unlock(&oi->lock);
	if (r < 0) {
		atomic_fetch_add(&d->stats.open_errors, 1);
		open_inode_put(req, d, oi);
		return (void)fuse_reply_err(req, -r);
	}

	fi->fh = (uint64_t)(uintptr_t)oi;
	if (oi->backing_id >= 0) {
		atomic_fetch_add(&d->stats.opens_passthrough, 1);
		fi->keep_cache = 0;
		if (cfsd_pt_reply_open(req, fi, oi->backing_id) < 0) {
			/* The kernel never saw the open: undo it.  The request
			 * is gone with the reply. */
			open_inode_put(NULL, d, oi);
		}
		return;
	}
	atomic_fetch_add(&d->stats.opens_daemon, 1);
	fi->keep_cache = 1;
	if (fuse_reply_open(req, fi) < 0)
		open_inode_put(NULL, d, oi);
}

void cfsd_op_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info *fi)
{
	struct cfsd *d = fuse_req_userdata(req);
	struct open_inode *oi = (struct open_inode *)(uintptr_t)fi->fh;
	_cleanup_free_ char *buf = NULL;
	ssize_t n;

	atomic_fetch_add(&d->stats.reads, 1);
	if (off < 0)
		return (void)fuse_reply_err(req, EINVAL);
	buf = malloc(size ? size : 1);
	if (!buf)
		return (void)fuse_reply_err(req, ENOMEM);

	if (!oi) {
		struct cfs_inode ci;
		int r = cfsd_get_inode(d, ino, &ci);
		if (r < 0)
			return (void)fuse_reply_err(req, -r);
		n = cfs_img_read(d->img, &ci, (uint64_t)off, buf, size);
		if (n < 0) {
			if (cfsd_first_error(d, ci.nid))
				cfsd_log(FUSE_LOG_ERR, "image: cannot read data of nid %llu: %s\n",
					 (unsigned long long)ci.nid, strerror((int)-n));
			atomic_fetch_add(&d->stats.read_errors, 1);
			return (void)fuse_reply_err(req, n == -ENOMEM ? ENOMEM : EIO);
		}
	} else {
		n = cfs_object_pread(oi->obj, buf, size, (uint64_t)off);
		if (n < 0) {
			bool expected = false;
			atomic_fetch_add(&d->stats.read_errors, 1);
			/* One line per object for read failures, kept apart from
			 * open failures of the same nid by the top bit (nids are
			 * 32-byte slot numbers and never reach it). */
			if (atomic_compare_exchange_strong(&oi->read_error_logged, &expected, true) &&
			    cfsd_first_error(d, oi->nid ^ (1ULL << 63))) {
				char where[1024];
				struct cfs_inode ci;
				struct cfs_backing b;
				char what[320] = "?";
				cfsd_describe_nid(d, oi->nid, where, sizeof(where));
				if (cfs_img_read_inode(d->img, oi->nid, &ci) >= 0 &&
				    cfs_img_get_backing(d->img, &ci, &b) >= 0)
					object_name(&b, what, sizeof(what));
				cfsd_log(FUSE_LOG_ERR,
					 "%s: read of object %s at offset %lld (%zu bytes) failed: %s\n",
					 where, what, (long long)off, size, strerror((int)-n));
			}
			return (void)fuse_reply_err(req, n == -ENOMEM ? ENOMEM : EIO);
		}
	}
	atomic_fetch_add(&d->stats.read_bytes, (uint64_t)n);
	fuse_reply_buf(req, buf, (size_t)n);
}

void cfsd_op_release(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct cfsd *d = fuse_req_userdata(req);
	struct open_inode *oi = (struct open_inode *)(uintptr_t)fi->fh;
	if (oi)
		open_inode_put(req, d, oi);
	fuse_reply_err(req, 0);
}

void cfsd_op_lseek(fuse_req_t req, fuse_ino_t ino, off_t off, int whence, struct fuse_file_info *fi)
{
	struct cfsd *d = fuse_req_userdata(req);
	struct open_inode *oi = (struct open_inode *)(uintptr_t)fi->fh;
	struct cfs_inode ci;
	off_t res;
	int r;

	if (whence != SEEK_DATA && whence != SEEK_HOLE)
		return (void)fuse_reply_err(req, EINVAL);
	r = cfsd_get_inode(d, ino, &ci);
	if (r < 0)
		return (void)fuse_reply_err(req, -r);
	if (off < 0)
		return (void)fuse_reply_err(req, EINVAL);
	if ((uint64_t)off >= ci.size)
		return (void)fuse_reply_err(req, ENXIO);
	if (oi) {
		/* Holes of the backing object; its size equals the image's. */
		res = lseek(cfs_object_fd(oi->obj), off, whence);
		if (res < 0)
			return (void)fuse_reply_err(req, errno);
	} else {
		res = whence == SEEK_DATA ? off : (off_t)ci.size;
	}
	fuse_reply_lseek(req, res);
}

void cfsd_stats_print(struct cfsd *d, FILE *out)
{
	fprintf(out, "opens_image %" PRIuFAST64 "\n", atomic_load(&d->stats.opens_image));
	fprintf(out, "opens_daemon %" PRIuFAST64 "\n", atomic_load(&d->stats.opens_daemon));
	fprintf(out, "opens_passthrough %" PRIuFAST64 "\n", atomic_load(&d->stats.opens_passthrough));
	fprintf(out, "open_errors %" PRIuFAST64 "\n", atomic_load(&d->stats.open_errors));
	fprintf(out, "reads %" PRIuFAST64 "\n", atomic_load(&d->stats.reads));
	fprintf(out, "read_bytes %" PRIuFAST64 "\n", atomic_load(&d->stats.read_bytes));
	fprintf(out, "read_errors %" PRIuFAST64 "\n", atomic_load(&d->stats.read_errors));
	fprintf(out, "lookups %" PRIuFAST64 "\n", atomic_load(&d->stats.lookups));
	fprintf(out, "readdirs %" PRIuFAST64 "\n", atomic_load(&d->stats.readdirs));
}
