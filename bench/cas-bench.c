/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * cas-bench: throughput of the userspace verification engine (bench/run-verify.sh).
 *
 *   cas-bench sha
 *       raw OpenSSL SHA-256 speed on 4 KiB blocks: SHA256() one-shot, EVP
 *       with a reused context (what cas/ uses), and on 1 MiB buffers
 *   cas-bench build BASEDIR DIGEST SIZE [--io=uring|pread] [--cold] [--runs=N]
 *       first open and read of the object: the full Merkle tree build (hash
 *       every byte)
 *   cas-bench read BASEDIR DIGEST SIZE [--io=...] [--cold] [--bs=BYTES] [--threads=N]
 *       verified sequential reads of the whole object with a built tree
 *       (each thread reads the whole object)
 *   cas-bench reopen BASEDIR DIGEST SIZE --tree-cache=DIR [--runs=N]
 *       open with a persisted tree (fresh store each run, so not the
 *       in-memory LRU) versus the full build
 * Results: one line per measurement, "name: value unit".
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include <openssl/evp.h>
#include <openssl/sha.h>

#include "cas.h"

static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static double cpu_seconds(void)
{
	struct rusage ru;

	getrusage(RUSAGE_SELF, &ru);
	return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
	       (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
}

/* CPU time of the calling thread: raw hash speed without the noise of other
 * processes on a shared machine. */
static double thread_cpu(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Print the speed of @bytes hashed since @w0 (wall) and @t0 (thread CPU). */
static void sha_report(const char *name, double bytes, double w0, double t0)
{
	double t = thread_cpu() - t0, w = now() - w0;

	printf("%s: %.0f MB/s wall, %.0f MB/s per CPU-second\n", name, bytes / w / 1e6, bytes / t / 1e6);
}

static int cmd_sha(void)
{
	static uint8_t blk[4096];
	uint8_t md[32];
	const int n = 250000;
	uint8_t *big = calloc(1, 1 << 20);
	EVP_MD *m = EVP_MD_fetch(NULL, "SHA256", NULL);
	EVP_MD_CTX *c = EVP_MD_CTX_new();
	double t, w;

	if (!big || !m || !c)
		return 1;
	memset(blk, 0x5a, sizeof(blk));
	w = now();
	t = thread_cpu();
	for (int i = 0; i < n; i++) {
		SHA256(blk, sizeof(blk), md);
		blk[0] = md[0];
	}
	sha_report("sha256-oneshot-4k", n * 4096.0, w, t);

	w = now();
	t = thread_cpu();
	for (int i = 0; i < n; i++) {
		EVP_DigestInit_ex2(c, m, NULL);
		EVP_DigestUpdate(c, blk, sizeof(blk));
		EVP_DigestFinal_ex(c, md, NULL);
		blk[0] = md[0];
	}
	sha_report("sha256-evp-reused-ctx-4k", n * 4096.0, w, t);

	w = now();
	t = thread_cpu();
	for (int i = 0; i < 1000; i++)
		SHA256(big, 1 << 20, md);
	sha_report("sha256-oneshot-1m", 1000.0 * (1 << 20), w, t);
	EVP_MD_CTX_free(c);
	EVP_MD_free(m);
	free(big);
	return 0;
}

static struct {
	const char *basedir, *tree_cache;
	char redirect[80];
	uint8_t digest[CFS_DIGEST_SIZE];
	uint64_t size, bs;
	enum cfs_io_backend io;
	bool cold;
	int runs, threads;
} arg = { .bs = 128 * 1024, .runs = 3, .threads = 1 };

static void drop_cache(void)
{
	char path[4096];
	int fd;

	snprintf(path, sizeof(path), "%s/%s", arg.basedir, arg.redirect);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return;
	(void)fdatasync(fd);
	(void)posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
	close(fd);
}

static int open_cas(const char *tree_cache, struct cfs_cas **ret)
{
	struct cfs_cas_options o = {
		.verify = true,
		.io = arg.io,
		.method = CFS_METHOD_USERSPACE,
		.tree_cache_dir = tree_cache,
		.tree_cache_min_size = 1,
	};
	int r = cfs_cas_open(arg.basedir, &o, ret);

	if (r < 0)
		fprintf(stderr, "cas-bench: cannot open store '%s': %s\n", arg.basedir, strerror(-r));
	return r;
}

/* Open the object and read its first byte: that is when its tree is
 * found, loaded and checked, or built from the data (objects are set up
 * lazily, at their first read). */
static int open_obj(struct cfs_cas *cas, struct cfs_object **ret)
{
	uint8_t byte;
	ssize_t n;
	int r = cfs_cas_open_object(cas, arg.redirect, strlen(arg.redirect), arg.digest, arg.size, ret);

	if (r < 0) {
		fprintf(stderr, "cas-bench: cannot open object: %s\n", strerror(-r));
		return r;
	}
	n = cfs_object_pread(*ret, &byte, 1, 0);
	if (n < 0) {
		fprintf(stderr, "cas-bench: first read: %s\n", strerror((int)-n));
		return (int)n;
	}
	return 0;
}

/* The fastest of several runs (wall seconds) and the CPU seconds it took. */
struct best_run {
	double wall, cpu;
	double wall0, cpu0;
};

static void run_start(struct best_run *b)
{
	b->cpu0 = cpu_seconds();
	b->wall0 = now();
}

static void run_stop(struct best_run *b)
{
	double w = now() - b->wall0, c = cpu_seconds() - b->cpu0;

	if (b->wall == 0 || w < b->wall) {
		b->wall = w;
		b->cpu = c;
	}
}

/* Full tree build: a fresh store each run (no LRU), no persisted cache. */
static int cmd_build(void)
{
	struct best_run b = { 0 };
	const char *backend = "?";

	for (int i = 0; i < arg.runs; i++) {
		_cleanup_(cfs_cas_unrefp) struct cfs_cas *cas = NULL;
		_cleanup_(cfs_object_unrefp) struct cfs_object *obj = NULL;

		if (arg.cold)
			drop_cache();
		if (open_cas(NULL, &cas) < 0)
			return 1;
		backend = cfs_cas_io_backend(cas);
		run_start(&b);
		if (open_obj(cas, &obj) < 0)
			return 1;
		run_stop(&b);
	}
	printf("build-%s-%s: %.0f MB/s wall, %.0f MB/s per CPU-second (%.3f s for %" PRIu64 " bytes)\n",
	       backend, arg.cold ? "cold" : "warm", arg.size / b.wall / 1e6, arg.size / b.cpu / 1e6, b.wall,
	       arg.size);
	return 0;
}

struct reader {
	struct cfs_object *obj;
	int err;
};

static void *read_all(void *p)
{
	struct reader *rd = p;
	uint8_t *buf = aligned_alloc(4096, (arg.bs + 4095) / 4096 * 4096);

	if (!buf) {
		rd->err = -ENOMEM;
		return NULL;
	}
	for (uint64_t off = 0; off < arg.size; off += arg.bs) {
		ssize_t n = cfs_object_pread(rd->obj, buf, arg.bs, off);

		if (n < 0) {
			rd->err = (int)n;
			break;
		}
	}
	free(buf);
	return NULL;
}

static int cmd_read(void)
{
	_cleanup_(cfs_cas_unrefp) struct cfs_cas *cas = NULL;
	_cleanup_(cfs_object_unrefp) struct cfs_object *obj = NULL;
	struct best_run b = { 0 };
	pthread_t th[64];
	struct reader rd[64];

	if (arg.threads < 1 || arg.threads > 64)
		return 2;
	if (open_cas(NULL, &cas) < 0 || open_obj(cas, &obj) < 0)
		return 1;
	for (int i = 0; i < arg.runs; i++) {
		int started = 0, err = 0;

		if (arg.cold)
			drop_cache();
		run_start(&b);
		for (; started < arg.threads; started++) {
			rd[started] = (struct reader){ .obj = obj };
			err = -pthread_create(&th[started], NULL, read_all, &rd[started]);
			if (err < 0)
				break;
		}
		for (int j = 0; j < started; j++) {
			pthread_join(th[j], NULL);
			if (rd[j].err < 0 && err == 0)
				err = rd[j].err;
		}
		if (err < 0) {
			fprintf(stderr, "cas-bench: read failed: %s\n", strerror(-err));
			return 1;
		}
		run_stop(&b);
	}
	printf("read-%s-%s-bs%" PRIu64 "-threads%d: %.0f MB/s wall, %.0f MB/s per CPU-second\n",
	       cfs_cas_io_backend(cas), arg.cold ? "cold" : "warm", arg.bs, arg.threads,
	       arg.size * (double)arg.threads / b.wall / 1e6, arg.size * (double)arg.threads / b.cpu / 1e6);
	return 0;
}

static int cmd_reopen(void)
{
	double full = 0, cached = 0;
	struct cfs_cas_stats st;

	if (!arg.tree_cache) {
		fprintf(stderr, "cas-bench: reopen needs --tree-cache=DIR\n");
		return 2;
	}
	for (int i = 0; i < arg.runs; i++) {
		_cleanup_(cfs_cas_unrefp) struct cfs_cas *cas = NULL;
		_cleanup_(cfs_object_unrefp) struct cfs_object *obj = NULL;
		double t;

		if (open_cas(NULL, &cas) < 0)
			return 1;
		t = now();
		if (open_obj(cas, &obj) < 0)
			return 1;
		t = now() - t;
		if (full == 0 || t < full)
			full = t;
	}
	{
		/* fill the persisted cache once */
		_cleanup_(cfs_cas_unrefp) struct cfs_cas *cas = NULL;
		_cleanup_(cfs_object_unrefp) struct cfs_object *obj = NULL;

		if (open_cas(arg.tree_cache, &cas) < 0 || open_obj(cas, &obj) < 0)
			return 1;
	}
	for (int i = 0; i < arg.runs; i++) {
		_cleanup_(cfs_cas_unrefp) struct cfs_cas *cas = NULL;
		_cleanup_(cfs_object_unrefp) struct cfs_object *obj = NULL;
		double t;

		if (open_cas(arg.tree_cache, &cas) < 0)
			return 1;
		t = now();
		if (open_obj(cas, &obj) < 0)
			return 1;
		t = now() - t;
		cfs_cas_get_stats(cas, &st);
		if (st.trees_from_disk != 1) {
			fprintf(stderr, "cas-bench: persisted tree was not used\n");
			return 1;
		}
		if (cached == 0 || t < cached)
			cached = t;
	}
	printf("open-full-rehash: %.2f ms\nopen-persisted-tree: %.2f ms\nreopen-speedup: %.0fx\n",
	       full * 1e3, cached * 1e3, full / cached);
	return 0;
}

int main(int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "io", required_argument, NULL, 'i' },
		{ "cold", no_argument, NULL, 'c' },
		{ "bs", required_argument, NULL, 'b' },
		{ "threads", required_argument, NULL, 'j' },
		{ "runs", required_argument, NULL, 'r' },
		{ "tree-cache", required_argument, NULL, 't' },
		{},
	};
	const char *cmd;
	char hex[2 * CFS_DIGEST_SIZE + 1];
	int c;

	if (argc < 2) {
		fprintf(stderr, "usage: cas-bench sha | build|read|reopen BASEDIR DIGEST SIZE [OPTIONS]\n");
		return 2;
	}
	cmd = argv[1];
	if (strcmp(cmd, "sha") == 0)
		return cmd_sha();
	optind = 2;
	while ((c = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
		switch (c) {
		case 'i':
			arg.io = strcmp(optarg, "uring") == 0 ? CFS_IO_URING
				 : strcmp(optarg, "pread") == 0 ? CFS_IO_PREAD : CFS_IO_AUTO;
			break;
		case 'c':
			arg.cold = true;
			break;
		case 'b':
			arg.bs = strtoull(optarg, NULL, 0);
			break;
		case 'j':
			arg.threads = atoi(optarg);
			break;
		case 'r':
			arg.runs = atoi(optarg);
			break;
		case 't':
			arg.tree_cache = optarg;
			break;
		default:
			return 2;
		}
	}
	if (argc - optind != 3 || arg.bs == 0 || arg.runs < 1 ||
	    cfs_digest_from_hex(argv[optind + 1], arg.digest) < 0) {
		fprintf(stderr, "usage: cas-bench build|read|reopen BASEDIR DIGEST SIZE [OPTIONS]\n");
		return 2;
	}
	arg.basedir = argv[optind];
	arg.size = strtoull(argv[optind + 2], NULL, 0);
	cfs_digest_to_hex(arg.digest, hex);
	snprintf(arg.redirect, sizeof(arg.redirect), "%.2s/%s", hex, hex + 2);
	if (strcmp(cmd, "build") == 0)
		return cmd_build();
	if (strcmp(cmd, "read") == 0)
		return cmd_read();
	if (strcmp(cmd, "reopen") == 0)
		return cmd_reopen();
	fprintf(stderr, "cas-bench: unknown command '%s'\n", cmd);
	return 2;
}
