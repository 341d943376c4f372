/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Open files and the data path.  A regular file's content comes either
 * from the image (inline or plain data) or, for external files, from an
 * object in the store.
 *
 * Which of two modes a mount runs in is decided at the first OPEN, once
 * INIT has told what the kernel offers:
 *  - no-open (every mount whose reads are daemon-served: an ordinary
 *    user's, or root's without kernel fs-verity in the store): OPEN is
 *    answered ENOSYS, after which the kernel sends no OPEN or RELEASE for
 *    the rest of the connection and keeps the page cache; a READ finds its
 *    object by inode.  The store keeps objects it verified open, with their
 *    trees, so a READ after the first costs no setup.
 *  - open (a mount that may hand the kernel backing files): an external
 *    inode that is open has one struct open_inode holding the object and,
 *    when the kernel reads it directly (passthrough), the one backing id
 *    registered for it; both are released on the inode's last release.
 *    Whether an inode is passthrough or daemon-served is decided once per
 *    open_inode, because the kernel refuses to mix cached and passthrough
 *    opens of one inode.
 * When a READ makes the store read and hash a whole object to build its
 * tree, the rest of that verified data goes straight into the kernel's
 * page cache (push.c), so the object is not read and hashed again.
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

struct open_inode {
	struct open_inode *next;
	uint64_t nid;
	unsigned opens;         /* under files->lock */
	pthread_mutex_t lock;   /* serialises opening the object */
	struct cfs_object *obj; /* set once under ->lock, then read-only */
	int backing_id;         /* >= 0: reads go through the kernel */
	atomic_bool read_error_logged;
};

enum files_mode {
	MODE_UNDECIDED,
	MODE_OPEN,
	MODE_NO_OPEN,
};

struct cfsd_files {
	pthread_mutex_t lock;
	_Atomic int mode;       /* enum files_mode, set once under @lock */
	struct open_inode *buckets[BUCKETS];
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

const char *cfsd_files_mode_name(const struct cfsd *d)
{
	switch (d->files ? atomic_load(&d->files->mode) : MODE_UNDECIDED) {
	case MODE_OPEN:
		return "open";
	case MODE_NO_OPEN:
		return "no-open";
	default:
		return "undecided";
	}
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

/* Why cfs_cas_open_object() or cfs_object_pread() failed, in words. */
static const char *object_error(int r, bool reading)
{
	switch (r) {
	case -EIO:
		return reading ? "data does not match the fs-verity digest (or the object changed size)"
			       : "size or content does not match the image (fs-verity digest)";
	case -ENOENT:
		return "not in any basedir";
	case -EPERM:
		return "refused (a path leaving the store, a symlink, or not a regular file)";
	case -EINVAL:
		return "the redirect is not the path of the fs-verity digest";
	case -EFBIG:
		return "too large for an in-memory Merkle tree";
	default:
		return strerror(-r);
	}
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

/* Get the verified object of external file @ci (a reference), logging a
 * failure once per file.  Returns 0, -EIO or -ENOMEM. */
static int get_object(struct cfsd *d, const struct cfs_inode *ci, const struct cfs_backing *bp,
		      struct cfs_object **ret_obj)
{
	const struct cfs_backing b = *bp;
	char where[1024], what[320];
	int r;

	/*
	 * No redirect: cfs_cas_open_object() could open the object by its
	 * digest, but the kernel's composefs mount never serves such a file:
	 * overlayfs reaches a data-only layer only through a redirect, so the
	 * lookup fails with EIO ("metacopy with no lower data found") while
	 * readdir lists the name.  ops.c fails the lookup the same way, so the
	 * kernel holds no inode of ours to read; refuse here too rather than
	 * serve content the kernel mount would not.
	 */
	if (!b.redirect || !d->cas) {
		r = -ENOENT;
		goto fail_msg;
	}
	r = cfs_cas_open_object(d->cas, b.redirect, b.redirect_len, b.has_digest ? b.digest : NULL,
				ci->size, ret_obj);
	if (r == -ENOKEY) {
		/* verity=require (the store's require_digest) and no digest. */
		if (cfsd_first_error(d, ci->nid)) {
			object_name(&b, what, sizeof(what));
			cfsd_describe_nid(d, ci->nid, where, sizeof(where));
			cfsd_log(FUSE_LOG_ERR, "%s: object %s has no fs-verity digest and verity=require\n",
				 where, what);
		}
		return -EIO;
	}
	if (r == 0)
		return 0;

fail_msg:
	if (r == -ENOENT)
		atomic_fetch_add(&d->stats.objects_missing, 1);
	else if (r == -EPERM || r == -EINVAL || r == -ENAMETOOLONG)
		atomic_fetch_add(&d->stats.objects_refused, 1);
	if (cfsd_first_error(d, ci->nid)) {
		object_name(&b, what, sizeof(what));
		cfsd_describe_nid(d, ci->nid, where, sizeof(where));
		cfsd_log(FUSE_LOG_ERR, "%s: cannot open object %s: %s\n", where, what,
			 !b.redirect ? "no redirect (the kernel mount cannot look it up either)" :
			 !d->cas && r == -ENOENT ? "no basedir= given" : object_error(r, false));
	}
	return r == -ENOMEM ? -ENOMEM : -EIO;
}

/* Open the object of @ci and decide its data path.  Called with oi->lock. */
static int open_object(fuse_req_t req, struct cfsd *d, struct open_inode *oi,
		       const struct cfs_inode *ci, const struct cfs_backing *b)
{
	enum cfs_verify_method m;
	int r;

	r = get_object(d, ci, b, &oi->obj);
	if (r < 0)
		return r;
	m = cfs_object_method(oi->obj);
	if (cfsd_pt_available() && d->passthrough != CFSD_PT_OFF &&
	    (m != CFS_VERIFY_USERSPACE || d->passthrough == CFSD_PT_ALWAYS)) {
		/* passthrough=always: every block checked before the kernel
		 * reads the backing file unchecked (free when the tree is
		 * built now, from this very data). */
		if (m == CFS_VERIFY_USERSPACE) {
			r = cfs_object_check_all(oi->obj);
			if (r < 0) {
				char where[1024];

				oi->obj = cfs_object_unref(oi->obj);
				if (cfsd_first_error(d, ci->nid)) {
					cfsd_describe_nid(d, ci->nid, where, sizeof(where));
					cfsd_log(FUSE_LOG_ERR, "%s: object refused for passthrough: %s\n",
						 where, object_error(r, true));
				}
				return r == -ENOMEM ? -ENOMEM : -EIO;
			}
		}
		r = cfsd_pt_backing_open(req, cfs_object_fd(oi->obj));
		if (r >= 0)
			oi->backing_id = r;
	}
	log_datapath(d, oi->backing_id >= 0, m);
	return 0;
}

/*
 * Decide, at the first OPEN, whether this connection can use passthrough
 * at all: only then does it need OPEN and RELEASE.  Passthrough needs the
 * kernel to have accepted it at INIT, the right to register backing files
 * (CAP_SYS_ADMIN: tried once on the image file) and objects it may hand
 * over: kernel fs-verity in the store, verity=off or passthrough=always.
 */
static enum files_mode decide_mode(fuse_req_t req, struct cfsd *d)
{
	struct cfsd_files *f = d->files;
	enum files_mode mode = atomic_load(&f->mode);
	const char *why = NULL;

	if (mode != MODE_UNDECIDED)
		return mode;
	pthread_mutex_lock(&f->lock);
	mode = atomic_load(&f->mode);
	if (mode == MODE_UNDECIDED) {
		mode = MODE_NO_OPEN;
		if (!d->cas)
			why = "no object store";
		else if (d->passthrough == CFSD_PT_OFF)
			why = "passthrough=off";
		else if (!cfsd_pt_available())
			why = "the kernel offers no passthrough";
		else if (d->verity != CFSD_VERITY_OFF && d->passthrough != CFSD_PT_ALWAYS &&
			 !cfs_cas_kernel_verity_possible(d->cas))
			why = "no kernel fs-verity in the store";
		else {
			int id = cfsd_pt_backing_open(req, d->image_fd);

			if (id >= 0) {
				cfsd_pt_backing_close(req, id);
				mode = MODE_OPEN;
				why = "passthrough possible";
			} else {
				why = "passthrough not permitted";
			}
		}
		atomic_store(&f->mode, mode);
		cfsd_log(FUSE_LOG_NOTICE, "open mode: %s (%s)\n",
			 mode == MODE_OPEN ? "OPEN and RELEASE reach the daemon" :
					     "no-open, the kernel sends no OPEN or RELEASE", why);
	}
	pthread_mutex_unlock(&f->lock);
	return mode;
}

/* The inode of regular file @ino and, when it has content, where that
 * content is (@b zeroed otherwise).  0, or the positive errno to reply
 * with; corrupt overlay metadata is logged and counted in @errors. */
static int file_backing(struct cfsd *d, fuse_ino_t ino, struct cfs_inode *ci, struct cfs_backing *b,
			atomic_uint_fast64_t *errors)
{
	int r = cfsd_get_inode(d, ino, ci);

	if (r < 0)
		return -r;
	if (S_ISDIR(ci->mode))
		return EISDIR;
	if (!S_ISREG(ci->mode))
		return EINVAL;
	memset(b, 0, sizeof(*b));
	if (ci->size > 0) {
		r = cfs_img_get_backing(d->img, ci, b);
		if (r < 0) {
			atomic_fetch_add(errors, 1);
			return cfsd_image_error(d, ci->nid, "overlay metadata", r);
		}
	}
	return 0;
}

void cfsd_op_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct cfsd *d = fuse_req_userdata(req);
	struct cfs_backing b = { 0 };
	struct open_inode *oi;
	struct cfs_inode ci;
	int r;

	atomic_fetch_add(&d->stats.opens, 1);
	if ((fi->flags & O_ACCMODE) != O_RDONLY || (fi->flags & O_TRUNC))
		return (void)fuse_reply_err(req, EROFS);
	if (decide_mode(req, d) == MODE_NO_OPEN) {
		/* The kernel then opens every file itself, with keep_cache,
		 * and sends no RELEASE.  The mount is read-only: the VFS
		 * refuses writes before they reach FUSE. */
		return (void)fuse_reply_err(req, ENOSYS);
	}
	r = file_backing(d, ino, &ci, &b, &d->stats.open_errors);
	if (r > 0)
		return (void)fuse_reply_err(req, r);
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

static void log_read_error(struct cfsd *d, uint64_t nid, const struct cfs_backing *b, off_t off,
			   size_t size, int err, const struct cfs_read_fault *fault)
{
	char where[1024], what[320] = "?", why[256];

	if (!cfsd_first_error(d, nid | CFSD_ERR_READ))
		return;
	cfsd_describe_nid(d, nid, where, sizeof(where));
	if (b)
		object_name(b, what, sizeof(what));
	cfsd_log(FUSE_LOG_ERR, "%s: read of object %s at offset %lld (%zu bytes) failed: %s\n", where,
		 what, (long long)off, size,
		 fault->kind != CFS_FAULT_NONE ? cfs_fault_describe(fault, why, sizeof(why))
					       : object_error(err, true));
}

void cfsd_op_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info *fi)
{
	struct cfsd *d = fuse_req_userdata(req);
	struct open_inode *oi = (struct open_inode *)(uintptr_t)fi->fh;
	_cleanup_(cfs_object_unrefp) struct cfs_object *looked_up = NULL;
	struct cfs_object *obj = NULL;
	struct cfs_backing b = { 0 };
	struct cfs_read_fault fault;
	struct cfs_inode ci;
	void *whole = NULL;
	char *buf;
	ssize_t n;
	int r;

	atomic_fetch_add(&d->stats.reads, 1);
	if (off < 0)
		return (void)fuse_reply_err(req, EINVAL);
	buf = cfsd_thread_buffer(size ? size : 1);
	if (!buf)
		return (void)fuse_reply_err(req, ENOMEM);

	if (oi) {
		obj = oi->obj;
	} else {
		/* No OPEN (no-open mode) or data in the image: by inode. */
		r = file_backing(d, ino, &ci, &b, &d->stats.read_errors);
		if (r > 0)
			return (void)fuse_reply_err(req, r);
		if (ci.size > 0 && b.is_external) {
			r = get_object(d, &ci, &b, &looked_up);
			if (r < 0) {
				atomic_fetch_add(&d->stats.read_errors, 1);
				return (void)fuse_reply_err(req, -r);
			}
			obj = looked_up;
			log_datapath(d, false, cfs_object_method(obj));
		}
	}

	if (!obj) {
		n = cfs_img_read(d->img, &ci, (uint64_t)off, buf, size);
		if (n < 0) {
			atomic_fetch_add(&d->stats.read_errors, 1);
			return (void)fuse_reply_err(req, cfsd_image_error(d, ci.nid, "file data", (int)n));
		}
	} else {
		n = cfs_object_pread_whole(obj, buf, size, (uint64_t)off, &whole, &fault);
		if (n < 0) {
			bool expected = false;

			atomic_fetch_add(&d->stats.read_errors, 1);
			/* One line per object for read failures (the flag spares
			 * the shared table's lock on repeated failures). */
			if (!oi || atomic_compare_exchange_strong(&oi->read_error_logged, &expected, true)) {
				uint64_t nid = oi ? oi->nid : ci.nid;
				struct cfs_inode ci2;
				struct cfs_backing b2;

				if (oi && cfs_img_read_inode(d->img, nid, &ci2) >= 0 &&
				    cfs_img_get_backing(d->img, &ci2, &b2) >= 0)
					log_read_error(d, nid, &b2, off, size, (int)n, &fault);
				else
					log_read_error(d, nid, oi ? NULL : &b, off, size, (int)n, &fault);
			}
			return (void)fuse_reply_err(req, n == -ENOMEM ? ENOMEM : EIO);
		}
	}
	if (whole && !atomic_load(&d->uring_on)) {
		cfsd_push_object(d, ino, whole, cfs_object_size(obj), (uint64_t)off,
				 (uint64_t)off + (uint64_t)n);
		whole = NULL;
	}
	atomic_fetch_add(&d->stats.read_bytes, (uint64_t)n);
	fuse_reply_buf(req, buf, (size_t)n);
	if (whole)
		cfsd_push_object(d, ino, whole, cfs_object_size(obj), (uint64_t)off,
				 (uint64_t)off + (uint64_t)n);
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
	_cleanup_(cfs_object_unrefp) struct cfs_object *looked_up = NULL;
	struct cfs_object *obj = oi ? oi->obj : NULL;
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
	if (!obj && S_ISREG(ci.mode)) {
		struct cfs_backing b;

		if (cfs_img_get_backing(d->img, &ci, &b) >= 0 && b.is_external) {
			r = get_object(d, &ci, &b, &looked_up);
			if (r < 0)
				return (void)fuse_reply_err(req, -r);
			obj = looked_up;
		}
	}
	if (obj) {
		/* Holes of the backing object; its size equals the image's. */
		res = lseek(cfs_object_fd(obj), off, whence);
		if (res < 0)
			return (void)fuse_reply_err(req, errno);
	} else {
		res = whence == SEEK_DATA ? off : (off_t)ci.size;
	}
	fuse_reply_lseek(req, res);
}

