/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * What every request handler needs of the image: a FUSE inode number
 * turned into the image's inode, corrupt metadata logged once and named by
 * its path, and that path found for messages (a bounded walk, since a
 * hostile image may hold directory loops).
 */
#include "config.h"

#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "cfsd.h"

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
