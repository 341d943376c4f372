/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Replay driver for the libFuzzer targets: a main() that feeds every file
 * named on the command line, or found (recursively, in sorted order) in a
 * named directory, to LLVMFuzzerTestOneInput().  Linked with each target in
 * every build, so `meson test` replays the seed corpora without clang.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv) __attribute__((weak));

static size_t n_inputs;

static int replay_file(const char *path)
{
	struct stat st;
	uint8_t *buf;
	size_t done = 0;
	int fd;

	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0 || fstat(fd, &st) < 0) {
		fprintf(stderr, "fuzz-replay: cannot open '%s': %s\n", path, strerror(errno));
		if (fd >= 0)
			close(fd);
		return -1;
	}
	/* An exact-size heap copy, so reads past the end are caught by ASan. */
	buf = malloc(st.st_size ? (size_t)st.st_size : 1);
	if (!buf) {
		close(fd);
		return -1;
	}
	while (done < (size_t)st.st_size) {
		ssize_t n = read(fd, buf + done, (size_t)st.st_size - done);

		if (n <= 0) {
			fprintf(stderr, "fuzz-replay: cannot read '%s'\n", path);
			free(buf);
			close(fd);
			return -1;
		}
		done += (size_t)n;
	}
	close(fd);
	LLVMFuzzerTestOneInput(buf, done);
	free(buf);
	n_inputs++;
	return 0;
}

static int replay_path(const char *path);

static int replay_dir(const char *path)
{
	struct dirent **list;
	int n, r = 0;

	n = scandir(path, &list, NULL, alphasort);
	if (n < 0) {
		fprintf(stderr, "fuzz-replay: cannot list '%s': %s\n", path, strerror(errno));
		return -1;
	}
	for (int i = 0; i < n; i++) {
		char *sub;

		if (list[i]->d_name[0] != '.' && r == 0) {
			if (asprintf(&sub, "%s/%s", path, list[i]->d_name) < 0) {
				r = -1;
			} else {
				r = replay_path(sub);
				free(sub);
			}
		}
		free(list[i]);
	}
	free(list);
	return r;
}

static int replay_path(const char *path)
{
	struct stat st;

	if (stat(path, &st) < 0) {
		fprintf(stderr, "fuzz-replay: '%s': %s\n", path, strerror(errno));
		return -1;
	}
	if (S_ISDIR(st.st_mode))
		return replay_dir(path);
	return replay_file(path);
}

int main(int argc, char **argv)
{
	if (argc < 2) {
		fprintf(stderr, "Usage: %s FILE|DIR...\n", argv[0]);
		return 2;
	}
	if (LLVMFuzzerInitialize)
		LLVMFuzzerInitialize(&argc, &argv);
	for (int i = 1; i < argc; i++)
		if (replay_path(argv[i]) < 0)
			return 1;
	printf("%s: replayed %zu inputs\n", argv[0], n_inputs);
	return n_inputs > 0 ? 0 : 1;
}
