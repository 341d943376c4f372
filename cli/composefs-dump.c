/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * composefs-dump IMAGE OUTPUT: read a composefs image and write it again
 * with its own format version.  The image is loaded into the writer's tree
 * (the tree `composefs-info dump` prints, the one its dump parses into) and
 * written again: for an image made by a conforming mkcomposefs the output
 * has the same bytes.
 */
#include "config.h"

#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cfs-image.h"
#include "cfs-writer.h"
#include "output.h"

static const char *prog = "composefs-dump";

static void usage(FILE *f)
{
	fprintf(f,
		"Usage: %s IMAGE OUTPUT\n"
		"Read the composefs image IMAGE and write it again as OUTPUT ('-': stdout),\n"
		"using the image's own format version.\n"
		"\n"
		"Options:\n"
		"  -h, --help     Show this help\n"
		"  -V, --version  Show the version\n",
		prog);
}

/* Why the reader failed, with the detail it recorded ("corrupt image:
 * directory nid 36: bad de[0].nameoff 13 in block 0"). */
static void die_reader(const char *path, int r, const char *detail)
{
	const char *what = r == -EFSCORRUPTED ? "corrupt image" :
			   r == -EOPNOTSUPP   ? "unsupported image feature" :
						strerror(-r);

	if (detail && *detail)
		die("%s: %s: %s", path, what, detail);
	die("%s: %s", path, what);
}

int main(int argc, char **argv)
{
	_cleanup_(cfs_img_unrefp) struct cfs_image *img = NULL;
	_cleanup_(cfs_node_freep) struct cfs_node *root = NULL;
	_cleanup_free_ char *err = NULL, *bad_path = NULL;
	struct membuf out = { 0 };
	struct cfs_img_diag diag;
	struct cfs_img_info info;
	int fd, r;

	for (int i = 1; i < argc; i++) {
		if (strcmp(argv[i], "-h") == 0 || strcmp(argv[i], "--help") == 0) {
			usage(stdout);
			return EXIT_SUCCESS;
		}
		if (strcmp(argv[i], "-V") == 0 || strcmp(argv[i], "--version") == 0) {
			printf("composefs-dump %s (composefs-fuse; output as composefs 1.0.8's)\n",
			       PACKAGE_VERSION);
			return EXIT_SUCCESS;
		}
		if (argv[i][0] == '-' && argv[i][1] != '\0' && strcmp(argv[i], "--") != 0)
			die("unknown option '%s' (see --help)", argv[i]);
	}
	if (argc > 1 && strcmp(argv[1], "--") == 0) {
		argv++;
		argc--;
	}
	if (argc < 3)
		die("%s (see --help)", argc < 2 ? "no image specified" : "no output specified");
	if (argc > 3)
		die("too many arguments (see --help)");

	fd = open(argv[1], O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		die("%s: cannot open: %m", argv[1]);
	r = cfs_img_open_fd_ex(fd, 0, &diag, &img);
	close(fd);
	if (r < 0)
		die_reader(argv[1], r, diag.reason);
	cfs_img_get_info(img, &info);
	if (info.composefs_version > CFS_VERSION_MAX)
		die("%s: unsupported composefs format version %u", argv[1], info.composefs_version);

	r = cfs_tree_from_image(img, NULL, &root, &diag);
	if (r < 0)
		die_reader(argv[1], r, diag.reason);

	struct cfs_write_options wo = {
		.min_version = info.composefs_version,
		.max_version = info.composefs_version,
		.write = membuf_write,
		.userdata = &out,
		.ret_error_path = &bad_path,
	};
	r = cfs_write_image(root, &wo, NULL);
	if (r < 0 && bad_path)
		die("%s: cannot rebuild the image from its contents: %s: %s", argv[1], bad_path,
		    strerror(-r));
	if (r < 0)
		die("%s: cannot write image: %s", argv[2], strerror(-r));
	if (output_write(argv[2], &out, &err) < 0)
		die("%s", err ? err : "out of memory");
	free(out.data);
	return EXIT_SUCCESS;
}
