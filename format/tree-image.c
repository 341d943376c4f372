/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Loading an image into the writer's tree (cfs_tree_from_image()), with
 * the semantics of upstream's lcfs_load_node_from_image(): the tree that
 * the dump parser makes from the image's dump, which the dump printer
 * prints and the writer writes again.
 *
 * The image is hostile: everything is read through the bounds-checked
 * reader, any corruption aborts the whole load, the walk keeps an explicit
 * stack (a deep tree cannot exhaust the C stack), the entries met are
 * bounded by cfs_img_dirent_budget() (directories sharing blocks cannot
 * make the load quadratic) and an inode met again is a hard link, never
 * walked twice.
 */
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "erofs-disk.h"
#include "image-internal.h"
#include "writer-internal.h"

struct xattr_load_ctx {
	const struct cfs_image *img;
	const struct cfs_inode *ino;
	struct cfs_node *node;
};

/* The backing path of a file from its trusted.overlay.redirect value. */
static int load_redirect(struct xattr_load_ctx *c, const uint8_t *value, size_t value_len)
{
	size_t avail = value_len, sz, img_size;
	const uint8_t *base = cfs_img_bytes(c->img, &img_size), *v = value;
	char *p;

	/* Upstream skips the leading '/' but then grows the length instead
	 * of shrinking it, so the payload runs on into the two bytes after
	 * the value, up to a NUL.  Reproduce that, within the image. */
	if (value_len > 1 && value[0] == '/') {
		size_t left = img_size - (size_t)(value + 1 - base);

		v = value + 1;
		avail = value_len + 1 < left ? value_len + 1 : left;
	}
	sz = strnlen((const char *)v, avail);
	p = strndup((const char *)v, sz);
	if (!p)
		return -ENOMEM;
	free(c->node->payload);
	c->node->payload = p;
	return 0;
}

static int load_xattr_cb(void *userdata, uint8_t index, const char *suffix, size_t suffix_len,
			 const uint8_t *value, size_t value_len)
{
	struct xattr_load_ctx *c = userdata;
	struct cfs_node *n = c->node;
	unsigned long long nid = c->ino->nid;
	const char *prefix = cfs_img_xattr_prefix(index);
	char name[64 + EROFS_NAME_LEN + 1]; /* a prefix, a suffix of up to 255 bytes */
	size_t plen, namelen;
	int r;

	if (!prefix)
		return cfs_img_fail(-EFSCORRUPTED, "inode nid %llu: unknown xattr prefix index %u",
				    nid, index);
	plen = strlen(prefix);
	if (plen + suffix_len >= sizeof(name))
		return cfs_img_fail(-EFSCORRUPTED, "inode nid %llu: xattr name of %zu bytes", nid,
				    plen + suffix_len);
	memcpy(name, prefix, plen);
	memcpy(name + plen, suffix, suffix_len);
	name[plen + suffix_len] = '\0'; /* an embedded NUL shortens it, as upstream */

	if (strcmp(name, CFS_OVL_REDIRECT) == 0)
		return S_ISREG(n->mode) ? load_redirect(c, value, value_len) : 0;
	if (strcmp(name, CFS_OVL_METACOPY) == 0) {
		if (S_ISREG(n->mode) && value_len == 4 + CFS_DIGEST_SIZE) {
			memcpy(n->digest, value + 4, CFS_DIGEST_SIZE);
			n->digest_set = true;
		}
		return 0;
	}
	if (strcmp(name, CFS_OVL_ESCAPED_PREFIX "whiteout") == 0 && S_ISREG(n->mode)) {
		n->mode = (n->mode & ~(uint32_t)S_IFMT) | S_IFCHR;
		n->rdev = 0;
		n->size = 0;
		return 0;
	}
	if (strcmp(name, CFS_OVL_ESCAPED_PREFIX "whiteouts") == 0 ||
	    strcmp(name, "user.overlay.whiteout") == 0 || strcmp(name, "user.overlay.whiteouts") == 0)
		return 0;
	if (cfs_has_prefix(name, CFS_OVL_PREFIX)) {
		if (!cfs_has_prefix(name, CFS_OVL_ESCAPED_PREFIX))
			return 0; /* internal to overlayfs */
		/* trusted.overlay.overlay.X -> trusted.overlay.X */
		memmove(name + strlen("trusted."), name + strlen(CFS_OVL_PREFIX),
			strlen(name) - strlen(CFS_OVL_PREFIX) + 1);
	}
	namelen = strlen(name);
	if (namelen == 0 || namelen > CFS_XATTR_NAME_MAX)
		return cfs_img_fail(-EFSCORRUPTED, "inode nid %llu: xattr name of %zu bytes", nid,
				    namelen);
	r = cfs_node_set_xattr_limit(n, name, value, value_len, CFS_XATTR_IMAGE_MAX);
	if (r == -ERANGE)
		return cfs_img_fail(-EFBIG, "inode nid %llu: xattrs too large for a dump", nid);
	return r;
}

/* A symlink's target: upstream refuses an empty one; a NUL ends it. */
static int load_symlink(const struct cfs_image *img, const struct cfs_inode *ino,
			struct cfs_node *n)
{
	char buf[PATH_MAX];
	ssize_t got;

	if (ino->size >= PATH_MAX)
		return cfs_img_fail(-EFSCORRUPTED, "symlink nid %llu: target of %llu bytes",
				    (unsigned long long)ino->nid, (unsigned long long)ino->size);
	got = cfs_img_read(img, ino, 0, buf, (size_t)ino->size);
	if (got < 0)
		return (int)got;
	if ((uint64_t)got != ino->size)
		return cfs_img_fail(-EFSCORRUPTED, "symlink nid %llu: short target",
				    (unsigned long long)ino->nid);
	buf[got] = '\0';
	if (buf[0] == '\0')
		return cfs_img_fail(-EFSCORRUPTED, "symlink nid %llu: empty target",
				    (unsigned long long)ino->nid);
	n->payload = strdup(buf);
	if (!n->payload)
		return -ENOMEM;
	n->size = strlen(buf);
	return 0;
}

/* The content of a regular file whose data is in the image. */
static int load_content(const struct cfs_image *img, const struct cfs_inode *ino,
			struct cfs_node *n)
{
	size_t img_size;
	ssize_t got;

	(void)cfs_img_bytes(img, &img_size);
	/* Upstream's dump format cannot hold more inline content. */
	if (ino->size > CFS_INLINE_CONTENT_MAX || ino->size > img_size)
		return cfs_img_fail(-EFBIG, "inode nid %llu: %llu bytes of content in the image (a dump holds at most %d)",
				    (unsigned long long)ino->nid, (unsigned long long)ino->size,
				    CFS_INLINE_CONTENT_MAX);
	n->content = malloc((size_t)ino->size);
	if (!n->content)
		return -ENOMEM;
	got = cfs_img_read(img, ino, 0, n->content, (size_t)ino->size);
	if (got < 0)
		return (int)got;
	if ((uint64_t)got != ino->size)
		return cfs_img_fail(-EFSCORRUPTED, "inode nid %llu: short content",
				    (unsigned long long)ino->nid);
	return 0;
}

/* Load everything about one inode except its children.  Returns 1 for a
 * whiteout (0:0 character device), which the caller drops. */
static int load_inode(const struct cfs_image *img, const struct cfs_inode *ino, struct cfs_node *n)
{
	struct xattr_load_ctx xc = { img, ino, n };
	int r = 0;

	n->mode = ino->mode;
	n->nlink = ino->nlink;
	n->uid = ino->uid;
	n->gid = ino->gid;
	n->size = ino->size;
	n->mtime_sec = ino->mtime;
	n->mtime_nsec = ino->mtime_nsec;
	if (S_ISCHR(ino->mode) || S_ISBLK(ino->mode))
		n->rdev = ino->raw_blkaddr;
	if (S_ISCHR(ino->mode) && n->rdev == 0)
		return 1;

	if (S_ISLNK(ino->mode))
		r = load_symlink(img, ino, n);
	else if (S_ISREG(ino->mode) && ino->size != 0 && ino->datalayout != EROFS_INODE_CHUNK_BASED)
		r = load_content(img, ino, n);
	if (r >= 0)
		r = cfs_img_iterate_raw_xattrs(img, ino, load_xattr_cb, &xc);
	return r < 0 ? r : 0;
}

struct one_entry {
	bool got;
	bool dot; /* raw name is "." or ".." */
	char name[EROFS_NAME_LEN + 1];
	uint64_t nid;
	uint64_t next;
};

static int one_entry_cb(void *userdata, const char *name, size_t namelen, uint64_t nid,
			unsigned dtype, uint64_t next_cookie)
{
	struct one_entry *e = userdata;

	if (namelen > EROFS_NAME_LEN)
		return cfs_img_fail(-EFSCORRUPTED, "name of %zu bytes", namelen);
	e->dot = (namelen == 1 && name[0] == '.') || (namelen == 2 && name[0] == '.' && name[1] == '.');
	memcpy(e->name, name, namelen);
	e->name[namelen] = '\0';
	e->nid = nid;
	e->next = next_cookie;
	e->got = true;
	return 1;
}

static bool filter_has(const char *const *toplevel, const char *name)
{
	for (; *toplevel; toplevel++)
		if (strcmp(*toplevel, name) == 0)
			return true;
	return false;
}

struct frame {
	struct cfs_node *node;
	struct cfs_inode ino;
	uint64_t cookie;
};

struct loader {
	const struct cfs_image *img;
	struct cfs_node_table nids; /* (0, nid) -> the node holding the inode */
	struct frame *stack;
	size_t depth, cap;
};

/* The entry @e of the directory on top of the stack: a hard link to an
 * inode met before, or a new node (pushed if a directory). */
static int load_entry(struct loader *l, const struct one_entry *e)
{
	struct frame *f = &l->stack[l->depth - 1];
	_cleanup_(cfs_node_freep) struct cfs_node *child = NULL;
	struct cfs_node *existing = cfs_node_table_find(&l->nids, 0, e->nid), *added;
	struct cfs_inode cino;
	int r;

	if (existing) {
		child = cfs_node_new_link(existing);
		if (!child)
			return -ENOMEM;
		r = cfs_node_append_child(f->node, child, e->name);
		if (r >= 0)
			child = NULL;
		return r;
	}
	child = cfs_node_new();
	if (!child)
		return -ENOMEM;
	r = cfs_img_read_inode(l->img, e->nid, &cino);
	if (r >= 0)
		r = load_inode(l->img, &cino, child);
	if (r != 0)
		return r > 0 ? 0 : r; /* a whiteout is not part of the tree */
	r = cfs_node_append_child(f->node, child, e->name);
	if (r < 0)
		return r;
	added = steal_ptr(&child);
	r = cfs_node_table_add(&l->nids, 0, e->nid, added);
	if (r < 0 || !S_ISDIR(cino.mode))
		return r;
	r = CFS_GROW(l->stack, l->cap, l->depth + 1);
	if (r < 0)
		return r;
	l->stack[l->depth++] = (struct frame){ added, cino, 0 };
	return 0;
}

static int load_tree(struct loader *l, const char *const *toplevel, struct cfs_node *root)
{
	uint64_t budget = cfs_img_dirent_budget(l->img);
	struct cfs_inode ino;
	int r;

	r = cfs_img_read_inode(l->img, cfs_img_root_nid(l->img), &ino);
	if (r < 0)
		return r;
	r = cfs_node_table_add(&l->nids, 0, ino.nid, root);
	if (r < 0)
		return r;
	r = load_inode(l->img, &ino, root);
	if (r == 0 && !S_ISDIR(ino.mode))
		r = 1;
	if (r > 0)
		return cfs_img_fail(-EFSCORRUPTED, "the root is not a directory");
	if (r < 0)
		return r;
	r = CFS_GROW(l->stack, l->cap, 1);
	if (r < 0)
		return r;
	l->stack[l->depth++] = (struct frame){ root, ino, 0 };

	while (l->depth > 0) {
		struct frame *f = &l->stack[l->depth - 1];
		struct one_entry e = { 0 };

		r = cfs_img_iterate_dir_raw(l->img, &f->ino, f->cookie, one_entry_cb, &e);
		if (r < 0)
			return r;
		if (!e.got) {
			/* Children come sorted from a sane image: sorting
			 * once here keeps a hostile one linear too. */
			if (cfs_node_sort_children(f->node) < 0)
				return cfs_img_fail(-EFSCORRUPTED, "directory nid %llu: duplicate name",
						    (unsigned long long)f->ino.nid);
			l->depth--;
			continue;
		}
		if (budget-- == 0)
			return cfs_img_fail(-EFSCORRUPTED,
					    "more directory entries than the image can hold: directories share data");
		f->cookie = e.next;
		if (e.dot)
			continue;
		if (l->depth == 1 && toplevel && !filter_has(toplevel, e.name))
			continue;
		if (e.name[0] == '\0')
			return cfs_img_fail(-EFSCORRUPTED, "directory nid %llu: a name starts with NUL",
					    (unsigned long long)f->ino.nid);
		r = load_entry(l, &e);
		if (r < 0)
			return r;
	}
	return 0;
}

int cfs_tree_from_image(const struct cfs_image *img, const char *const *toplevel,
			struct cfs_node **ret_root, struct cfs_img_diag *ret_diag)
{
	_cleanup_(cfs_node_freep) struct cfs_node *root = cfs_node_new();
	struct loader l = { .img = img };
	int r;

	if (!root)
		return -ENOMEM;
	r = load_tree(&l, toplevel, root);
	free(l.stack);
	cfs_node_table_clear(&l.nids);
	if (r < 0) {
		if (ret_diag) {
			const char *detail = r == -EFSCORRUPTED || r == -EOPNOTSUPP || r == -EFBIG ?
						     cfs_img_error_detail() : "";

			*ret_diag = (struct cfs_img_diag){ 0 };
			snprintf(ret_diag->reason, sizeof(ret_diag->reason), "%s", detail);
		}
		return r;
	}
	*ret_root = steal_ptr(&root);
	return 0;
}
