/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * cas-tool: a thin driver of the cas/ library for tests and experiments.
 *
 *   cas-tool features
 *       {"io_uring_built": true|false}
 *   cas-tool digest FILE...
 *       print the fs-verity digest of each file (libfsverity, as mkcomposefs)
 *   cas-tool tree-digest [--tree-cache=DIR] FILE
 *       build the Merkle tree with the engine's own code path (libfsverity
 *       callbacks, read-ahead), print its digest, optionally persist it
 *   cas-tool read [OPTIONS] BASEDIR REDIRECT|- DIGEST|- SIZE [OFF:LEN...]
 *       open one object and read ranges; prints one JSON object per line:
 *       {"open": 0, "method": ..., "io": ...} then per range
 *       {"off": O, "len": L, "res": N or -errno, "sha256": hex of the bytes}
 *       and finally {"stats": {...}}.  Without ranges the whole object is
 *       read in 128 KiB requests and reported as one range.
 * Options: --io=auto|uring|pread  --method=auto|userspace|kernel
 *          --no-verify  --require-digest  --tree-cache=DIR  --min-persist=N
 *          --fake-measure=HEX|enodata   (stand-in for FS_IOC_MEASURE_VERITY)
 *          --reopen=N   (open, read, close N times; stats accumulate)
 *          --check-all  (cfs_object_check_all() after open: builds the tree)
 *          --wait       (after open and --check-all, wait for a line on stdin
 *                        before reading)
 *          --deny-io-uring=enosys|eperm  (seccomp: io_uring_setup fails so)
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stddef.h>
#include <sys/prctl.h>
#include <sys/syscall.h>

#include <openssl/evp.h>
#include <openssl/sha.h>

#include "config.h"
#include "cas-internal.h"

static uint8_t fake_digest[CFS_DIGEST_SIZE];
static int fake_error;

static int fake_measure(void *userdata, int fd, uint8_t ret_digest[CFS_DIGEST_SIZE])
{
	if (fake_error)
		return -fake_error;
	memcpy(ret_digest, fake_digest, CFS_DIGEST_SIZE);
	return 0;
}

static int fake_enable(void *userdata, int fd)
{
	return -EOPNOTSUPP;
}

static const struct cfs_verity_ops fake_ops = { .measure = fake_measure, .enable = fake_enable };

/* Make io_uring_setup() fail with @err, as seccomp profiles of container
 * runtimes do, so the run-time fallback to pread can be tested. */
static int deny_io_uring(int err)
{
	struct sock_filter filter[] = {
		BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_io_uring_setup, 0, 1),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | (err & SECCOMP_RET_DATA)),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
	};
	struct sock_fprog prog = { .len = ARRAY_SIZE(filter), .filter = filter };

	if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0 ||
	    prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog) < 0)
		return -errno;
	return 0;
}

static int cmd_digest(int argc, char **argv)
{
	int ret = 0;

	for (int i = 0; i < argc; i++) {
		uint8_t d[CFS_DIGEST_SIZE];
		char hex[2 * CFS_DIGEST_SIZE + 1];
		int fd = open(argv[i], O_RDONLY | O_CLOEXEC), r;

		if (fd < 0) {
			fprintf(stderr, "cas-tool: cannot open '%s': %m\n", argv[i]);
			ret = 1;
			continue;
		}
		r = cfs_fsverity_digest_fd(fd, d);
		close(fd);
		if (r < 0) {
			fprintf(stderr, "cas-tool: digest of '%s' failed: %s\n", argv[i], strerror(-r));
			ret = 1;
			continue;
		}
		cfs_digest_to_hex(d, hex);
		printf("%s %s\n", hex, argv[i]);
	}
	return ret;
}

static int cmd_tree_digest(int argc, char **argv)
{
	struct cfs_cas_options opts = { .tree_cache_min_size = 1 };
	_cleanup_(cfs_merkle_freep) struct cfs_merkle *t = NULL;
	_cleanup_close_ int fd = -EBADF;
	struct cfs_tree_cache tc;
	struct cfs_io io;
	char hex[2 * CFS_DIGEST_SIZE + 1];
	const char *file = argv[argc - 1];
	off_t size;
	int r;

	if (argc == 2 && strncmp(argv[0], "--tree-cache=", 13) == 0)
		opts.tree_cache_dir = argv[0] + 13;
	else if (argc != 1)
		return 2;
	fd = open(file, O_RDONLY | O_CLOEXEC);
	if (fd < 0 || (size = lseek(fd, 0, SEEK_END)) < 0) {
		fprintf(stderr, "cas-tool: cannot open '%s': %m\n", file);
		return 1;
	}
	r = cfs_io_init(&io, CFS_IO_AUTO);
	if (r < 0)
		return 1;
	r = cfs_merkle_build_fd(&io, fd, (uint64_t)size, NULL, NULL, &t);
	cfs_io_fini(&io);
	if (r < 0) {
		fprintf(stderr, "cas-tool: tree of '%s' failed: %s\n", file, strerror(-r));
		return 1;
	}
	cfs_digest_to_hex(t->digest, hex);
	printf("%s %s\n", hex, file);
	if (opts.tree_cache_dir) {
		r = cfs_tree_cache_init(&tc, &opts, NULL, 0);
		if (r == 0)
			r = cfs_tree_cache_store(&tc, t);
		cfs_tree_cache_fini(&tc);
		if (r < 0) {
			fprintf(stderr, "cas-tool: cannot persist the tree: %s\n", strerror(-r));
			return 1;
		}
	}
	return 0;
}

static void print_hex(const uint8_t *d, size_t n)
{
	for (size_t i = 0; i < n; i++)
		printf("%02x", d[i]);
}

static void read_range(struct cfs_object *obj, uint64_t off, uint64_t len)
{
	uint8_t *buf = malloc(len ? len : 1);
	uint8_t h[SHA256_DIGEST_LENGTH];
	ssize_t n;

	if (!buf) {
		printf("{\"off\": %" PRIu64 ", \"len\": %" PRIu64 ", \"res\": %d}\n", off, len, -ENOMEM);
		return;
	}
	n = cfs_object_pread(obj, buf, len, off);
	printf("{\"off\": %" PRIu64 ", \"len\": %" PRIu64 ", \"res\": %zd", off, len, n);
	if (n >= 0) {
		SHA256(buf, (size_t)n, h);
		printf(", \"sha256\": \"");
		print_hex(h, sizeof(h));
		printf("\"");
	}
	printf("}\n");
	free(buf);
}

static void read_whole(struct cfs_object *obj)
{
	const size_t chunk = 128 * 1024;
	uint8_t *buf = malloc(chunk);
	uint64_t size = cfs_object_size(obj), off = 0;
	EVP_MD_CTX *ctx = EVP_MD_CTX_new();
	uint8_t h[SHA256_DIGEST_LENGTH];
	ssize_t res = 0;

	if (!buf || !ctx || EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) != 1) {
		free(buf);
		EVP_MD_CTX_free(ctx);
		return;
	}
	while (off < size) {
		ssize_t n = cfs_object_pread(obj, buf, chunk, off);

		if (n <= 0) {
			res = n < 0 ? n : -EIO;
			break;
		}
		EVP_DigestUpdate(ctx, buf, (size_t)n);
		off += (uint64_t)n;
	}
	EVP_DigestFinal_ex(ctx, h, NULL);
	EVP_MD_CTX_free(ctx);
	printf("{\"off\": 0, \"len\": %" PRIu64 ", \"res\": %zd", size, res < 0 ? res : (ssize_t)off);
	if (res >= 0) {
		printf(", \"sha256\": \"");
		print_hex(h, sizeof(h));
		printf("\"");
	}
	printf("}\n");
	free(buf);
}

static int cmd_read(int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "io", required_argument, NULL, 'i' },
		{ "method", required_argument, NULL, 'm' },
		{ "no-verify", no_argument, NULL, 'n' },
		{ "require-digest", no_argument, NULL, 'r' },
		{ "tree-cache", required_argument, NULL, 't' },
		{ "min-persist", required_argument, NULL, 'p' },
		{ "fake-measure", required_argument, NULL, 'f' },
		{ "reopen", required_argument, NULL, 'o' },
		{ "check-all", no_argument, NULL, 'c' },
		{ "wait", no_argument, NULL, 'w' },
		{ "deny-io-uring", required_argument, NULL, 'd' },
		{},
	};
	struct cfs_cas_options opts = { .verify = true };
	_cleanup_(cfs_cas_unrefp) struct cfs_cas *cas = NULL;
	struct cfs_cas_stats st;
	uint8_t digest[CFS_DIGEST_SIZE];
	const char *redirect;
	uint64_t size;
	int c, r, reopen = 1;
	bool check_all = false, wait_stdin = false;

	optind = 1;
	while ((c = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
		switch (c) {
		case 'i':
			opts.io = strcmp(optarg, "uring") == 0 ? CFS_IO_URING
				  : strcmp(optarg, "pread") == 0 ? CFS_IO_PREAD : CFS_IO_AUTO;
			break;
		case 'm':
			opts.method = strcmp(optarg, "userspace") == 0 ? CFS_METHOD_USERSPACE
				      : strcmp(optarg, "kernel") == 0 ? CFS_METHOD_KERNEL : CFS_METHOD_AUTO;
			break;
		case 'n':
			opts.verify = false;
			break;
		case 'r':
			opts.require_digest = true;
			break;
		case 't':
			opts.tree_cache_dir = optarg;
			break;
		case 'p':
			opts.tree_cache_min_size = strtoull(optarg, NULL, 0);
			break;
		case 'f':
			if (strcmp(optarg, "enodata") == 0)
				fake_error = ENODATA;
			else if (cfs_digest_from_hex(optarg, fake_digest) < 0) {
				fprintf(stderr, "cas-tool: bad --fake-measure digest\n");
				return 2;
			}
			opts.verity = &fake_ops;
			break;
		case 'o':
			reopen = atoi(optarg);
			break;
		case 'c':
			check_all = true;
			break;
		case 'w':
			wait_stdin = true;
			break;
		case 'd':
			r = deny_io_uring(strcmp(optarg, "eperm") == 0 ? EPERM : ENOSYS);
			if (r < 0) {
				fprintf(stderr, "cas-tool: seccomp: %s\n", strerror(-r));
				return 2;
			}
			break;
		default:
			return 2;
		}
	}
	if (argc - optind < 4) {
		fprintf(stderr, "usage: cas-tool read [OPTIONS] BASEDIR REDIRECT|- DIGEST|- SIZE [OFF:LEN...]\n");
		return 2;
	}
	redirect = strcmp(argv[optind + 1], "-") == 0 ? NULL : argv[optind + 1];
	if (strcmp(argv[optind + 2], "-") != 0 && cfs_digest_from_hex(argv[optind + 2], digest) < 0) {
		fprintf(stderr, "cas-tool: bad digest '%s'\n", argv[optind + 2]);
		return 2;
	}
	size = strtoull(argv[optind + 3], NULL, 0);

	r = cfs_cas_open(argv[optind], &opts, &cas);
	if (r < 0) {
		printf("{\"cas_open\": %d}\n", r);
		return 1;
	}
	for (int round = 0; round < reopen; round++) {
		_cleanup_(cfs_object_unrefp) struct cfs_object *obj = NULL;

		r = cfs_cas_open_object(cas, redirect, redirect ? strlen(redirect) : 0,
					strcmp(argv[optind + 2], "-") == 0 ? NULL : digest, size, &obj);
		printf("{\"open\": %d", r);
		if (r == 0)
			printf(", \"method\": \"%s\"", cfs_verify_method_name(cfs_object_method(obj)));
		printf(", \"io\": \"%s\"}\n", cfs_cas_io_backend(cas));
		if (r < 0)
			continue;
		if (check_all)
			printf("{\"check_all\": %d}\n", cfs_object_check_all(obj));
		if (wait_stdin) {
			/* let the caller change the object while it is open */
			char line[16];

			fflush(stdout);
			if (!fgets(line, sizeof(line), stdin))
				return 2;
		}
		if (optind + 4 == argc) {
			read_whole(obj);
			continue;
		}
		for (int i = optind + 4; i < argc; i++) {
			uint64_t off, len;

			if (sscanf(argv[i], "%" SCNu64 ":%" SCNu64, &off, &len) != 2) {
				fprintf(stderr, "cas-tool: bad range '%s'\n", argv[i]);
				return 2;
			}
			read_range(obj, off, len);
		}
	}
	cfs_cas_get_stats(cas, &st);
	printf("{\"stats\": {\"objects_opened\": %" PRIu64 ", \"trees_built\": %" PRIu64
	       ", \"trees_from_memory\": %" PRIu64 ", \"trees_from_disk\": %" PRIu64
	       ", \"trees_rejected\": %" PRIu64 ", \"trees_written\": %" PRIu64
	       ", \"tree_write_errors\": %" PRIu64 ", \"blocks_failed\": %" PRIu64 "}}\n",
	       st.objects_opened, st.trees_built, st.trees_from_memory, st.trees_from_disk,
	       st.trees_rejected, st.trees_written, st.tree_write_errors, st.blocks_failed);
	return 0;
}

int main(int argc, char **argv)
{
	if (argc >= 2 && strcmp(argv[1], "digest") == 0)
		return cmd_digest(argc - 2, argv + 2);
	if (argc >= 2 && strcmp(argv[1], "features") == 0) {
		printf("{\"io_uring_built\": %s}\n", HAVE_IO_URING ? "true" : "false");
		return 0;
	}
	if (argc >= 2 && strcmp(argv[1], "tree-digest") == 0)
		return cmd_tree_digest(argc - 2, argv + 2);
	if (argc >= 2 && strcmp(argv[1], "read") == 0)
		return cmd_read(argc - 1, argv + 1);
	fprintf(stderr, "usage: cas-tool digest FILE... | cas-tool read [OPTIONS] BASEDIR REDIRECT DIGEST SIZE [OFF:LEN...]\n");
	return 2;
}
