/* The versioned structs as the first ABI (COWBLK_ABI_VERSION 1, cowblk
 * 0.1) laid them out: what a binary built against that header passes. A
 * frozen copy: never edit it to follow the current header. */
#ifndef COWBLK_ABI_V1_H
#define COWBLK_ABI_V1_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>

struct cowblk_image;

typedef struct cowblk_info_v1 {
    size_t struct_size;
    char *format;
    char *filename;
    uint64_t virtual_size;
    uint64_t cluster_size;
    char *data_file;
    char *backing_file;
    char *backing_path;
    char *backing_format;
    uint64_t allocated_bytes;
    uint64_t disk_size;
    bool read_only;
} cowblk_info_v1;

typedef struct cowblk_check_result_v1 {
    size_t struct_size;
    uint64_t corruptions;
    uint64_t leaks;
    uint64_t check_errors;
    uint64_t corruptions_fixed;
    uint64_t leaks_fixed;
    uint64_t total_clusters;
    uint64_t allocated_clusters;
    uint64_t image_end_offset;
    char messages[1024];
} cowblk_check_result_v1;

typedef struct cowblk_driver_v1 {
    size_t struct_size;
    uint32_t abi_version;
    const char *format_name;
    int (*probe)(const uint8_t *buf, size_t buf_size, const char *filename);
    int (*create)(const char *path, const char *options);
    int (*open)(const char *path, uint32_t flags, uint64_t cache_size,
                struct cowblk_image **out);
    int (*close)(struct cowblk_image **img);
    int (*readv)(struct cowblk_image *img, uint64_t offset, const struct iovec *iov,
                 int iovcnt);
    int (*writev)(struct cowblk_image *img, uint64_t offset, const struct iovec *iov,
                  int iovcnt);
    int (*flush)(struct cowblk_image *img);
    int (*truncate)(struct cowblk_image *img, uint64_t size);
    int (*is_allocated)(struct cowblk_image *img, uint64_t offset, uint64_t bytes,
                        uint64_t *pnum);
    int (*block_status)(struct cowblk_image *img, uint64_t offset, uint64_t bytes,
                        uint64_t *pnum, uint64_t *map);
    int (*get_info)(struct cowblk_image *img, cowblk_info_v1 *info);
    int (*discard)(struct cowblk_image *img, uint64_t offset, uint64_t bytes);
    int (*write_zeroes)(struct cowblk_image *img, uint64_t offset, uint64_t bytes);
    int (*get_length)(struct cowblk_image *img, uint64_t *length);
    int (*change_backing_file)(struct cowblk_image *img, const char *backing_file,
                               const char *backing_fmt);
    int (*check)(struct cowblk_image *img, uint32_t fix,
                 cowblk_check_result_v1 *result);
} cowblk_driver_v1;

#endif
