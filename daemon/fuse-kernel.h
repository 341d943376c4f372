/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The parts of the kernel's FUSE protocol (include/uapi/linux/fuse.h, 7.42)
 * that passthrough.c and uring.c speak beneath libfuse 3.14: Debian 12's
 * linux-libc-dev predates passthrough and FUSE over io_uring, so the
 * layouts are spelled out here, each checked against the kernel's size.
 */
#pragma once

#include <stddef.h>
#include <stdint.h>
#include <sys/ioctl.h>

/* Passthrough (7.40+); the request and reply headers are every opcode's. */
#define PT_FUSE_INIT 26
#define PT_INIT_EXT (1U << 30)
#define PT_WRITEBACK_CACHE (1U << 16)
#define PT_FLAGS2_PASSTHROUGH (1U << 5) /* FUSE_PASSTHROUGH = 1ULL << 37 */
#define PT_FOPEN_KEEP_CACHE (1U << 1)
#define PT_FOPEN_PASSTHROUGH (1U << 7)

struct kfuse_in_header {
	uint32_t len;
	uint32_t opcode;
	uint64_t unique;
	uint64_t nodeid;
	uint32_t uid, gid, pid;
	uint16_t total_extlen, padding;
};

struct pt_init_in {
	uint32_t major, minor, max_readahead, flags, flags2;
};

struct kfuse_out_header {
	uint32_t len;
	int32_t error;
	uint64_t unique;
};

struct pt_init_out {
	uint32_t major, minor, max_readahead, flags;
	uint16_t max_background, congestion_threshold;
	uint32_t max_write, time_gran;
	uint16_t max_pages, map_alignment;
	uint32_t flags2;
	uint32_t max_stack_depth;
};

struct pt_open_out {
	uint64_t fh;
	uint32_t open_flags;
	int32_t backing_id;
};

struct pt_backing_map {
	int32_t fd;
	uint32_t flags;
	uint64_t padding;
};

#define PT_IOC_BACKING_OPEN _IOW(229, 1, struct pt_backing_map)
#define PT_IOC_BACKING_CLOSE _IOW(229, 2, uint32_t)

_Static_assert(sizeof(struct kfuse_in_header) == 40, "fuse_in_header");
_Static_assert(sizeof(struct kfuse_out_header) == 16, "fuse_out_header");
_Static_assert(offsetof(struct pt_init_out, flags2) == 32, "fuse_init_out.flags2");
_Static_assert(offsetof(struct pt_init_out, max_stack_depth) == 36, "fuse_init_out.max_stack_depth");
_Static_assert(sizeof(struct pt_open_out) == 16, "fuse_open_out");
_Static_assert(sizeof(struct pt_backing_map) == 16, "fuse_backing_map");

/* FUSE over io_uring (7.42). */
#define URING_FLAGS2_OVER_IO_URING (1U << 9) /* FUSE_OVER_IO_URING = 1ULL << 41 */
#define URING_CMD_REGISTER 1
#define URING_CMD_COMMIT_AND_FETCH 2
#define FUSE_OP_READ 15

struct ring_ent_in_out {
	uint64_t flags;
	uint64_t commit_id;
	uint32_t payload_sz;
	uint32_t padding;
	uint64_t reserved;
};

struct ring_header {
	char in_out[128];  /* fuse_in_header, then fuse_out_header */
	char op_in[128];   /* the opcode's own header */
	struct ring_ent_in_out ent;
};

struct ring_cmd_req {
	uint64_t flags;
	uint64_t commit_id;
	uint16_t qid;
	uint8_t padding[6];
};

_Static_assert(sizeof(struct ring_ent_in_out) == 32, "fuse_uring_ent_in_out");
_Static_assert(sizeof(struct ring_header) == 288, "fuse_uring_req_header");
_Static_assert(sizeof(struct ring_cmd_req) == 24, "fuse_uring_cmd_req");
