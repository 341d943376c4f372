/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Serialise a node tree as a composefs image: a composefs header, an EROFS
 * superblock, the inodes in breadth-first order (each with its xattrs and an
 * inline tail), the shared xattrs, then the data blocks.  Every layout choice
 * below reproduces upstream mkcomposefs 1.0.8 (libcomposefs
 * lcfs-writer-erofs.c) so that the same input gives the same bytes:
 *
 *  - the tree gets the overlay xattrs (metacopy/redirect, escaped
 *    trusted.overlay.*, whiteouts), "." and "..", an opaque root and 256
 *    whiteouts 00..ff in the root before anything is laid out;
 *  - inodes are numbered in breadth-first order of sorted children; an
 *    inode is compact when its mtime is the minimum of the tree and its
 *    nlink/uid/gid/size fit the compact fields, else extended;
 *  - an xattr (name and value) used by more than one inode is shared; the
 *    shared area is sorted by name, length and value, all descending;
 *  - tails (directory entries, symlink targets, inline content, chunk
 *    tables) stay inside one block, with slot-aligned padding before the
 *    inode when needed, and go to a data block when they cannot.
 *
 * This file rewrites the tree (the first point); writer-layout.c places
 * everything (the others), writer-emit.c writes the bytes.
 */
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "cfs-image.h"
#include "writer-internal.h"

static bool is_whiteout(const struct cfs_node *node)
{
	return (node->mode & S_IFMT) == S_IFCHR && node->rdev == 0;
}

/* Pick the format version; also restart every node's xattr budget from
 * zero, as upstream does (its writer works on a copy of the tree that does
 * not carry the budget over), so that the xattrs the writer adds are
 * accepted or refused exactly as upstream. */
static int update_version(void *userdata, struct cfs_node *node, const char *path)
{
	struct wctx *w = userdata;

	if (node->link_to)
		return 0;
	node->xattr_budget = 0;
	if (w->version < 1 && w->opts->max_version >= 1 && is_whiteout(node))
		w->version = 1;
	return 0;
}

static int add_overlay_xattrs(struct wctx *w, struct cfs_node *node)
{
	int r;

	/* Escape the tree's own trusted.overlay.* xattrs: overlayfs would
	 * otherwise interpret them. */
	for (size_t i = 0; i < node->n_xattrs; i++) {
		struct cfs_xattr *x = &node->xattrs[i];
		if (!cfs_has_prefix(x->key, CFS_OVL_PREFIX))
			continue;
		char *k = cfs_strdup_printf(CFS_OVL_ESCAPED_PREFIX "%s", x->key + strlen(CFS_OVL_PREFIX));
		if (!k)
			return -ENOMEM;
		free(x->key);
		x->key = k;
		cfs_node_xattrs_changed(node);
	}

	if (cfs_writer_is_external(node)) {
		uint8_t mc[4 + CFS_DIGEST_SIZE];
		size_t mc_len = 0;

		if (node->digest_set) {
			mc_len = sizeof(mc);
			mc[0] = 0;              /* version */
			mc[1] = (uint8_t)mc_len;
			mc[2] = 0;              /* flags */
			mc[3] = 1;              /* FS_VERITY_HASH_ALG_SHA256 */
			memcpy(mc + 4, node->digest, CFS_DIGEST_SIZE);
		}
		r = cfs_node_set_xattr(node, CFS_OVL_METACOPY, mc, mc_len);
		if (r < 0)
			return r;
		if (node->payload && node->payload[0]) {
			_cleanup_free_ char *redirect = cfs_strdup_printf("/%s", node->payload);
			if (!redirect)
				return -ENOMEM;
			r = cfs_node_set_xattr(node, CFS_OVL_REDIRECT, redirect, strlen(redirect));
			if (r < 0)
				return r;
		}
	}

	if (is_whiteout(node) && node->parent) {
		struct cfs_node *parent = node->parent;

		/* Keep the whiteout as an escaped one: a plain file that
		 * overlayfs presents as a whiteout. */
		node->size = 0;
		node->mode = S_IFREG | (node->mode & ~(uint32_t)S_IFMT);
		if ((r = cfs_node_set_xattr(node, CFS_OVL_ESCAPED_PREFIX "whiteout", "", 0)) < 0 ||
		    (r = cfs_node_set_xattr(node, "user.overlay.whiteout", "", 0)) < 0 ||
		    (r = cfs_node_set_xattr(parent, CFS_OVL_ESCAPED_PREFIX "whiteouts", "", 0)) < 0 ||
		    (r = cfs_node_set_xattr(parent, "user.overlay.whiteouts", "", 0)) < 0)
			return r;
		if (w->version >= 1) {
			if ((r = cfs_node_set_xattr(parent, CFS_OVL_ESCAPED_PREFIX "opaque", "x", 1)) < 0 ||
			    (r = cfs_node_set_xattr(parent, "user.overlay.opaque", "x", 1)) < 0)
				return r;
		}
	}
	return 0;
}

static int add_link(struct cfs_node *dir, const char *name, struct cfs_node *target)
{
	struct cfs_node *link;
	int r;

	if (cfs_node_lookup_child(dir, name))
		return 0;
	link = cfs_node_new();
	if (!link)
		return -ENOMEM;
	link->mode = 0; /* only a directory entry */
	link->link_to = target;
	r = cfs_node_add_child(dir, link, name);
	if (r < 0)
		cfs_node_free(link);
	return r;
}

static int node_error(struct wctx *w, const struct cfs_node *node, int r)
{
	if (w->opts->ret_error_path && !*w->opts->ret_error_path)
		*w->opts->ret_error_path = cfs_node_path(node);
	return r;
}

/* Check one node and add what overlayfs needs to it; "." and ".." to a
 * directory, before its children are walked. */
static int rewrite_node(void *userdata, struct cfs_node *node, const char *path)
{
	struct wctx *w = userdata;
	struct cfs_node *parent = node == w->root ? node : node->parent;
	int r;

	if (node->name && strchr(node->name, '/'))
		return node_error(w, node, -EINVAL);
	if (node->link_to) {
		const struct cfs_node *t = cfs_node_follow(node);

		/* Only the writer's own "." and ".." name a directory twice. */
		if (t && cfs_node_is_dir(t) && strcmp(node->name, ".") != 0 &&
		    strcmp(node->name, "..") != 0)
			return node_error(w, node, -EINVAL);
		return 0;
	}
	if (!cfs_mode_valid(node->mode) || (!cfs_node_is_dir(node) && node->n_children))
		return node_error(w, node, -EINVAL);
	if (node->payload && strlen(node->payload) >= CFS_PATH_MAX)
		return node_error(w, node, -ENAMETOOLONG);
	if (cfs_writer_is_external(node)) {
		unsigned bits;
		uint64_t count;
		cfs_writer_chunking(node->size, &bits, &count);
		if (count > CFS_MAX_NONINLINE_CHUNKS)
			return node_error(w, node, -EFBIG);
	}
	r = add_overlay_xattrs(w, node);
	if (r < 0)
		return node_error(w, node, r);
	if (!cfs_node_is_dir(node))
		return 0;
	if ((r = add_link(node, ".", node)) < 0 || (r = add_link(node, "..", parent)) < 0)
		return r;
	return 0;
}

/* 256 whiteouts "00".."ff" in the root hide the object store's
 * subdirectories when the store is used as a plain lower layer. */
static int add_root_whiteouts(struct cfs_node *root)
{
	static const char hex[] = "0123456789abcdef";
	const struct cfs_xattr *selinux = cfs_node_get_xattr(root, "security.selinux");
	int r;

	for (unsigned i = 0; i < 256; i++) {
		char name[3] = { hex[i >> 4], hex[i & 15], '\0' };
		struct cfs_node *child;

		if (cfs_node_lookup_child(root, name))
			continue;
		child = cfs_node_new();
		if (!child)
			return -ENOMEM;
		child->mode = S_IFCHR | 0644;
		child->rdev = 0;
		child->uid = root->uid;
		child->gid = root->gid;
		child->mtime_sec = root->mtime_sec;
		child->mtime_nsec = root->mtime_nsec;
		if (selinux) {
			r = cfs_node_set_xattr(child, selinux->key, selinux->value, selinux->value_len);
			if (r < 0) {
				cfs_node_free(child);
				return r;
			}
		}
		r = cfs_node_add_child(root, child, name);
		if (r < 0) {
			cfs_node_free(child);
			return r;
		}
	}
	return 0;
}

int cfs_write_image(struct cfs_node *root, const struct cfs_write_options *opts,
		    uint32_t *ret_version)
{
	struct cfs_write_options o = *opts;
	struct wctx w = { .opts = &o, .root = root };
	int r;

	if (!root || !o.write)
		return -EINVAL;
	if (o.ret_error_path)
		*o.ret_error_path = NULL;
	if (o.min_version > CFS_VERSION_MAX || o.max_version > CFS_VERSION_MAX)
		return -EINVAL;
	if (!cfs_node_is_dir(root))
		return -ENOTDIR;
	if (o.max_version < o.min_version)
		o.max_version = o.min_version;
	w.version = o.min_version;
	update_version(&w, root, "/");
	r = cfs_node_walk(root, update_version, &w);
	if (r < 0)
		return r;

	r = rewrite_node(&w, root, "/");
	if (r >= 0)
		r = cfs_node_walk(root, rewrite_node, &w);
	if (r < 0)
		return r;
	r = cfs_node_set_xattr(root, CFS_OVL_PREFIX "opaque", "y", 1);
	if (r < 0)
		return r;
	r = add_root_whiteouts(root);
	if (r < 0)
		return r;
	r = cfs_writer_order(&w);
	if (r < 0)
		return r;
	r = cfs_writer_share_xattrs(&w);
	if (r < 0)
		goto out;
	cfs_writer_place_inodes(&w);
	if (w.root->w_nid > UINT16_MAX) {
		r = -EINVAL;
		goto out;
	}
	r = cfs_writer_emit(&w);
	if (r >= 0 && ret_version)
		*ret_version = w.version;
out:
	free(w.shared);
	return r < 0 ? r : 0;
}
