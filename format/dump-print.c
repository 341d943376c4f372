/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Printing a tree as a composefs dump file (composefs-dump(5)), exactly as
 * upstream composefs 1.0.8's `composefs-info dump` prints the tree it loads
 * from an image (cfs_tree_from_image() loads the same one): one line per
 * node, in depth-first order of sorted names, a hard link as an '@' line
 * naming the path that holds the inode.  The walk keeps an explicit stack,
 * so a deep tree cannot exhaust the C stack.
 */
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "writer-internal.h"

void cfs_print_escaped(FILE *out, const char *s, size_t len, unsigned flags)
{
	if ((flags & CFS_ESC_LONE_DASH) && len == 1 && s[0] == '-') {
		fputs("\\x2d", out);
		return;
	}
	for (size_t i = 0; i < len; i++) {
		unsigned char c = (unsigned char)s[i];
		bool hex;

		switch (c) {
		case '\\':
			fputs("\\\\", out);
			continue;
		case '\n':
			fputs("\\n", out);
			continue;
		case '\r':
			fputs("\\r", out);
			continue;
		case '\t':
			fputs("\\t", out);
			continue;
		case '=':
			hex = flags & CFS_ESC_EQUAL;
			break;
		default:
			/* C locale isprint() / isgraph() */
			hex = (flags & CFS_ESC_NO_SPACE) ? (c < 0x20 || c > 0x7e) : (c <= 0x20 || c > 0x7e);
			break;
		}
		if (hex)
			fprintf(out, "\\x%.2x", c);
		else
			fputc(c, out);
	}
}

static void print_str(FILE *out, const char *s, unsigned flags)
{
	cfs_print_escaped(out, s, strlen(s), flags);
}

static int print_dump_line(FILE *out, const struct cfs_node *n, const char *path)
{
	const struct cfs_node *t = n->link_to ? n->link_to : n;
	_cleanup_free_ char *link_path = NULL;

	if (n->link_to) {
		/* The root's path is "" here, as upstream's node_build_path(). */
		link_path = t->parent ? cfs_node_path(t) : strdup("");
		if (!link_path)
			return -ENOMEM;
	}
	print_str(out, path, 0);
	fprintf(out, " %" PRIu64 " %s%o %u %u %u %u %" PRIi64 ".%u ", t->size, link_path ? "@" : "",
		t->mode, t->nlink, t->uid, t->gid, t->rdev, t->mtime_sec, t->mtime_nsec);
	if (link_path || t->payload)
		print_str(out, link_path ? link_path : t->payload, CFS_ESC_LONE_DASH);
	else
		fputc('-', out);
	fputc(' ', out);
	if (t->content)
		cfs_print_escaped(out, (const char *)t->content, (size_t)t->size, CFS_ESC_LONE_DASH);
	else
		fputc('-', out);
	if (t->digest_set) {
		char hex[2 * CFS_DIGEST_SIZE + 1];

		cfs_digest_to_hex(t->digest, hex);
		fprintf(out, " %s", hex);
	} else {
		fputs(" -", out);
	}
	for (size_t i = 0; i < t->n_xattrs; i++) {
		fputc(' ', out);
		print_str(out, t->xattrs[i].key, CFS_ESC_EQUAL);
		fputc('=', out);
		cfs_print_escaped(out, (const char *)t->xattrs[i].value, t->xattrs[i].value_len,
				  CFS_ESC_EQUAL);
	}
	fputc('\n', out);
	return 0;
}

static int dump_cb(void *userdata, struct cfs_node *n, const char *path)
{
	return print_dump_line(userdata, n, path);
}

int cfs_dump_print(const struct cfs_node *root, FILE *out)
{
	int r = print_dump_line(out, root, "/");

	/* The walk only reads the tree. */
	if (r >= 0)
		r = cfs_node_walk((struct cfs_node *)root, dump_cb, out);
	if (r >= 0 && ferror(out))
		r = -EIO;
	return r;
}

int cfs_img_print_dump(const struct cfs_image *img, FILE *out)
{
	_cleanup_(cfs_node_freep) struct cfs_node *root = NULL;
	int r;

	r = cfs_tree_from_image(img, NULL, &root, NULL);
	if (r < 0)
		return r;
	return cfs_dump_print(root, out);
}
