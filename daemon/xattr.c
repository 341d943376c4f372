/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Extended attributes, as the kernel's composefs mount shows them:
 *  - trusted.overlay.* xattrs are internal and hidden; an escaped
 *    trusted.overlay.overlay.X is shown as trusted.overlay.X;
 *  - every other xattr is shown as stored; trusted.* is listed only for
 *    root (the kernel lists and reads trusted.* only with CAP_SYS_ADMIN; we
 *    see the caller's uid, not its capabilities, and the VFS itself refuses
 *    getxattr("trusted.*") to callers without CAP_SYS_ADMIN).
 * An image with no xattr a reader could see answers the first request with
 * ENOSYS (xattrs=auto), so the kernel asks no more.
 */
#include "config.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cfsd.h"

#define OVL_PREFIX_LEN (sizeof(CFS_OVL_PREFIX) - 1)
#define OVL_ESCAPED_LEN (sizeof(CFS_OVL_ESCAPED_PREFIX) - 1)

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

void cfsd_op_getxattr(fuse_req_t req, fuse_ino_t ino, const char *name, size_t size)
{
	struct cfsd *d = fuse_req_userdata(req);
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

void cfsd_op_listxattr(fuse_req_t req, fuse_ino_t ino, size_t size)
{
	struct cfsd *d = fuse_req_userdata(req);
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
