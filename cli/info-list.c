/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * `composefs-info ls` and `objects`: walks over the tree the image loads
 * into (cfs_tree_from_image(), as upstream's tool does), printed as
 * upstream composefs 1.0.8 prints them.
 */
#include <errno.h>
#include <sys/stat.h>

#include "info-list.h"

static int ls_cb(void *userdata, struct cfs_node *n, const char *path)
{
	FILE *out = userdata;
	/* A hard link entry has no attributes of its own upstream: only its
	 * path is printed. */
	uint32_t type = n->link_to ? 0 : n->mode & S_IFMT;

	cfs_print_escaped(out, path, strlen(path), CFS_ESC_NO_SPACE);
	if (type == S_IFDIR) {
		fputs("/\t", out);
	} else if (type == S_IFLNK) {
		fputs("\t-> ", out);
		cfs_print_escaped(out, n->payload, strlen(n->payload), 0);
	} else if (type == S_IFREG && n->payload) {
		fputs("\t@ ", out);
		cfs_print_escaped(out, n->payload, strlen(n->payload), 0);
	}
	fputc('\n', out);
	return 0;
}

int cfs_info_print_ls(const struct cfs_node *root, FILE *out)
{
	/* The walk only reads the tree. */
	int r = cfs_node_walk((struct cfs_node *)root, ls_cb, out);

	if (r >= 0 && ferror(out))
		r = -EIO;
	return r;
}

struct objects_ctx {
	cfs_info_object_fn fn;
	void *userdata;
};

static int objects_cb(void *userdata, struct cfs_node *n, const char *path)
{
	struct objects_ctx *c = userdata;

	if (n->link_to || !S_ISREG(n->mode) || !n->payload)
		return 0;
	return c->fn(c->userdata, n->payload);
}

int cfs_info_list_objects(const struct cfs_node *root, cfs_info_object_fn fn, void *userdata)
{
	struct objects_ctx c = { fn, userdata };

	/* The root is a directory: only what is below it can be an object. */
	return cfs_node_walk((struct cfs_node *)root, objects_cb, &c);
}
