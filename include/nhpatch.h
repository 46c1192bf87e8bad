/*
 * nhpatch C API: denoise and describe 32x32 image patches from C and C++.
 *
 * Build: `cargo build --release` makes target/release/libnhpatch.a and
 * libnhpatch.so. Link the static library with
 *     cc -Iinclude app.c target/release/libnhpatch.a -lgcc_s -lutil -lrt -lpthread -lm -ldl -lc
 * (the list `cargo rustc --release --lib -- --print native-static-libs` prints).
 *
 * Patches are 32x32 grey images, row-major, values 0..255, given as a batch
 * of n_patches x NHP_PATCH_LEN elements (uint8_t or float). A denoiser writes
 * n_patches x 1024 values, a descriptor (HardNet) n_patches x 128.
 *
 * Conventions:
 * - Every function that can fail returns an nhp_status; NHP_OK is 0. After a
 *   failure, nhp_last_error() gives a message for people (it names the file
 *   for file errors).
 * - Buffer lengths are in elements, not bytes, and must be exact:
 *   out_len == n_patches * nhp_output_len(net), else NHP_ERR_SHAPE and
 *   nothing is written. NULL pointers are NHP_ERR_NULL. Nothing crashes on a
 *   bad file or a bad length, and no Rust panic crosses into C (NHP_ERR_PANIC).
 * - Ownership: a network from nhp_load* is freed with nhp_free, a strip from
 *   nhp_read_strip with nhp_free_patches. Every other string the library
 *   returns is owned by the library; never free it.
 * - Threads: one nhp_network may be used by several threads at once (calls
 *   only read it). Calls run on rayon's global pool (one thread per core)
 *   unless nhp_set_threads gave the network a pool of its own. Results do not
 *   depend on the number of threads.
 */
#ifndef NHPATCH_H
#define NHPATCH_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Side of a patch, values per patch, values per descriptor. */
#define NHP_PATCH_SIDE 32
#define NHP_PATCH_LEN 1024
#define NHP_DESC_LEN 128

/* A loaded network. Opaque. */
typedef struct nhp_network nhp_network;

typedef enum nhp_status {
    NHP_OK = 0,
    NHP_ERR_NULL = 1,             /* a pointer argument was NULL */
    NHP_ERR_INVALID_ARGUMENT = 2, /* wrong kind of network for the call, misaligned buffer */
    NHP_ERR_SHAPE = 3,            /* a buffer length that does not match the batch */
    NHP_ERR_IO = 4,               /* the operating system refused a file */
    NHP_ERR_FORMAT = 5,           /* not a valid weights file or PNG strip, or the wrong kind of network */
    NHP_ERR_UNSUPPORTED = 6,      /* this build or machine cannot serve it (e.g. a pool that cannot start) */
    NHP_ERR_PANIC = 7,            /* a bug inside nhpatch, caught at the boundary */
    NHP_ERR_OTHER = 8             /* any other error */
} nhp_status;

/*
 * Loading. On success *out holds a network to free with nhp_free; on failure
 * *out is NULL. The safetensors metadata says what the file holds;
 * nhp_load_denoiser and nhp_load_descriptor also refuse the other kind
 * (NHP_ERR_FORMAT).
 */
nhp_status nhp_load(const char *path, nhp_network **out);
nhp_status nhp_load_denoiser(const char *path, nhp_network **out);
nhp_status nhp_load_descriptor(const char *path, nhp_network **out);

/* Frees a network and its pool. NULL is a no-op. No call may be using it. */
void nhp_free(nhp_network *net);

/* 1 for a denoiser (U-Net, DnCNN), 0 for a descriptor; -1 for NULL. */
int nhp_is_denoiser(const nhp_network *net);

/* Values written per patch: 1024 for a denoiser, 128 for a descriptor; 0 for NULL. */
size_t nhp_output_len(const nhp_network *net);

/* "unet", "dncnn", "hardnet-baseline" or "hardnet-original"; "" for NULL. Static. */
const char *nhp_arch_name(const nhp_network *net);

/*
 * Gives the network its own pool of `threads` worker threads (0: one per
 * core), replacing any earlier one. Safe while other threads use the
 * network: calls already running finish on their pool.
 */
nhp_status nhp_set_threads(nhp_network *net, size_t threads);

/*
 * Frees the inference workspaces the network keeps between calls: up to one
 * batch of each size (powers of two, 1 to 256 patches) per thread that has
 * called it at once, so that concurrent callers allocate nothing in a steady
 * state. Later calls make new ones. Safe while other threads use the network.
 */
nhp_status nhp_release_workspaces(nhp_network *net);

/*
 * Runs the network's inference on `device`: "cpu", "cuda" or "cuda:N" (an
 * NVIDIA GPU; the library must be built with --features cuda). The weights
 * are uploaded once; later calls send patches and read outputs back.
 * NHP_ERR_UNSUPPORTED when this build has no CUDA backend or the machine no
 * such GPU (nhp_last_error says which), NHP_ERR_INVALID_ARGUMENT for an
 * unknown name. Not while another thread uses the network.
 */
nhp_status nhp_set_device(nhp_network *net, const char *device);

/*
 * Runs the network's CPU inference in `precision`: "f32" (the default),
 * "int8" (int8 convolutions with calibrated input scales; the calibration
 * stored in the weights file by `nhpatch calibrate`, else one made on
 * nhpatch's default sample) or "bf16" (bf16 inputs and weights, f32 sums;
 * nothing to calibrate). NHP_ERR_UNSUPPORTED for a network on a device;
 * NHP_ERR_INVALID_ARGUMENT for an unknown name. Not safe while other
 * threads use the network.
 */
nhp_status nhp_set_precision(nhp_network *net, const char *precision);

/*
 * Inference. `patches` holds n_patches * NHP_PATCH_LEN values 0..255; `out`
 * receives exactly out_len == n_patches * nhp_output_len(net) values.
 * Denoising a descriptor or describing with a denoiser is
 * NHP_ERR_INVALID_ARGUMENT. The input is read in full before the output is
 * written, so a denoise may run in place (out == patches).
 */
nhp_status nhp_denoise_f32(const nhp_network *net, const float *patches, size_t n_patches, float *out,
                           size_t out_len);
/* u8 output: clipped to 0..255 and rounded to whole grey levels. */
nhp_status nhp_denoise_u8(const nhp_network *net, const uint8_t *patches, size_t n_patches, uint8_t *out,
                          size_t out_len);
nhp_status nhp_describe_f32(const nhp_network *net, const float *patches, size_t n_patches, float *out,
                            size_t out_len);
nhp_status nhp_describe_u8(const nhp_network *net, const uint8_t *patches, size_t n_patches, float *out,
                           size_t out_len);

/*
 * Reads a PNG strip (W pixels wide, n*W high, any depth or colour type)
 * into n 32x32 patches, as `nhpatch describe` does: *patches receives
 * *n_patches * NHP_PATCH_LEN grey levels. Free with
 * nhp_free_patches(*patches, *n_patches). On failure *patches is NULL and
 * *n_patches 0.
 */
nhp_status nhp_read_strip(const char *path, uint8_t **patches, size_t *n_patches);

/* Frees a buffer from nhp_read_strip, with the count it returned. NULL is a no-op. */
void nhp_free_patches(uint8_t *patches, size_t n_patches);

/*
 * The message of the last failing nhp_* call on this thread ("" if none).
 * Owned by the library; valid until the next nhp_* call on this thread.
 * Never NULL.
 */
const char *nhp_last_error(void);

/* nhpatch's version, e.g. "0.1.0". Static. */
const char *nhp_version(void);

#ifdef __cplusplus
}
#endif

#endif /* NHPATCH_H */
