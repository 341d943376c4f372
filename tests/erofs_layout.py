# SPDX-License-Identifier: LGPL-2.1-or-later
"""The EROFS on-disk layout the tests read and corrupt, by name instead of
raw offsets (the same layout as format/erofs-disk.h)."""
import struct

SUPER_OFFSET = 1024
BLOCK_SIZE = 4096
INODE_SLOT = 32          # nids count 32-byte slots from meta_blkaddr

# Superblock fields: offset within the superblock, struct format.
SUPER = {
    "magic": (0, "<I"),
    "checksum": (4, "<I"),
    "feature_compat": (8, "<I"),
    "blkszbits": (12, "<B"),
    "sb_extslots": (13, "<B"),
    "root_nid": (14, "<H"),
    "inos": (16, "<Q"),
    "build_time": (24, "<Q"),
    "build_time_nsec": (32, "<I"),
    "blocks": (36, "<I"),
    "meta_blkaddr": (40, "<I"),
    "xattr_blkaddr": (44, "<I"),
    "uuid": (48, "16s"),
    "volume_name": (64, "16s"),
    "feature_incompat": (80, "<I"),
}

COMPAT_SB_CHKSUM = 0x1


def sb_offset(field):
    """Offset in the image of a superblock field."""
    return SUPER_OFFSET + SUPER[field][0]


def sb_get(data, field):
    off, fmt = SUPER[field]
    return struct.unpack_from(fmt, data, SUPER_OFFSET + off)[0]


def sb_set(data, field, value):
    """Write a superblock field into DATA (a bytearray)."""
    off, fmt = SUPER[field]
    struct.pack_into(fmt, data, SUPER_OFFSET + off, value)


def inode_offset(data, nid):
    """Offset in the image of inode NID's on-disk inode (its i_format first)."""
    return sb_get(data, "meta_blkaddr") * BLOCK_SIZE + nid * INODE_SLOT
