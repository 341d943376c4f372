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
 * page cache (notify_store), so the object is not read and hashed again.
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

enum files_mode {
	MODE_UNDECIDED,
	MODE_OPEN,
	MODE_NO_OPEN,
};

/* A verified whole object waiting to go into the page cache. */
struct push_job {
	struct push_job *next;
	fuse_ino_t ino;
	uint8_t *whole;
	uint64_t size, skip_off, skip_end;
};

#define PUSH_PENDING_MAX (32ULL << 20)

struct cfsd_files {
	pthread_mutex_t lock;
	_Atomic int mode;       /* enum files_mode, set once under @lock */
	/* The pusher thread (io_uring transport), under push_lock. */
	pthread_mutex_t push_lock;
	pthread_cond_t push_cond;
	struct push_job *push_head, *push_tail;
	uint64_t push_bytes;
	bool push_started, push_stop;
	pthread_t push_thread;
	struct open_inode *buckets[BUCKETS];
	/* nids whose open failure was already logged: one line per object */
	uint64_t logged[LOGGED_MAX];
	size_t n_logged;
};

/*
 * Per-thread reply buffers.  A read request asks for up to 1 MiB (libfuse
 * negotiates 256 pages; readahead asks for 128 KiB); a malloc of that size
 * per request may be served by mmap() (glibc's threshold starts at 128 KiB)
 * and then costs page faults and zeroing on every read, so each worker
 * thread keeps one buffer, grown as needed and freed when libfuse ends the
 * thread.
 */
static pthread_key_t tbuf_key;
static pthread_once_t tbuf_once = PTHREAD_ONCE_INIT;
static bool tbuf_key_ok;
static __thread void *tbuf;
static __thread size_t tbuf_cap;

static void tbuf_key_init(void)
{
	tbuf_key_ok = pthread_key_create(&tbuf_key, free) == 0;
}

void *cfsd_thread_buffer(size_t size)
{
	const size_t grain = 64 << 10;
	size_t cap;

	if (size <= tbuf_cap)
		return tbuf;
	pthread_once(&tbuf_once, tbuf_key_init);
	if (!tbuf_key_ok)
		return NULL;
	cap = size > SIZE_MAX - grain ? size : (size + grain - 1) / grain * grain;
	free(tbuf);
	tbuf = malloc(cap);
	tbuf_cap = tbuf ? cap : 0;
	/* The key's destructor frees it at thread exit. */
	(void)pthread_setspecific(tbuf_key, tbuf);
	return tbuf;
}

/* The calling thread's buffer (the main thread runs no key destructor). */
static void thread_buffer_free(void)
{
	free(tbuf);
	tbuf = NULL;
	tbuf_cap = 0;
	if (tbuf_key_ok)
		(void)pthread_setspecific(tbuf_key, NULL);
}

int cfsd_files_new(struct cfsd *d)
{
	struct cfsd_files *f = calloc(1, sizeof(*f));
	if (!f)
		return -ENOMEM;
	pthread_mutex_init(&f->lock, NULL);
	pthread_mutex_init(&f->push_lock, NULL);
	pthread_cond_init(&f->push_cond, NULL);
	d->files = f;
	return 0;
}

void cfsd_files_stop(struct cfsd *d)
{
	struct cfsd_files *f = d->files;

	if (!f)
		return;
	pthread_mutex_lock(&f->push_lock);
	f->push_stop = true;
	pthread_cond_broadcast(&f->push_cond);
	pthread_mutex_unlock(&f->push_lock);
	if (f->push_started)
		pthread_join(f->push_thread, NULL);
	f->push_started = false;
	while (f->push_head) {
		struct push_job *j = f->push_head;

		f->push_head = j->next;
		free(j->whole);
		free(j);
	}
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
	cfsd_files_stop(d);
	pthread_cond_destroy(&f->push_cond);
	pthread_mutex_destroy(&f->push_lock);
	pthread_mutex_destroy(&f->lock);
	free(f);
	d->files = NULL;
	thread_buffer_free();
}

bool cfsd_first_error(struct cfsd *d, uint64_t key)
{
	struct cfsd_files *f = d->files;
	bool first = true, now_full = false;

	pthread_mutex_lock(&f->lock);
	for (size_t i = 0; i < f->n_logged; i++) {
		if (f->logged[i] == key) {
			first = false;
			break;
		}
	}
	if (first && f->n_logged < LOGGED_MAX) {
		f->logged[f->n_logged++] = key;
		now_full = f->n_logged == LOGGED_MAX;
	} else if (first) {
		/* Full: log no more, or a hostile image with many bad inodes
		 * would have every request log and walk the tree for a name. */
		first = false;
	}
	pthread_mutex_unlock(&f->lock);
	if (now_full)
		cfsd_log(FUSE_LOG_WARNING, "%d objects with errors logged: no more are\n", LOGGED_MAX);
	if (first)
		cfsd_notify_status(d, "serving");
	return first;
}

void cfsd_notify_status(struct cfsd *d, const char *state)
{
	struct cfs_cas_stats cs = { 0 };
	unsigned long long logged;
	char msg[256];

	if (!d->notify)
		return;
	if (d->cas)
		cfs_cas_get_stats(d->cas, &cs);
	pthread_mutex_lock(&d->files->lock);
	logged = d->files->n_logged;
	pthread_mutex_unlock(&d->files->lock);
	snprintf(msg, sizeof(msg), "STATUS=%s; %llu objects opened with verification; %llu files or objects with errors%s",
		 state,
		 (unsigned long long)(cs.objects_by_method[CFS_VERIFY_KERNEL] +
				      cs.objects_by_method[CFS_VERIFY_USERSPACE]),
		 logged, logged ? " (see the log)" : "");
	(void)cfsd_notify(msg);
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

/*
 * Hand the verified copy @whole of a whole object to the kernel's page
 * cache, apart from [@skip_off, @skip_end), the pages of the READ being
 * answered (the kernel holds them locked until the reply fills them).
 * Never from the single-threaded loop: a store into a page that another
 * READ holds locked waits for that READ's reply, which only another thread
 * can send.  Best effort: a page the kernel does not take is read again
 * later, verified again.
 */
static void push_to_cache(struct cfsd *d, fuse_ino_t ino, const uint8_t *whole, uint64_t size,
			  uint64_t skip_off, uint64_t skip_end)
{
	const uint64_t chunk = 1 << 20;
	uint64_t ranges[2][2] = { { 0, skip_off & ~(uint64_t)4095 }, { skip_end, size } };

	if (!d->se)
		return;
	if (skip_end < size && skip_end % 4096)
		ranges[1][0] = (skip_end + 4095) & ~(uint64_t)4095;
	for (int i = 0; i < 2; i++) {
		for (uint64_t o = ranges[i][0]; o < ranges[i][1];) {
			uint64_t n = ranges[i][1] - o < chunk ? ranges[i][1] - o : chunk;
			struct fuse_bufvec bv = FUSE_BUFVEC_INIT((size_t)n);
			int r;

			bv.buf[0].mem = (void *)(whole + o);
			r = fuse_lowlevel_notify_store(d->se, ino, (off_t)o, &bv, 0);
			if (r < 0)
				return; /* e.g. -ENOENT: the kernel dropped the inode */
			atomic_fetch_add(&d->stats.pushed_bytes, n);
			o += n;
		}
	}
}

static void *pusher(void *p)
{
	struct cfsd *d = p;
	struct cfsd_files *f = d->files;

	pthread_mutex_lock(&f->push_lock);
	for (;;) {
		struct push_job *j;

		while (!f->push_head && !f->push_stop)
			pthread_cond_wait(&f->push_cond, &f->push_lock);
		if (f->push_stop)
			break;
		j = f->push_head;
		f->push_head = j->next;
		if (!f->push_head)
			f->push_tail = NULL;
		pthread_mutex_unlock(&f->push_lock);
		push_to_cache(d, j->ino, j->whole, j->size, j->skip_off, j->skip_end);
		pthread_mutex_lock(&f->push_lock);
		f->push_bytes -= j->size;
		free(j->whole);
		free(j);
	}
	pthread_mutex_unlock(&f->push_lock);
	return NULL;
}

/*
 * The rest of a whole verified object for the page cache.  On /dev/fuse,
 * before the reply (so the reader's next read finds the pages).  Never
 * from the single-threaded loop or from an io_uring queue thread, where a
 * store into a page that another READ holds locked would wait for that
 * READ's reply, which only this thread could send: with io_uring a pusher
 * thread does it after the reply.  Takes @whole.
 */
static void hand_over(struct cfsd *d, fuse_ino_t ino, uint8_t *whole, uint64_t size, uint64_t skip_off,
		      uint64_t skip_end)
{
	struct cfsd_files *f = d->files;
	struct push_job *j;

	if (!atomic_load(&d->uring_on)) {
		if (!d->single_thread)
			push_to_cache(d, ino, whole, size, skip_off, skip_end);
		free(whole);
		return;
	}
	j = malloc(sizeof(*j));
	pthread_mutex_lock(&f->push_lock);
	if (j && !f->push_stop && f->push_bytes + size <= PUSH_PENDING_MAX &&
	    (f->push_started || pthread_create(&f->push_thread, NULL, pusher, d) == 0)) {
		f->push_started = true;
		*j = (struct push_job){ .ino = ino, .whole = whole, .size = size, .skip_off = skip_off,
					.skip_end = skip_end };
		if (f->push_tail)
			f->push_tail->next = j;
		else
			f->push_head = j;
		f->push_tail = j;
		f->push_bytes += size;
		pthread_cond_signal(&f->push_cond);
		j = NULL;
		whole = NULL;
	}
	pthread_mutex_unlock(&f->push_lock);
	free(j);
	free(whole); /* not queued: read again later, verified again */
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
		hand_over(d, ino, whole, cfs_object_size(obj), (uint64_t)off, (uint64_t)off + (uint64_t)n);
		whole = NULL;
	}
	atomic_fetch_add(&d->stats.read_bytes, (uint64_t)n);
	fuse_reply_buf(req, buf, (size_t)n);
	if (whole)
		hand_over(d, ino, whole, cfs_object_size(obj), (uint64_t)off, (uint64_t)off + (uint64_t)n);
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

static void put(FILE *out, const char *name, uint64_t v)
{
	fprintf(out, "%s %" PRIu64 "\n", name, v);
}

void cfsd_stats_print(struct cfsd *d, FILE *out)
{
	static const enum cfs_verify_method methods[] = {
		CFS_VERIFY_KERNEL, CFS_VERIFY_USERSPACE, CFS_VERIFY_OFF
	};
	const struct cfsd_stats *s = &d->stats;
	struct cfs_cas_stats cs = { 0 };
	const char *sep = "";
	uint64_t push_pending;

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

	fprintf(out, "open_mode %s\n", atomic_load(&d->files->mode) == MODE_OPEN      ? "open" :
				       atomic_load(&d->files->mode) == MODE_NO_OPEN ? "no-open" :
										      "undecided");
	put(out, "opens", atomic_load(&s->opens));
	put(out, "opens_image", atomic_load(&s->opens_image));
	put(out, "opens_daemon", atomic_load(&s->opens_daemon));
	put(out, "opens_passthrough", atomic_load(&s->opens_passthrough));
	put(out, "open_errors", atomic_load(&s->open_errors));
	put(out, "reads", atomic_load(&s->reads));
	put(out, "read_bytes", atomic_load(&s->read_bytes));
	put(out, "read_errors", atomic_load(&s->read_errors));
	put(out, "pushed_bytes", atomic_load(&s->pushed_bytes));
	pthread_mutex_lock(&d->files->push_lock);
	push_pending = d->files->push_bytes;
	pthread_mutex_unlock(&d->files->push_lock);
	put(out, "push_pending_bytes", push_pending);
	put(out, "uring_requests", cfsd_uring_requests());
	put(out, "lookups", atomic_load(&s->lookups));
	put(out, "readdirs", atomic_load(&s->readdirs));
	put(out, "opendirs", atomic_load(&s->opendirs));
	put(out, "getattrs", atomic_load(&s->getattrs));
	put(out, "getxattrs", atomic_load(&s->getxattrs));
	put(out, "listxattrs", atomic_load(&s->listxattrs));
	put(out, "readlinks", atomic_load(&s->readlinks));
	put(out, "objects_kernel", cs.objects_by_method[CFS_VERIFY_KERNEL]);
	put(out, "objects_userspace", cs.objects_by_method[CFS_VERIFY_USERSPACE]);
	put(out, "objects_unverified", cs.objects_by_method[CFS_VERIFY_OFF]);
	put(out, "cas_objects_opened", cs.objects_opened);
	put(out, "cas_objects_evicted", cs.objects_evicted);
	put(out, "cas_idle_objects", cs.idle_objects);
	put(out, "cas_bytes_read", cs.bytes_read);
	put(out, "cas_blocks_hashed", cs.blocks_hashed);
	put(out, "cas_trees_from_store", cs.trees_from_store);
	put(out, "cas_read_io_errors", cs.read_io_errors);
	put(out, "cas_objects_mismatched", cs.objects_mismatched);
	put(out, "cas_size_mismatches", cs.size_mismatches);
	put(out, "objects_missing", atomic_load(&s->objects_missing));
	put(out, "objects_refused", atomic_load(&s->objects_refused));
	put(out, "cas_trees_built", cs.trees_built);
	put(out, "cas_trees_from_memory", cs.trees_from_memory);
	put(out, "cas_trees_from_disk", cs.trees_from_disk);
	put(out, "cas_trees_rejected", cs.trees_rejected);
	put(out, "cas_trees_written", cs.trees_written);
	put(out, "cas_tree_write_errors", cs.tree_write_errors);
	put(out, "cas_blocks_failed", cs.blocks_failed);
	put(out, "cas_lru_bytes", cs.lru_bytes);
}
