/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * composefs-fuse internals.  Files, each calling only those below it:
 *   main.c, options.c, lifecycle.c   startup, options, the process around the mount
 *   stats.c                          the stats_file= report
 *   ops.c                            the request table, metadata operations
 *   files.c, xattr.c                 open files and the data path; xattrs
 *   push.c                           verified data into the page cache
 *   inode.c, buffer.c                inode numbers, image errors; reply buffers
 *   passthrough.c, uring.c           what libfuse 3.14 lacks (passthrough, io_uring)
 *   log.c                            messages, failures logged once, sd_notify
 */
#pragma once

#define FUSE_USE_VERSION 312

#include <fuse_lowlevel.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/uio.h>
#include <unistd.h>

#include "cfs-image.h"
#include "cas.h"

/* The kernel's page size: FUSE counts max_pages in it, and the page cache
 * takes whole pages. */
static inline size_t cfsd_page_size(void)
{
	return (size_t)sysconf(_SC_PAGESIZE);
}

/* nid <-> FUSE inode number.  The root nid becomes FUSE_ROOT_ID (1); every
 * other nid n becomes n + 2, so no non-root nid can land on 1 and the
 * mapping is a bijection between nids and the inode numbers handed out. */
static inline fuse_ino_t cfsd_nid_to_ino(uint64_t root_nid, uint64_t nid)
{
	return nid == root_nid ? FUSE_ROOT_ID : (fuse_ino_t)(nid + 2);
}

/* Returns 0 and the nid, or -ESTALE for a number that no nid maps to. */
static inline int cfsd_ino_to_nid(uint64_t root_nid, fuse_ino_t ino, uint64_t *ret_nid)
{
	if (ino == FUSE_ROOT_ID) {
		*ret_nid = root_nid;
		return 0;
	}
	if (ino < 2 || ino - 2 == root_nid)
		return -ESTALE;
	*ret_nid = ino - 2;
	return 0;
}

enum cfsd_verity {
	CFSD_VERITY_ON,      /* verify objects that have a digest */
	CFSD_VERITY_REQUIRE, /* and refuse external files without one */
	CFSD_VERITY_OFF,
};

enum cfsd_passthrough {
	CFSD_PT_AUTO,   /* only when integrity holds for the life of the file */
	CFSD_PT_OFF,
	CFSD_PT_ALWAYS, /* also for userspace-verified objects, checked whole at open */
};

struct cfsd_stats {
	atomic_uint_fast64_t opens;             /* open requests reaching us */
	atomic_uint_fast64_t opens_image;       /* data served from the image */
	atomic_uint_fast64_t opens_daemon;      /* external, read through cas */
	atomic_uint_fast64_t opens_passthrough; /* external, read by the kernel */
	atomic_uint_fast64_t open_errors;
	atomic_uint_fast64_t reads;             /* read requests reaching us */
	atomic_uint_fast64_t read_bytes;
	atomic_uint_fast64_t read_errors;
	atomic_uint_fast64_t pushed_bytes;      /* verified data stored into the page cache */
	atomic_uint_fast64_t objects_missing;   /* object not in any basedir (each request) */
	atomic_uint_fast64_t objects_refused;   /* path refused: leaves the store, symlink... */
	atomic_uint_fast64_t lookups;           /* lookup requests reaching us */
	atomic_uint_fast64_t readdirs;          /* readdir(plus) requests */
	atomic_uint_fast64_t opendirs;          /* opendir requests reaching us */
	atomic_uint_fast64_t getattrs;
	atomic_uint_fast64_t getxattrs;
	atomic_uint_fast64_t listxattrs;
	atomic_uint_fast64_t readlinks;
};

enum cfsd_xattrs {
	CFSD_XATTRS_AUTO,   /* no visible xattr in the image: tell the kernel none exist */
	CFSD_XATTRS_ALWAYS, /* answer every xattr request (the kernel mount's errnos) */
};

/* Option values, indexed by the enums (the first is the default). */
static const char *const cfsd_verity_names[] = {
	[CFSD_VERITY_ON] = "on", [CFSD_VERITY_REQUIRE] = "require", [CFSD_VERITY_OFF] = "off",
};
static const char *const cfsd_passthrough_names[] = {
	[CFSD_PT_AUTO] = "auto", [CFSD_PT_OFF] = "off", [CFSD_PT_ALWAYS] = "always",
};

static const char *const cfsd_xattrs_names[] = {
	[CFSD_XATTRS_AUTO] = "auto", [CFSD_XATTRS_ALWAYS] = "always",
};

static inline const char *cfsd_verity_name(enum cfsd_verity v)
{
	return cfsd_verity_names[v];
}

static inline const char *cfsd_passthrough_name(enum cfsd_passthrough p)
{
	return cfsd_passthrough_names[p];
}

struct cfsd_files;
struct cfsd_push;
struct cfsd_logged;

#define CFSD_MAX_THREADS 1024

struct cfsd {
	struct cfs_image *img;
	struct cfs_img_info info;
	struct cfs_cas *cas; /* NULL without basedir= */
	enum cfsd_verity verity;
	enum cfsd_passthrough passthrough;
	double timeout;      /* entry/attr timeout, seconds */
	unsigned max_threads; /* threads=, 0: libfuse's default */
	struct fuse_session *se;
	struct cfsd_files *files;  /* files.c: open inodes, the open mode */
	struct cfsd_push *push;    /* push.c: verified data for the page cache */
	struct cfsd_logged *logged; /* log.c: failures already logged */
	struct cfsd_stats stats;
	atomic_bool logged_datapath;
	bool notify;         /* send READY=1 to $NOTIFY_SOCKET once up */
	bool single_thread;  /* the session loop runs on one thread */
	int image_fd;        /* the image file, O_RDONLY (probes passthrough) */
	enum cfsd_xattrs xattrs;
	bool uring;          /* uring=auto: FUSE over io_uring when the kernel offers it */
	atomic_bool uring_on; /* the ring serves requests (one thread per queue) */
	bool image_has_xattrs; /* an xattr some reader could see (not overlay-internal) */
	bool image_has_acls;   /* a system.posix_acl_* xattr */
	bool noacl;            /* noacl: never have the kernel enforce ACLs */
};

/* The daemon instance (one per process); used where libfuse gives no
 * userdata. */
extern struct cfsd *cfsd_global;

/* Log through fuse_log(); cfsd_log_errno() returns @err (negative). */
void cfsd_log(enum fuse_log_level lvl, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
int cfsd_log_errno(enum fuse_log_level lvl, int err, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

/* Log to stderr, with "<N>" priorities when stderr is the journal. */
void cfsd_log_init(void);
/* From now on, log to syslog (after daemonizing). */
void cfsd_log_to_syslog(void);

/* sd_notify protocol: send @msg to $NOTIFY_SOCKET if set.  Returns 0, 1 if
 * unset, or -errno. */
int cfsd_notify(const char *msg);
/* With $NOTIFY_SOCKET: tell the service manager STATUS=@state and the
 * counts (objects opened with verification, files with errors); sent at READY, on each
 * newly logged error and at stop. */
void cfsd_notify_status(struct cfsd *d, const char *state);

/* The table of failures already logged (d->logged). */
int cfsd_logged_new(struct cfsd *d);
void cfsd_logged_free(struct cfsd *d);
/* Keys of cfsd_first_error(): a nid alone for open failures, with one of
 * these bits for the other kinds of failure, so that each is logged once.
 * nids are 32-byte slot numbers of a mapping and never reach these bits. */
#define CFSD_ERR_READ (UINT64_C(1) << 63)  /* reads of an external object */
#define CFSD_ERR_IMAGE (UINT64_C(1) << 62) /* corrupt image metadata or data */
/* True the first time it is called for @key: log one line per object. */
bool cfsd_first_error(struct cfsd *d, uint64_t key);

/* buffer.c: a buffer of at least @size bytes owned by the calling thread,
 * valid until its next call on this thread; NULL if out of memory.  Freed at
 * thread exit; cfsd_thread_buffer_free() frees the calling thread's (the
 * main thread runs no destructor). */
void *cfsd_thread_buffer(size_t size);
void cfsd_thread_buffer_free(void);

/* inode.c */
/* Read inode @ino into @ret.  -ESTALE/-EFSCORRUPTED on bad numbers. */
int cfsd_get_inode(struct cfsd *d, fuse_ino_t ino, struct cfs_inode *ret_inode);
/* Best effort: the path of @nid in the image for log messages ("/a/b"), or
 * "nid N" if it cannot be found.  Walks the tree; only used on errors. */
void cfsd_describe_nid(struct cfsd *d, uint64_t nid, char *buf, size_t bufsz);
/* Log that the image metadata of @nid (@what: "inode", "directory", ...)
 * is unusable, once per nid and naming its path; returns the positive errno
 * to reply with (ENOMEM or EIO). */
int cfsd_image_error(struct cfsd *d, uint64_t nid, const char *what, int err);

/* xattr.c */
/* Find out whether the image holds xattrs a reader could see and POSIX
 * ACLs (one walk over every inode, before mounting). */
int cfsd_scan_xattrs(struct cfsd *d);
void cfsd_op_getxattr(fuse_req_t req, fuse_ino_t ino, const char *name, size_t size);
void cfsd_op_listxattr(fuse_req_t req, fuse_ino_t ino, size_t size);

/* push.c: the rest of a whole verified object @whole (taken) into the
 * page cache of @ino, all but [@skip_off, @skip_end), the READ being
 * answered.  Over /dev/fuse call it before the reply, over io_uring after
 * (it queues for the pusher thread). */
int cfsd_push_new(struct cfsd *d);
void cfsd_push_stop(struct cfsd *d); /* joins the pusher thread */
void cfsd_push_free(struct cfsd *d);
void cfsd_push_object(struct cfsd *d, fuse_ino_t ino, uint8_t *whole, uint64_t size,
		      uint64_t skip_off, uint64_t skip_end);
uint64_t cfsd_push_pending(struct cfsd *d); /* bytes queued */

/* files.c */
int cfsd_files_new(struct cfsd *d);
void cfsd_files_free(struct cfsd *d);
const char *cfsd_files_mode_name(const struct cfsd *d); /* "open", "no-open", "undecided" */
void cfsd_op_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi);
void cfsd_op_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info *fi);
void cfsd_op_release(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi);
void cfsd_op_lseek(fuse_req_t req, fuse_ino_t ino, off_t off, int whence, struct fuse_file_info *fi);

/* ops.c: the request table and the state its handlers share. */
extern const struct fuse_lowlevel_ops cfsd_ops;
int cfsd_handlers_new(struct cfsd *d);
/* Stop the handlers' threads (before the session goes). */
void cfsd_handlers_stop(struct cfsd *d);
void cfsd_handlers_free(struct cfsd *d);

/* stats.c: write the settings and counters as "key value" lines. */
void cfsd_stats_print(struct cfsd *d, FILE *out);

/* uring.c: FUSE over io_uring underneath libfuse 3.14 (through the
 * custom-io shim of passthrough.c). */
void cfsd_uring_note_init(uint32_t flags2);
/* INIT reply: the flags2 bits to add (0: not asked for). */
uint32_t cfsd_uring_init_reply(struct cfsd *d, uint32_t max_write, uint16_t max_pages);
/* After the INIT reply: register the queues and start their threads. */
void cfsd_uring_start(struct cfsd *d, int fd);
/* A reply written on a ring thread: commit it to its entry (true, *ret
 * the writev result) or not one of ours (false). */
bool cfsd_uring_reply(const struct iovec *iov, int count, ssize_t *ret);
void cfsd_uring_stop(void);
const char *cfsd_uring_describe(void);
uint64_t cfsd_uring_requests(void);

/* passthrough.c: kernel passthrough (FUSE_PASSTHROUGH, kernel 6.9+).
 * cfsd_pt_setup() is called after mounting and before the session loop;
 * whether the kernel accepted passthrough is only known after INIT. */
int cfsd_pt_setup(struct cfsd *d, struct fuse_session *se);
/* Called from the init operation (libfuse API builds negotiate there). */
void cfsd_pt_init_conn(struct fuse_conn_info *conn);
bool cfsd_pt_available(void);
/* Register @fd as a backing file: returns a backing id (>= 0) or -errno
 * (-EPERM without CAP_SYS_ADMIN in the initial user namespace). */
int cfsd_pt_backing_open(fuse_req_t req, int fd);
/* @req may be NULL at exit, when the connection is going away. */
void cfsd_pt_backing_close(fuse_req_t req, int backing_id);
/* Reply to an open request with FOPEN_PASSTHROUGH and @backing_id. */
int cfsd_pt_reply_open(fuse_req_t req, struct fuse_file_info *fi, int backing_id);
/* What this build and library can do, for the startup log line. */
const char *cfsd_pt_describe(void);
