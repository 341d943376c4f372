/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * FUSE metadata operations: what a reader sees must be what the kernel's
 * composefs mount (erofs as the only lower layer of a read-only overlayfs,
 * the object store as a data-only layer) shows for the same image:
 *  - overlay whiteouts (character devices 0:0) are invisible: lookups fail
 *    and readdir omits them (that hides the 256 "00".."ff" entries mkcomposefs
 *    puts in the root);
 *  - trusted.overlay.* xattrs are internal and hidden; an escaped
 *    trusted.overlay.overlay.X is shown as trusted.overlay.X;
 *  - every other xattr is shown as stored; trusted.* is listed only for
 *    root (the kernel lists and reads trusted.* only with CAP_SYS_ADMIN; we
 *    see the caller's uid, not its capabilities, and the VFS itself refuses
 *    getxattr("trusted.*") to callers without CAP_SYS_ADMIN).
 * The image is immutable, so nothing here takes a lock and inode numbers
 * need no lookup counting: forget is a no-op.
 */
#include "config.h"

#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>

#include "cfsd.h"

#define OVL_PREFIX_LEN (sizeof(CFS_OVL_PREFIX) - 1)
#define OVL_ESCAPED_LEN (sizeof(CFS_OVL_ESCAPED_PREFIX) - 1)
#define EROFS_NAME_LEN 255

static struct cfsd *req_cfsd(fuse_req_t req)
{
	return fuse_req_userdata(req);
}

int cfsd_image_error(struct cfsd *d, uint64_t nid, const char *what, int err)
{
	if (err == -ENOMEM)
		return ENOMEM;
	/* Once per nid: a corrupt inode would otherwise log on every request. */
	if (cfsd_first_error(d, nid | CFSD_ERR_IMAGE)) {
		char where[1024], why[256];

		/* The reader's reason first: naming the nid walks the image,
		 * which may fail too and replace this thread's detail. */
		snprintf(why, sizeof(why), "%s",
			 err == -EFSCORRUPTED || err == -EOPNOTSUPP ? cfs_img_error_detail() : "");
		if (!why[0])
			snprintf(why, sizeof(why), "%s",
				 err == -EFSCORRUPTED ? "bad metadata" : strerror(-err));
		cfsd_describe_nid(d, nid, where, sizeof(where));
		cfsd_log(FUSE_LOG_ERR, "image: %s: %s is corrupt: %s\n", where, what, why);
	}
	return EIO;
}

int cfsd_get_inode(struct cfsd *d, fuse_ino_t ino, struct cfs_inode *ret_inode)
{
	uint64_t nid;
	int r = cfsd_ino_to_nid(d->info.root_nid, ino, &nid);
	if (r < 0)
		return r;
	r = cfs_img_read_inode(d->img, nid, ret_inode);
	return r < 0 ? -cfsd_image_error(d, nid, "inode", r) : 0;
}

static int get_dir(struct cfsd *d, fuse_ino_t ino, struct cfs_inode *ret_inode)
{
	int r = cfsd_get_inode(d, ino, ret_inode);
	if (r < 0)
		return r;
	return S_ISDIR(ret_inode->mode) ? 0 : -ENOTDIR;
}

static bool is_whiteout(const struct cfs_inode *ci)
{
	return S_ISCHR(ci->mode) && ci->rdev == 0;
}

/* overlayfs refuses to look up a metacopy file whose data it cannot find:
 * data-only layers are reachable only through a redirect, so a metacopy
 * without one (or a malformed metacopy) fails with EIO, while readdir still
 * lists the name.  Returns 0 or -EIO. */
static int check_lookup_data(struct cfsd *d, const struct cfs_inode *ci)
{
	struct cfs_backing b;
	if (!S_ISREG(ci->mode))
		return 0;
	if (cfs_img_get_backing(d->img, ci, &b) < 0 || (b.is_external && !b.redirect))
		return -EIO;
	return 0;
}

static void fill_stat(const struct cfsd *d, const struct cfs_inode *ci, struct stat *st)
{
	memset(st, 0, sizeof(*st));
	st->st_ino = cfsd_nid_to_ino(d->info.root_nid, ci->nid);
	st->st_mode = ci->mode;
	st->st_nlink = ci->nlink;
	st->st_uid = ci->uid;
	st->st_gid = ci->gid;
	if (S_ISCHR(ci->mode) || S_ISBLK(ci->mode))
		st->st_rdev = ci->rdev;
	st->st_size = (off_t)ci->size;
	st->st_blksize = 4096;
	/* As erofs reports it: the size rounded up to whole blocks. */
	st->st_blocks = (blkcnt_t)(((ci->size + 4095) & ~(uint64_t)4095) >> 9);
	/* The reader already gives compact inodes the superblock's build time. */
	st->st_mtim.tv_sec = (time_t)ci->mtime;
	st->st_mtim.tv_nsec = ci->mtime_nsec;
	st->st_atim = st->st_mtim;
	st->st_ctim = st->st_mtim;
}

static void fill_entry(const struct cfsd *d, const struct cfs_inode *ci, struct fuse_entry_param *e)
{
	memset(e, 0, sizeof(*e));
	fill_stat(d, ci, &e->attr);
	e->ino = e->attr.st_ino;
	e->generation = 1;
	e->attr_timeout = d->timeout;
	e->entry_timeout = d->timeout;
}

static void cfsd_op_init(void *userdata, struct fuse_conn_info *conn)
{
	struct cfsd *d = userdata;

	if (conn->capable & FUSE_CAP_CACHE_SYMLINKS)
		conn->want |= FUSE_CAP_CACHE_SYMLINKS;
	/* ACLs are checked by the kernel (default_permissions) and cached in
	 * its ACL cache; they are read once through getxattr.  Only asked for
	 * when the image has any: the kernel creates the root inode before
	 * INIT, marks its ACLs uncacheable for good (a notify_inval_inode of
	 * the root does not change that on Linux 6.18), and would then send a
	 * GETXATTR for every permission check on the root by anyone but its
	 * owner.  Without ACLs, the mode bits are all there is to check. */
	if ((conn->capable & FUSE_CAP_POSIX_ACL) && d->image_has_acls && !d->noacl)
		conn->want |= FUSE_CAP_POSIX_ACL;
	if (conn->capable & FUSE_CAP_READDIRPLUS)
		conn->want |= FUSE_CAP_READDIRPLUS;
	/* Data never changes: no invalidation on attribute refresh. */
	conn->want &= ~(unsigned)FUSE_CAP_AUTO_INVAL_DATA;
	conn->want &= ~(unsigned)FUSE_CAP_WRITEBACK_CACHE;
	conn->time_gran = 1;
	cfsd_pt_init_conn(conn);

	if (d->notify) {
		char msg[64];
		snprintf(msg, sizeof(msg), "READY=1\nMAINPID=%ld", (long)getpid());
		int r = cfsd_notify(msg);
		if (r < 0)
			cfsd_log(FUSE_LOG_WARNING, "sd_notify READY=1 failed: %s\n", strerror(-r));
		cfsd_notify_status(d, "serving");
	}
}

static void cfsd_op_lookup(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	struct cfsd *d = req_cfsd(req);
	struct cfs_inode dir, ci;
	struct fuse_entry_param e;
	uint64_t nid;
	unsigned dtype;
	size_t len = strlen(name);
	int r;

	atomic_fetch_add(&d->stats.lookups, 1);
	if (len > EROFS_NAME_LEN)
		return (void)fuse_reply_err(req, ENAMETOOLONG);
	r = get_dir(d, parent, &dir);
	if (r < 0)
		return (void)fuse_reply_err(req, -r);

	r = cfs_img_lookup(d->img, &dir, name, len, &nid, &dtype);
	if (r == -ENOENT)
		goto negative;
	if (r < 0)
		return (void)fuse_reply_err(req, cfsd_image_error(d, dir.nid, "directory", r));
	r = cfs_img_read_inode(d->img, nid, &ci);
	if (r < 0)
		return (void)fuse_reply_err(req, cfsd_image_error(d, nid, "inode", r));
	if (is_whiteout(&ci))
		goto negative; /* a whiteout hides itself */
	r = check_lookup_data(d, &ci);
	if (r < 0) {
		if (cfsd_first_error(d, ci.nid)) {
			char where[1024];
			cfsd_describe_nid(d, ci.nid, where, sizeof(where));
			cfsd_log(FUSE_LOG_ERR, "%s: metacopy file without a usable redirect\n", where);
		}
		return (void)fuse_reply_err(req, -r);
	}
	fill_entry(d, &ci, &e);
	fuse_reply_entry(req, &e);
	return;

negative:
	/* ino 0 with a timeout: the kernel caches the negative dentry. */
	memset(&e, 0, sizeof(e));
	e.entry_timeout = d->timeout;
	fuse_reply_entry(req, &e);
}

static void cfsd_op_forget(fuse_req_t req, fuse_ino_t ino, uint64_t nlookup)
{
	/* Inode numbers are computed, not allocated: nothing to release. */
	fuse_reply_none(req);
}

static void cfsd_op_forget_multi(fuse_req_t req, size_t count, struct fuse_forget_data *forgets)
{
	fuse_reply_none(req);
}

static void cfsd_op_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct cfsd *d = req_cfsd(req);
	struct cfs_inode ci;
	struct stat st;
	int r;

	atomic_fetch_add(&d->stats.getattrs, 1);
	r = cfsd_get_inode(d, ino, &ci);
	if (r < 0)
		return (void)fuse_reply_err(req, -r);
	fill_stat(d, &ci, &st);
	fuse_reply_attr(req, &st, d->timeout);
}

static void cfsd_op_readlink(fuse_req_t req, fuse_ino_t ino)
{
	struct cfsd *d = req_cfsd(req);
	struct cfs_inode ci;
	char buf[PATH_MAX + 1];
	ssize_t n;
	int r;

	atomic_fetch_add(&d->stats.readlinks, 1);
	r = cfsd_get_inode(d, ino, &ci);
	if (r < 0)
		return (void)fuse_reply_err(req, -r);
	if (!S_ISLNK(ci.mode))
		return (void)fuse_reply_err(req, EINVAL);
	n = cfs_img_readlink(d->img, &ci, buf, sizeof(buf));
	/* An empty target (or one that starts with NUL) is no symlink
	 * symlink(2) could make: a corrupt image. */
	if (n == 0)
		n = -EFSCORRUPTED;
	if (n < 0)
		return (void)fuse_reply_err(req, cfsd_image_error(d, ci.nid, "symlink", (int)n));
	fuse_reply_readlink(req, buf);
}

static void cfsd_op_opendir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct cfsd *d = req_cfsd(req);

	atomic_fetch_add(&d->stats.opendirs, 1);
	/* No state per open directory: ENOSYS makes the kernel open every
	 * directory itself from now on (no OPENDIR, no RELEASEDIR), with its
	 * default for that mode, keep_cache and cache_readdir, so a listing
	 * is read once.  The mount is read-only: the VFS refuses writes. */
	fuse_reply_err(req, ENOSYS);
}

struct readdir_ctx {
	fuse_req_t req;
	struct cfsd *d;
	char *buf;
	size_t size, used;
	bool plus;
};

static int readdir_one(void *userdata, const char *name, size_t namelen, uint64_t nid,
		       unsigned dtype, uint64_t next_cookie)
{
	struct readdir_ctx *c = userdata;
	struct fuse_entry_param e;
	struct cfs_inode ci;
	char nbuf[EROFS_NAME_LEN + 1];
	size_t n;
	bool dot = (namelen == 1 && name[0] == '.') ||
		   (namelen == 2 && name[0] == '.' && name[1] == '.');
	int r;

	if (namelen == 0 || namelen > EROFS_NAME_LEN || memchr(name, '/', namelen) ||
	    memchr(name, '\0', namelen))
		return -EFSCORRUPTED;
	memcpy(nbuf, name, namelen);
	nbuf[namelen] = '\0';

	r = dtype == DT_CHR || c->plus ? cfs_img_read_inode(c->d->img, nid, &ci) : 1;
	if (r == -ENOMEM)
		return r;
	if (r < 0) {
		/* A child the reader refuses is the child's fault, not the
		 * directory's: it is listed by name and type, without
		 * attributes (its lookup fails with EIO), as the kernel's
		 * erofs lists names without reading inodes. */
		(void)cfsd_image_error(c->d, nid, "inode", r);
		memset(&e, 0, sizeof(e));
		e.attr.st_ino = cfsd_nid_to_ino(c->d->info.root_nid, nid);
		e.attr.st_mode = DTTOIF(dtype);
	} else if (r == 0) {
		if (!dot && is_whiteout(&ci))
			return 0;
		fill_entry(c->d, &ci, &e);
		/* Listed, but no attributes: a lookup of it fails. */
		if (c->plus && check_lookup_data(c->d, &ci) < 0)
			e.ino = 0;
	} else {
		memset(&e, 0, sizeof(e));
		e.attr.st_ino = cfsd_nid_to_ino(c->d->info.root_nid, nid);
		e.attr.st_mode = DTTOIF(dtype);
	}

	if (c->plus)
		n = fuse_add_direntry_plus(c->req, c->buf + c->used, c->size - c->used, nbuf, &e,
					   (off_t)next_cookie);
	else
		n = fuse_add_direntry(c->req, c->buf + c->used, c->size - c->used, nbuf, &e.attr,
				      (off_t)next_cookie);
	if (n > c->size - c->used)
		return 1; /* full: the kernel asks again from this entry's cookie */
	c->used += n;
	return 0;
}

static void do_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, bool plus)
{
	struct cfsd *d = req_cfsd(req);
	struct readdir_ctx c = { .req = req, .d = d, .size = size, .plus = plus };
	char *buf;
	struct cfs_inode ci;
	int r = get_dir(d, ino, &ci);

	atomic_fetch_add(&d->stats.readdirs, 1);
	if (r < 0)
		return (void)fuse_reply_err(req, -r);
	if (off < 0)
		return (void)fuse_reply_err(req, EINVAL);
	buf = cfsd_thread_buffer(size ? size : 1);
	if (!buf)
		return (void)fuse_reply_err(req, ENOMEM);
	c.buf = buf;
	r = cfs_img_iterate_dir(d->img, &ci, (uint64_t)off, readdir_one, &c);
	/* Entries already gathered are sent; the next call from the last
	 * cookie meets the error again and reports it. */
	if (r < 0 && c.used == 0)
		return (void)fuse_reply_err(req, cfsd_image_error(d, ci.nid, "directory", r));
	fuse_reply_buf(req, buf, c.used);
}

static void cfsd_op_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
			    struct fuse_file_info *fi)
{
	do_readdir(req, ino, size, off, false);
}

static void cfsd_op_readdirplus(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
				struct fuse_file_info *fi)
{
	do_readdir(req, ino, size, off, true);
}

static void cfsd_op_releasedir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	fuse_reply_err(req, 0);
}

static void cfsd_op_statfs(fuse_req_t req, fuse_ino_t ino)
{
	struct cfsd *d = req_cfsd(req);
	struct statvfs sv = {
		.f_bsize = d->info.blksz,
		.f_frsize = d->info.blksz,
		.f_blocks = d->info.image_size / (d->info.blksz ? d->info.blksz : 4096),
		.f_files = d->info.inodes,
		.f_namemax = EROFS_NAME_LEN,
		.f_flag = ST_RDONLY,
	};
	fuse_reply_statfs(req, &sv);
}

/* Map a stored xattr name to the name a reader sees; NULL if hidden. */
static const char *visible_xattr(const char *stored, char *buf, size_t bufsz, bool show_trusted)
{
	if (strncmp(stored, "trusted.", 8) == 0 && !show_trusted)
		return NULL;
	if (strncmp(stored, CFS_OVL_PREFIX, OVL_PREFIX_LEN) != 0)
		return stored;
	if (strncmp(stored, CFS_OVL_ESCAPED_PREFIX, OVL_ESCAPED_LEN) != 0 || stored[OVL_ESCAPED_LEN] == '\0')
		return NULL; /* overlay-internal */
	if ((size_t)snprintf(buf, bufsz, "%s%s", CFS_OVL_PREFIX, stored + OVL_ESCAPED_LEN) >= bufsz)
		return NULL;
	return buf;
}

/* Map a requested name to the stored one; NULL if it cannot exist. */
static const char *stored_xattr(const char *name, char *buf, size_t bufsz)
{
	if (strncmp(name, CFS_OVL_PREFIX, OVL_PREFIX_LEN) != 0)
		return name;
	if (name[OVL_PREFIX_LEN] == '\0')
		return NULL;
	if ((size_t)snprintf(buf, bufsz, "%s%s", CFS_OVL_ESCAPED_PREFIX, name + OVL_PREFIX_LEN) >= bufsz)
		return NULL;
	return buf;
}

/* xattrs=auto and nothing to show: ENOSYS makes the kernel stop asking
 * (readers then get EOPNOTSUPP where the kernel mount says ENODATA or
 * lists nothing). */
static bool no_xattrs(const struct cfsd *d)
{
	return d->xattrs == CFSD_XATTRS_AUTO && !d->image_has_xattrs;
}

struct scan_ctx {
	struct cfsd *d;
};

static int scan_xattr(void *userdata, const char *name, const uint8_t *value, size_t value_len)
{
	struct scan_ctx *c = userdata;
	char tmp[XATTR_NAME_MAX + 64];

	/* trusted.* counts: root sees it */
	if (!visible_xattr(name, tmp, sizeof(tmp), true))
		return 0;
	c->d->image_has_xattrs = true;
	if (strncmp(name, "system.posix_acl_", 17) == 0)
		c->d->image_has_acls = true;
	return c->d->image_has_acls ? 1 : 0;
}

static int scan_inode(void *userdata, const struct cfs_inode *dir, const char *path, size_t pathlen,
		      const char *name, size_t namelen, const struct cfs_inode *ino, bool first_visit)
{
	struct scan_ctx *c = userdata;
	int r;

	if (!first_visit)
		return 0;
	r = cfs_img_iterate_xattrs(c->d->img, ino, scan_xattr, c);
	return r < 0 ? r : c->d->image_has_acls ? 1 : 0;
}

int cfsd_scan_xattrs(struct cfsd *d)
{
	struct scan_ctx c = { .d = d };
	struct cfs_inode root;
	int r;

	d->image_has_xattrs = d->image_has_acls = false;
	r = cfs_img_read_inode(d->img, d->info.root_nid, &root);
	if (r >= 0)
		r = cfs_img_iterate_xattrs(d->img, &root, scan_xattr, &c);
	if (r >= 0 && !d->image_has_acls)
		r = cfs_img_walk(d->img, scan_inode, &c);
	if (r < 0) {
		/* Cannot tell: answer every request, as the kernel would. */
		d->image_has_xattrs = d->image_has_acls = true;
		return r;
	}
	return 0;
}

static bool caller_sees_trusted(fuse_req_t req)
{
	const struct fuse_ctx *ctx = fuse_req_ctx(req);
	return ctx && ctx->uid == 0;
}

static void cfsd_op_getxattr(fuse_req_t req, fuse_ino_t ino, const char *name, size_t size)
{
	struct cfsd *d = req_cfsd(req);
	struct cfs_inode ci;
	const uint8_t *value;
	const char *stored;
	char buf[XATTR_NAME_MAX + 64];
	size_t len;
	int r;

	atomic_fetch_add(&d->stats.getxattrs, 1);
	if (no_xattrs(d))
		return (void)fuse_reply_err(req, ENOSYS);
	r = cfsd_get_inode(d, ino, &ci);
	if (r < 0)
		return (void)fuse_reply_err(req, -r);
	if (strncmp(name, "trusted.", 8) == 0 && !caller_sees_trusted(req))
		return (void)fuse_reply_err(req, ENODATA);
	stored = stored_xattr(name, buf, sizeof(buf));
	if (!stored)
		return (void)fuse_reply_err(req, ENODATA);
	r = cfs_img_get_xattr(d->img, &ci, stored, &value, &len);
	if (r == -ENODATA)
		return (void)fuse_reply_err(req, ENODATA);
	if (r < 0)
		return (void)fuse_reply_err(req, cfsd_image_error(d, ci.nid, "xattr area", r));
	if (size == 0)
		return (void)fuse_reply_xattr(req, len);
	if (len > size)
		return (void)fuse_reply_err(req, ERANGE);
	fuse_reply_buf(req, (const char *)value, len);
}

struct listxattr_ctx {
	char *buf;
	size_t used, cap;
	bool show_trusted;
};

static int listxattr_one(void *userdata, const char *name, const uint8_t *value, size_t value_len)
{
	struct listxattr_ctx *c = userdata;
	char tmp[XATTR_NAME_MAX + 64];
	const char *v = visible_xattr(name, tmp, sizeof(tmp), c->show_trusted);
	size_t n;

	if (!v)
		return 0;
	n = strlen(v) + 1;
	if (CFS_GROW(c->buf, c->cap, c->used + n) < 0)
		return -ENOMEM;
	memcpy(c->buf + c->used, v, n);
	c->used += n;
	return 0;
}

static void cfsd_op_listxattr(fuse_req_t req, fuse_ino_t ino, size_t size)
{
	struct cfsd *d = req_cfsd(req);
	struct listxattr_ctx c = { .show_trusted = caller_sees_trusted(req) };
	struct cfs_inode ci;
	int r;

	atomic_fetch_add(&d->stats.listxattrs, 1);
	if (no_xattrs(d))
		return (void)fuse_reply_err(req, ENOSYS);
	r = cfsd_get_inode(d, ino, &ci);
	if (r < 0)
		return (void)fuse_reply_err(req, -r);
	r = cfs_img_iterate_xattrs(d->img, &ci, listxattr_one, &c);
	if (r < 0) {
		free(c.buf);
		return (void)fuse_reply_err(req, cfsd_image_error(d, ci.nid, "xattr area", r));
	}
	if (size == 0)
		fuse_reply_xattr(req, c.used);
	else if (c.used > size)
		fuse_reply_err(req, ERANGE);
	else
		fuse_reply_buf(req, c.buf, c.used);
	free(c.buf);
}

static void reply_erofs(fuse_req_t req)
{
	fuse_reply_err(req, EROFS);
}

static void cfsd_op_setattr(fuse_req_t req, fuse_ino_t ino, struct stat *attr, int to_set,
			    struct fuse_file_info *fi)
{
	reply_erofs(req);
}

static void cfsd_op_mknod(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode, dev_t rdev)
{
	reply_erofs(req);
}

static void cfsd_op_mkdir(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode)
{
	reply_erofs(req);
}

static void cfsd_op_unlink(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	reply_erofs(req);
}

static void cfsd_op_symlink(fuse_req_t req, const char *link, fuse_ino_t parent, const char *name)
{
	reply_erofs(req);
}

static void cfsd_op_rename(fuse_req_t req, fuse_ino_t parent, const char *name, fuse_ino_t newparent,
			   const char *newname, unsigned int flags)
{
	reply_erofs(req);
}

static void cfsd_op_link(fuse_req_t req, fuse_ino_t ino, fuse_ino_t newparent, const char *newname)
{
	reply_erofs(req);
}

static void cfsd_op_setxattr(fuse_req_t req, fuse_ino_t ino, const char *name, const char *value,
			     size_t size, int flags)
{
	reply_erofs(req);
}

static void cfsd_op_removexattr(fuse_req_t req, fuse_ino_t ino, const char *name)
{
	reply_erofs(req);
}

static void cfsd_op_create(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode,
			   struct fuse_file_info *fi)
{
	reply_erofs(req);
}

const struct fuse_lowlevel_ops cfsd_ops = {
	.init = cfsd_op_init,
	.lookup = cfsd_op_lookup,
	.forget = cfsd_op_forget,
	.forget_multi = cfsd_op_forget_multi,
	.getattr = cfsd_op_getattr,
	.readlink = cfsd_op_readlink,
	.opendir = cfsd_op_opendir,
	.readdir = cfsd_op_readdir,
	.readdirplus = cfsd_op_readdirplus,
	.releasedir = cfsd_op_releasedir,
	.open = cfsd_op_open,
	.read = cfsd_op_read,
	.release = cfsd_op_release,
	.lseek = cfsd_op_lseek,
	.statfs = cfsd_op_statfs,
	.getxattr = cfsd_op_getxattr,
	.listxattr = cfsd_op_listxattr,
	.setattr = cfsd_op_setattr,
	.mknod = cfsd_op_mknod,
	.mkdir = cfsd_op_mkdir,
	.unlink = cfsd_op_unlink,
	.rmdir = cfsd_op_unlink,
	.symlink = cfsd_op_symlink,
	.rename = cfsd_op_rename,
	.link = cfsd_op_link,
	.setxattr = cfsd_op_setxattr,
	.removexattr = cfsd_op_removexattr,
	.create = cfsd_op_create,
};

/* Depth-first search for @nid, for log messages only. */
#define FIND_MAX_DEPTH 256

struct find_ctx {
	struct cfsd *d;
	uint64_t want;
	char *path;
	size_t cap, len;
	uint64_t dirs[FIND_MAX_DEPTH]; /* directories on the current path */
	unsigned depth;
	uint64_t budget;
	bool found, exhausted;
};

/* Is @nid the root or a directory on the current path?  Then descending
 * into it again would loop (a hostile image can make any dirent point to
 * an ancestor). */
static bool find_on_path(const struct find_ctx *c, uint64_t nid)
{
	if (nid == c->d->info.root_nid)
		return true;
	for (unsigned i = 0; i < c->depth; i++)
		if (c->dirs[i] == nid)
			return true;
	return false;
}

static int find_visit(void *userdata, const char *name, size_t namelen, uint64_t nid,
		      unsigned dtype, uint64_t next_cookie)
{
	struct find_ctx *c = userdata;
	size_t saved = c->len;
	struct cfs_inode ci;

	if ((namelen == 1 && name[0] == '.') || (namelen == 2 && name[0] == '.' && name[1] == '.'))
		return 0;
	if (c->budget-- == 0) {
		c->exhausted = true;
		return 1;
	}
	if (c->len + 1 + namelen + 1 > c->cap)
		return 0;
	c->path[c->len++] = '/';
	memcpy(c->path + c->len, name, namelen);
	c->len += namelen;
	c->path[c->len] = '\0';
	if (nid == c->want) {
		c->found = true;
		return 1;
	}
	if (dtype == DT_DIR && c->depth < FIND_MAX_DEPTH && !find_on_path(c, nid) &&
	    cfs_img_read_inode(c->d->img, nid, &ci) >= 0 && S_ISDIR(ci.mode)) {
		c->dirs[c->depth++] = nid;
		/* A corrupt subdirectory only ends its own part of the search. */
		(void)cfs_img_iterate_dir(c->d->img, &ci, 0, find_visit, c);
		c->depth--;
		if (c->found || c->exhausted)
			return 1;
	}
	c->len = saved;
	c->path[c->len] = '\0';
	return 0;
}

void cfsd_describe_nid(struct cfsd *d, uint64_t nid, char *buf, size_t bufsz)
{
	/* The superblock's inode count is image data (any value): bound the
	 * walk by the number of 12-byte dirents the image can hold, which a
	 * tree without loops never exceeds, so a directory loop cannot make
	 * one log message walk forever. */
	struct find_ctx c = { .d = d, .want = nid, .path = buf, .cap = bufsz,
			      .budget = d->info.image_size / 12 + 1024 };
	struct cfs_inode root;

	if (bufsz < 32)
		return;
	buf[0] = '\0';
	if (cfs_img_read_inode(d->img, d->info.root_nid, &root) >= 0)
		(void)cfs_img_iterate_dir(d->img, &root, 0, find_visit, &c);
	if (!c.found)
		snprintf(buf, bufsz, "nid %llu", (unsigned long long)nid);
}
