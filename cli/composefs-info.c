/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * composefs-info: print what a composefs image holds, with the commands and
 * output of upstream composefs 1.0.8 (ls, objects, missing-objects, dump,
 * measure-file), plus `verify` when built with info-verify.c.
 */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cas.h"
#include "cfs-image.h"
#include "cfs-writer.h"
#include "info-list.h"
#include "info-sign.h"
#include "info-verify.h"

static const char *arg_basedir;
static const char *arg_key, *arg_cert, *arg_out, *arg_signature;
static char **arg_filter; /* NULL-terminated, or NULL */
static size_t n_filter;

static void usage(FILE *f, const char *argv0)
{
	fprintf(f,
		"Usage: %s [OPTIONS] COMMAND IMAGE...\n"
		"\n"
		"Commands:\n"
		"  ls               list the files of each image\n"
		"  objects          list the backing objects the images refer to\n"
		"  missing-objects  list the objects not present in --basedir\n"
		"  dump             print each image in the composefs-dump(5) format\n"
		"  measure-file     print the fs-verity digest of each given FILE\n"
		"  verify           check every object against its digest (needs --basedir)\n"
		"  sign             write an fs-verity signature of the image's digest\n"
		"                   (--key, --cert, --out; as fsverity sign makes it)\n"
		"  verify-signature check a signature of the image (--signature, --cert)\n"
		"\n"
		"Options:\n"
		"  --basedir=DIR[:DIR...]  object store directories\n"
		"  --filter=NAME           only this top-level entry (may be repeated)\n"
		"  --tree-cache=DIR        where verify saves Merkle trees\n"
		"  --threads=N             threads for verify\n"
		"  --key=FILE              private key (PEM) for sign\n"
		"  --cert=FILE[:FILE...]   certificate (PEM) for sign; trusted ones for\n"
		"                          verify-signature (PEM or DER)\n"
		"  --out=FILE              where sign writes the signature (DER)\n"
		"  --signature=FILE        the signature verify-signature checks\n"
		"  -h, --help              show this help\n"
		"  -V, --version           show the version\n",
		argv0);
}

static int add_filter(const char *name)
{
	char **f;

	if (strchr(name, '/')) {
		fprintf(stderr, "composefs-info: filter must be a single name: '%s'\n", name);
		return -EINVAL;
	}
	f = realloc(arg_filter, (n_filter + 2) * sizeof(*f));
	if (!f)
		return -ENOMEM;
	arg_filter = f;
	arg_filter[n_filter++] = (char *)name;
	arg_filter[n_filter] = NULL;
	return 0;
}

/* Open an image and report a failure in one line naming it. */
static int open_image(const char *path, struct cfs_image **ret_img)
{
	_cleanup_close_ int fd = -EBADF;
	struct cfs_img_diag diag;
	int r;

	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		r = -errno;
		fprintf(stderr, "composefs-info: Failed to open '%s': %s\n", path, strerror(-r));
		return r;
	}
	r = cfs_img_open_fd_ex(fd, 0, &diag, ret_img);
	if (r < 0) {
		fprintf(stderr, "composefs-info: Failed to load '%s': %s\n", path,
			diag.reason[0] ? diag.reason : strerror(-r));
		return r;
	}
	return 0;
}

/* Load the tree of an image (as upstream's tool does) and report a
 * failure in one line naming it. */
static int load_tree(const char *path, struct cfs_node **ret_root)
{
	_cleanup_(cfs_img_unrefp) struct cfs_image *img = NULL;
	struct cfs_img_diag diag;
	const char *detail = diag.reason;
	int r;

	r = open_image(path, &img);
	if (r < 0)
		return r;
	r = cfs_tree_from_image(img, (const char *const *)arg_filter, ret_root, &diag);
	if (r >= 0)
		return 0;
	if (r == -EFSCORRUPTED)
		fprintf(stderr, "composefs-info: Failed to load '%s': corrupt image: %s\n", path,
			*detail ? detail : strerror(-r));
	else if (*detail)
		fprintf(stderr, "composefs-info: Failed to load '%s': %s: %s\n", path, strerror(-r),
			detail);
	else
		fprintf(stderr, "composefs-info: Failed to load '%s': %s\n", path, strerror(-r));
	return r;
}

/* ls / dump: print one image; nothing of it if it is corrupt. */
static int print_image(const char *path, bool ls)
{
	_cleanup_(cfs_node_freep) struct cfs_node *root = NULL;
	_cleanup_free_ char *buf = NULL;
	size_t len = 0;
	FILE *mem;
	int r;

	r = load_tree(path, &root);
	if (r < 0)
		return r;
	mem = open_memstream(&buf, &len);
	if (!mem)
		return -errno;
	r = ls ? cfs_info_print_ls(root, mem) : cfs_dump_print(root, mem);
	if (fclose(mem) != 0 && r >= 0)
		r = -errno;
	if (r < 0) {
		fprintf(stderr, "composefs-info: Failed to print '%s': %s\n", path, strerror(-r));
		return r;
	}
	if (fwrite(buf, 1, len, stdout) != len)
		return -EIO;
	return 0;
}

/* Every object path met, in tree order; sorted and deduplicated at the end. */
struct objects {
	char **paths;
	size_t n, cap;
};

static int collect_object(void *userdata, const char *path)
{
	struct objects *o = userdata;
	char *dup;

	if (CFS_GROW(o->paths, o->cap, o->n + 1) < 0)
		return -ENOMEM;
	dup = strdup(path);
	if (!dup)
		return -ENOMEM;
	o->paths[o->n++] = dup;
	return 0;
}

static int cmp_str(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Several base directories may be given separated by ':' (read as every
 * tool reads them, cfs_basedirs_parse()); an object is present if it is in
 * any of them. */
struct basedirs {
	int fds[16];
	size_t n;
};

static int open_basedirs(const char *spec, struct basedirs *b)
{
	char **dirs = NULL;
	int n = cfs_basedirs_parse(spec, &dirs), r = 0;

	b->n = 0;
	if (n == -EINVAL) {
		fprintf(stderr, "composefs-info: --basedir '%s': an empty directory name in the list\n",
			spec);
		return n;
	}
	if (n < 0) {
		fprintf(stderr, "composefs-info: --basedir '%s': %s\n", spec, strerror(-n));
		return n;
	}
	if ((size_t)n > ARRAY_SIZE(b->fds)) {
		fprintf(stderr, "composefs-info: too many basedirs in '%s'\n", spec);
		r = -E2BIG;
	}
	for (int i = 0; r == 0 && i < n; i++) {
		int fd = open(dirs[i], O_RDONLY | O_CLOEXEC | O_DIRECTORY | O_PATH);

		if (fd < 0) {
			r = -errno;
			fprintf(stderr, "composefs-info: Can't open basedir '%s': %s\n", dirs[i],
				strerror(-r));
			break;
		}
		b->fds[b->n++] = fd;
	}
	cfs_strv_free(dirs);
	return r;
}

static void close_basedirs(struct basedirs *b)
{
	for (size_t i = 0; i < b->n; i++)
		close(b->fds[i]);
	b->n = 0;
}

static int list_objects(int nimages, char **images, bool missing, const struct basedirs *bd)
{
	struct objects o = { 0 };
	int r = 0;

	for (int i = 0; i < nimages && r >= 0; i++) {
		_cleanup_(cfs_node_freep) struct cfs_node *root = NULL;

		r = load_tree(images[i], &root);
		if (r < 0)
			break;
		r = cfs_info_list_objects(root, collect_object, &o);
		if (r < 0)
			fprintf(stderr, "composefs-info: Failed to list the objects of '%s': %s\n",
				images[i], strerror(-r));
	}
	if (r >= 0) {
		if (o.n)
			qsort(o.paths, o.n, sizeof(*o.paths), cmp_str);
		for (size_t i = 0; i < o.n; i++) {
			bool present = false;

			if (i > 0 && strcmp(o.paths[i], o.paths[i - 1]) == 0)
				continue;
			if (missing) {
				const char *rel = o.paths[i];
				struct stat st;

				while (*rel == '/')
					rel++;
				for (size_t k = 0; k < bd->n && !present; k++)
					present = fstatat(bd->fds[k], rel, &st, AT_EMPTY_PATH) == 0;
			}
			if (!present)
				printf("%s\n", o.paths[i]);
		}
	}
	for (size_t i = 0; i < o.n; i++)
		free(o.paths[i]);
	free(o.paths);
	return r;
}

static int measure_files(int nfiles, char **files)
{
	if (nfiles == 0) {
		fprintf(stderr, "composefs-info: no files specified\n");
		return -EINVAL;
	}
	for (int i = 0; i < nfiles; i++) {
		_cleanup_close_ int fd = -EBADF;
		uint8_t digest[CFS_DIGEST_SIZE];
		char hex[2 * CFS_DIGEST_SIZE + 1];
		int r;

		fd = open(files[i], O_RDONLY | O_CLOEXEC);
		if (fd < 0) {
			r = -errno;
			fprintf(stderr, "composefs-info: Failed to open '%s': %s\n", files[i], strerror(-r));
			return r;
		}
		r = cfs_fsverity_digest_fd(fd, digest);
		if (r < 0) {
			fprintf(stderr, "composefs-info: Failed to measure '%s': %s\n", files[i],
				strerror(-r));
			return r;
		}
		cfs_digest_to_hex(digest, hex);
		printf("%s\n", hex);
	}
	return 0;
}

static int verify_images(int nimages, char **images, const struct cfs_info_verify_options *vo)
{
	int worst = 0;

	for (int i = 0; i < nimages; i++) {
		_cleanup_(cfs_img_unrefp) struct cfs_image *img = NULL;
		int r;

		r = open_image(images[i], &img);
		if (r < 0)
			return r;
		r = cfs_info_verify(img, images[i], vo);
		if (r < 0) {
			fprintf(stderr, "composefs-info: Failed to verify '%s': %s\n", images[i],
				strerror(-r));
			return r;
		}
		if (r > 0)
			worst = 1;
	}
	return worst;
}

enum {
	OPT_BASEDIR = 0x100,
	OPT_FILTER,
	OPT_TREE_CACHE,
	OPT_THREADS,
	OPT_KEY,
	OPT_CERT,
	OPT_OUT,
	OPT_SIGNATURE,
};

int main(int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "basedir", required_argument, NULL, OPT_BASEDIR },
		{ "filter", required_argument, NULL, OPT_FILTER },
		{ "tree-cache", required_argument, NULL, OPT_TREE_CACHE },
		{ "threads", required_argument, NULL, OPT_THREADS },
		{ "key", required_argument, NULL, OPT_KEY },
		{ "cert", required_argument, NULL, OPT_CERT },
		{ "out", required_argument, NULL, OPT_OUT },
		{ "signature", required_argument, NULL, OPT_SIGNATURE },
		{ "help", no_argument, NULL, 'h' },
		{ "version", no_argument, NULL, 'V' },
		{},
	};
	struct basedirs bd = { .n = 0 };
	struct cfs_info_verify_options vo = { 0 };
	const char *cmd;
	char **operands;
	int nops, opt, r;

	while ((opt = getopt_long(argc, argv, "hV", longopts, NULL)) != -1) {
		switch (opt) {
		case 'V':
			printf("composefs-info %s (composefs-fuse; output as composefs 1.0.8's)\n",
			       PACKAGE_VERSION);
			return EXIT_SUCCESS;
		case OPT_BASEDIR:
			arg_basedir = optarg;
			break;
		case OPT_FILTER:
			if (add_filter(optarg) < 0)
				return EXIT_FAILURE;
			break;
		case OPT_TREE_CACHE:
			vo.tree_cache = optarg;
			break;
		case OPT_THREADS:
			vo.threads = optarg;
			break;
		case OPT_KEY:
			arg_key = optarg;
			break;
		case OPT_CERT:
			arg_cert = optarg;
			break;
		case OPT_OUT:
			arg_out = optarg;
			break;
		case OPT_SIGNATURE:
			arg_signature = optarg;
			break;
		case 'h':
			usage(stdout, argv[0]);
			return EXIT_SUCCESS;
		default:
			usage(stderr, argv[0]);
			return EXIT_FAILURE;
		}
	}
	if (optind >= argc) {
		fprintf(stderr, "composefs-info: no command specified\n");
		usage(stderr, argv[0]);
		return EXIT_FAILURE;
	}
	cmd = argv[optind];
	operands = argv + optind + 1;
	nops = argc - optind - 1;

	if (strcmp(cmd, "measure-file") == 0)
		return measure_files(nops, operands) < 0 ? EXIT_FAILURE : EXIT_SUCCESS;
	if (strcmp(cmd, "sign") == 0 || strcmp(cmd, "verify-signature") == 0) {
		if (nops != 1) {
			fprintf(stderr, "composefs-info: %s takes one image\n", cmd);
			return EXIT_FAILURE;
		}
		r = strcmp(cmd, "sign") == 0 ? cfs_info_sign(operands[0], arg_key, arg_cert, arg_out)
					     : cfs_info_verify_signature(operands[0], arg_signature, arg_cert);
		if (fflush(stdout) != 0 && r >= 0)
			r = -EIO;
		return r == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
	}
	if (strcmp(cmd, "ls") != 0 && strcmp(cmd, "dump") != 0 && strcmp(cmd, "objects") != 0 &&
	    strcmp(cmd, "missing-objects") != 0 && strcmp(cmd, "verify") != 0) {
		fprintf(stderr, "composefs-info: unknown command '%s'\n", cmd);
		usage(stderr, argv[0]);
		return EXIT_FAILURE;
	}
	if (arg_basedir && open_basedirs(arg_basedir, &bd) < 0)
		return EXIT_FAILURE;
	if (nops == 0) {
		fprintf(stderr, "composefs-info: no image path specified\n");
		usage(stderr, argv[0]);
		close_basedirs(&bd);
		return EXIT_FAILURE;
	}

	if (strcmp(cmd, "ls") == 0 || strcmp(cmd, "dump") == 0) {
		r = 0;
		for (int i = 0; i < nops && r >= 0; i++)
			r = print_image(operands[i], strcmp(cmd, "ls") == 0);
	} else if (strcmp(cmd, "verify") == 0) {
		vo.basedir = arg_basedir;
		r = verify_images(nops, operands, &vo);
	} else {
		r = list_objects(nops, operands, strcmp(cmd, "missing-objects") == 0, &bd);
	}
	close_basedirs(&bd);
	free(arg_filter);
	if (fflush(stdout) != 0 && r >= 0) {
		fprintf(stderr, "composefs-info: write error: %s\n", strerror(errno));
		r = -EIO;
	}
	return r == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
