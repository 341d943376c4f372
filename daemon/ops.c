/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * FUSE metadata operations: what a reader sees must be what the kernel's
 * composefs mount (erofs as the only lower layer of a read-only overlayfs,
 * the object store as a data-only layer) shows for the same image:
 *  - overlay whiteouts (character devices 0:0) are invisible: lookups fail
 *    and readdir omits them (that hides the 256 "00".."ff" entries mkcomposefs
 *    puts in the root);
 *  - xattrs as xattr.c says; file data as files.c says.
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

#define EROFS_NAME_LEN 255

static struct cfsd *req_cfsd(fuse_req_t req)
{
	return fuse_req_userdata(req);
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
	st->st_blksize = CFS_BLKSZ;
	/* As erofs reports it: the size rounded up to whole blocks. */
	st->st_blocks = (blkcnt_t)(((ci->size + CFS_BLKSZ - 1) & ~(uint64_t)(CFS_BLKSZ - 1)) >> 9);
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
		.f_blocks = d->info.image_size / (d->info.blksz ? d->info.blksz : CFS_BLKSZ),
		.f_files = d->info.inodes,
		.f_namemax = EROFS_NAME_LEN,
		.f_flag = ST_RDONLY,
	};
	fuse_reply_statfs(req, &sv);
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


int cfsd_handlers_new(struct cfsd *d)
{
	int r = cfsd_logged_new(d);

	if (r >= 0)
		r = cfsd_push_new(d);
	if (r >= 0)
		r = cfsd_files_new(d);
	if (r < 0)
		cfsd_handlers_free(d);
	return r;
}

void cfsd_handlers_stop(struct cfsd *d)
{
	cfsd_push_stop(d);
}

void cfsd_handlers_free(struct cfsd *d)
{
	cfsd_files_free(d);
	cfsd_push_free(d);
	cfsd_logged_free(d);
	cfsd_thread_buffer_free();
}
