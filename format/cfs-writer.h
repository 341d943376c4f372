/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Building composefs images: an in-memory tree of nodes, filled from a
 * composefs dump file (composefs-dump(5)) or from a directory, and written
 * out as an EROFS image byte-identical to what upstream mkcomposefs 1.0.8
 * produces for the same input and format version.
 *
 * Ownership: a parent owns its children; cfs_node_free() frees a node and
 * everything below it.  A hard link is a node of its own whose link_to points
 * (borrowed) at the node holding the inode data; only that target is written
 * as an inode, the link is only a directory entry.
 *
 * Errors are negative errno values.  The dump parser also returns a
 * human-readable message (malloc'ed, one line) describing the failure.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/types.h>

#include "cfs-image.h"
#include "cfs-util.h"

/* Format versions this writer can produce. */
#define CFS_VERSION_MAX 1
#define CFS_DEFAULT_VERSION_MIN 0
#define CFS_DEFAULT_VERSION_MAX 1

/* Largest content a dump may give inline (upstream LCFS_INLINE_CONTENT_MAX). */
#define CFS_INLINE_CONTENT_MAX 5000
/* Regular files up to this size are inlined when scanning a directory. */
#define CFS_INLINE_SCAN_MAX 64
/* Total xattr budget of one node from external input (upstream's half of UINT16_MAX). */
#define CFS_XATTR_EXTERNAL_MAX (UINT16_MAX / 2)
/* External files need a chunk table that fits one block (upstream limit). */
#define CFS_MAX_NONINLINE_CHUNKS 1024

struct cfs_xattr {
	char *key;           /* full name, NUL-terminated */
	uint8_t *value;
	uint16_t value_len;
	int64_t shared_off;  /* writer: offset in the shared area, or -1 */
};

struct cfs_node {
	struct cfs_node *parent;   /* borrowed; NULL for the root */
	struct cfs_node **children; /* owned, sorted by strcmp() of names */
	size_t n_children, children_cap;
	struct cfs_node *link_to;  /* borrowed: hard link target, or NULL */

	char *name;                /* NULL for the root */
	char *payload;             /* symlink target or backing path "xx/yyyy..." */
	uint8_t *content;          /* inline content of @size bytes, or NULL */
	struct cfs_xattr *xattrs;
	size_t n_xattrs, xattrs_cap;
	size_t xattr_budget;       /* upstream's conservative size accounting */
	uint32_t *xattr_slots;     /* tree.c's index of the xattrs by name, or NULL */
	size_t n_xattr_slots, used_xattr_slots;
	bool digest_set;
	uint8_t digest[CFS_DIGEST_SIZE];

	uint32_t mode;             /* as given: only the low 16 bits are stored */
	uint32_t nlink, uid, gid;
	uint32_t rdev;             /* raw device number, stored as is */
	uint64_t size;
	int64_t mtime_sec;
	uint32_t mtime_nsec;

	/* Writer state, meaningful only inside cfs_write_image(). */
	struct cfs_node *w_next;
	uint32_t w_ino;
	bool w_compact;
	uint32_t w_ipad, w_xattr_size, w_isize, w_n_blocks, w_tailsize;
	uint64_t w_nid;
};

/* Nodes. */
struct cfs_node *cfs_node_new(void); /* NULL on ENOMEM; nlink 1, everything else 0 */
struct cfs_node *cfs_node_free(struct cfs_node *node); /* the whole subtree; NULL-safe */
CFS_DEFINE_CLEANUP(struct cfs_node *, cfs_node_free)

/* Add @child under @name (sorted insert).  Takes ownership of @child on
 * success.  -ENOTDIR, -EINVAL (empty name), -ENAMETOOLONG (> 255),
 * -EEXIST, -ENOMEM. */
int cfs_node_add_child(struct cfs_node *parent, struct cfs_node *child, const char *name);
struct cfs_node *cfs_node_lookup_child(const struct cfs_node *node, const char *name);
/* Follow link_to to the inode-holding node; NULL on a cycle. */
struct cfs_node *cfs_node_follow(struct cfs_node *node);

/* Set (replace) an xattr.  -ERANGE for an empty or over-long name or when
 * the node's xattr budget is exceeded, -EINVAL for a value over 65535
 * bytes, -ENOMEM. */
int cfs_node_set_xattr(struct cfs_node *node, const char *key, const void *value, size_t len);
const struct cfs_xattr *cfs_node_get_xattr(const struct cfs_node *node, const char *key);

/* Dump files.  The whole input is parsed into a tree; on failure *ret_err
 * (if not NULL) gets a malloc'ed one-line message, with "line N: " in front
 * when it concerns one line.  CFS_PARSE_STRICT applies upstream's
 * CFS_PARSE_STRICT rules (trailing newline, rdev, symlink size). */
#define CFS_PARSE_STRICT (1U << 0)
int cfs_dump_parse_mem(const void *data, size_t size, unsigned flags, struct cfs_node **ret_root,
		       char **ret_err);
int cfs_dump_parse_file(FILE *in, unsigned flags, struct cfs_node **ret_root, char **ret_err);

/* Dump printing: @root and everything below it as composefs-dump(5) text,
 * exactly as upstream `composefs-info dump` prints it.  -EIO on a write
 * error of @out, -ENOMEM. */
int cfs_dump_print(const struct cfs_node *root, FILE *out);
/* How cfs_dump_print() escapes a field (also for `composefs-info ls`):
 * backslash, \n, \r, \t and \xHH for what is not printable. */
#define CFS_ESC_NO_SPACE (1U << 0)  /* keep spaces (ls) */
#define CFS_ESC_EQUAL (1U << 1)     /* escape '=' (xattrs) */
#define CFS_ESC_LONE_DASH (1U << 2) /* a lone "-" would read as "unset" */
void cfs_print_escaped(FILE *out, const char *s, size_t len, unsigned flags);

/* Walk the tree below @root (not @root itself) depth first, children in
 * order, without recursion.  @fn gets each node and its path from the root
 * ("/a/b"); it may change that node, adding children to it too (they are
 * walked).  Return 0 from @fn to continue, anything else stops the walk and
 * is returned; the walk itself may fail with -ENOMEM. */
typedef int (*cfs_node_walk_fn)(void *userdata, struct cfs_node *node, const char *path);
int cfs_node_walk(struct cfs_node *root, cfs_node_walk_fn fn, void *userdata);

/* Loading an image, as upstream's lcfs_load_node_from_image() does: the
 * tree the dump parser makes from the image's dump.  The 256 whiteouts
 * (0:0 character devices) are dropped, overlay xattrs hidden or unescaped,
 * an escaped whiteout becomes a 0:0 character device again; the first path
 * of an inode in depth-first order holds it and later ones are link_to
 * nodes; xattrs are counted against upstream's image budget (UINT16_MAX).
 * A hard link to a directory (which cfs_write_image() refuses) and names
 * with '/' are kept as the image has them, for the printers.  @toplevel
 * (NULL or a NULL-terminated list) keeps only the named entries of the root,
 * like `composefs-info --filter`.  No recursion; any corruption fails the
 * whole load: -EFSCORRUPTED, -EOPNOTSUPP, -EFBIG (more than a dump can hold:
 * inline content over CFS_INLINE_CONTENT_MAX, xattrs over budget), -ENOMEM.
 * On failure, if @ret_diag is not NULL, its reason says what was corrupt,
 * unsupported or too large (cfs_img_error_detail()); "" for other errors. */
int cfs_tree_from_image(const struct cfs_image *img, const char *const *toplevel,
			struct cfs_node **ret_root, struct cfs_img_diag *ret_diag);

/* Scanning a directory: @path relative to @dirfd.  Reads metadata, symlink
 * targets and xattrs, not file contents (regular files get size only; the
 * caller fills content, digest and payload).  Hard links inside the tree are
 * kept: the first path in sorted depth-first order holds the inode, the
 * others link to it, and its nlink is the number of paths.  On failure
 * *ret_failed_path gets the path that failed (malloc'ed). */
#define CFS_SCAN_SKIP_XATTRS (1U << 0)
#define CFS_SCAN_USE_EPOCH (1U << 1)
#define CFS_SCAN_SKIP_DEVICES (1U << 2)
#define CFS_SCAN_USER_XATTRS (1U << 3)
int cfs_tree_from_dir(int dirfd, const char *path, unsigned flags, struct cfs_node **ret_root,
		      char **ret_failed_path);

/* Writing.  @write is called with consecutive pieces of the image and
 * returns 0 or a negative errno.  The format version is the lowest one >=
 * min_version that the tree needs (whiteouts need 1), capped at
 * max_version; max_version < min_version counts as min_version (upstream
 * rule).  The tree is modified in place (overlay xattrs, whiteouts, "." and
 * ".."), so write a tree once.  Returns 0 and the version written, or
 * -EINVAL (bad version, invalid node: bad mode, children of a non-directory,
 * a name with '/', a hard link to a directory), -ENAMETOOLONG (a payload of
 * PATH_MAX or more), -EFBIG (file too big for a chunk table), -ERANGE
 * (xattrs over budget), -ELOOP, or the error of @write.  The tree may be as
 * deep as memory allows: nothing recurses. */
typedef int (*cfs_write_fn)(void *userdata, const void *buf, size_t len);
struct cfs_write_options {
	uint32_t min_version;
	uint32_t max_version;
	cfs_write_fn write;
	void *userdata;
	/* If not NULL: on a failure caused by one node, the node's path
	 * ("/a/b", malloc'ed) is stored here. */
	char **ret_error_path;
};
/* The path of @node from the root ("/" for the root), malloc'ed. */
char *cfs_node_path(const struct cfs_node *node);
int cfs_write_image(struct cfs_node *root, const struct cfs_write_options *opts,
		    uint32_t *ret_version);
