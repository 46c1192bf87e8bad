/*
 * describe WEIGHTS.safetensors STRIP.png [THREADS]
 *
 * Loads a HardNet descriptor, reads a PNG strip of patches, describes every
 * patch and prints the count and the first descriptor:
 *
 *     patches N
 *     d0 d1 ... d127
 *
 * (each value with 9 significant digits, so it reads back as the same float).
 * THREADS, if given, gives the network a pool of that many threads.
 * On failure it prints nhpatch's message and exits with status 1.
 *
 * Build (from the repository root, after `cargo build --release`):
 *     cc -O2 -Iinclude examples/c/describe.c target/release/libnhpatch.a \
 *        -lgcc_s -lutil -lrt -lpthread -lm -ldl -lc -o describe
 */
#include <stdio.h>
#include <stdlib.h>

#include "nhpatch.h"

int main(int argc, char **argv) {
    if (argc != 3 && argc != 4) {
        fprintf(stderr, "usage: %s WEIGHTS.safetensors STRIP.png [THREADS]\n", argv[0]);
        return 2;
    }
    nhp_network *net = NULL;
    uint8_t *patches = NULL;
    size_t n = 0;
    float *desc = NULL;
    int rc = 1;

    if (nhp_load_descriptor(argv[1], &net) != NHP_OK) goto fail;
    if (argc == 4 && nhp_set_threads(net, (size_t)strtoul(argv[3], NULL, 10)) != NHP_OK) goto fail;
    if (nhp_read_strip(argv[2], &patches, &n) != NHP_OK) goto fail;

    size_t len = n * nhp_output_len(net);
    desc = malloc(len * sizeof *desc);
    if (desc == NULL) {
        fprintf(stderr, "describe: out of memory\n");
        goto done;
    }
    if (nhp_describe_u8(net, patches, n, desc, len) != NHP_OK) goto fail;

    printf("patches %zu\n", n);
    for (size_t i = 0; i < NHP_DESC_LEN; i++) printf(i ? " %.9g" : "%.9g", desc[i]);
    printf("\n");
    rc = 0;
    goto done;

fail:
    fprintf(stderr, "describe: %s\n", nhp_last_error());
done:
    free(desc);
    nhp_free_patches(patches, n);
    nhp_free(net);
    return rc;
}
