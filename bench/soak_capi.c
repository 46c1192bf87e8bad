/*
 * soak_capi: a soak test of nhpatch's C ABI (include/nhpatch.h).
 *
 *     soak_capi WEIGHTS.safetensors      (a HardNet descriptor)
 *
 * 1. Loads one network with nhp_load_descriptor.
 * 2. Makes a fixed set of SOAK_SET (4096) uint8 patches from a 32-bit LCG
 *    (seed 12345), and a float copy of it.
 * 3. Reference: with nhp_set_threads(net, 1) (one worker thread) and from
 *    this one thread, describes the set in calls of SOAK_REF_BATCH (256)
 *    patches with nhp_describe_u8.
 * 4. Soak: nhp_set_threads(net, SOAK_POOL) (0: one worker per core), then
 *    SOAK_THREADS (8) pthreads share that one nhp_network. Each loops:
 *    batch size from SOAK_BATCHES cycled (each thread starts at a different
 *    place in the cycle), offset into the set from the thread's own LCG,
 *    nhp_describe_u8 on even calls and nhp_describe_f32 on odd ones, output
 *    poisoned with 0xff before the call, then memcmp of every output
 *    descriptor against the reference. It stops when SOAK_MAX_PATCHES
 *    patches have been described in total (the last batch is cut to hit the
 *    number exactly) or SOAK_MAX_SECONDS have elapsed.
 * 5. Memory. The main thread reads VmRSS from /proc/self/status every
 *    200 ms (keeping the maximum) and prints a line every SOAK_REPORT
 *    seconds. Between calls RSS swings by gigabytes (a call's workspace is
 *    387 MiB at 256 patches), so the three RSS figures that are compared
 *    are taken in one "settled" state: no call in flight (the workers are
 *    parked between calls, or finished), then the main thread describes
 *    256 patches and then 1 patch (checked against the reference too), which
 *    leaves the network's two cached workspaces (nhpatch keeps the last
 *    two) the same every time. Settled samples:
 *      start    after load, reference and the soak's pool;
 *      warm-up  once 5% of the patch budget or 5% of the time budget is
 *               spent (whichever first) and every thread went through one
 *               full cycle of batch sizes;
 *      end      when every worker has stopped, before nhp_free.
 *    With glibc, each also gives the heap as mallinfo2() sees it: "live"
 *    (allocated and not freed: the program's and the library's data) and
 *    "kept" (freed, but held by malloc's arenas). A leak grows "live";
 *    allocator retention grows "kept".
 *
 * Exit status: 0 if every call succeeded, every descriptor matched bit for
 * bit, RSS(end) - RSS(warm-up) <= max(SOAK_RSS_PCT % of RSS(warm-up),
 * SOAK_RSS_MIB MiB) (defaults 10 % and 16 MiB), and (glibc) the live heap
 * grew by at most SOAK_LIVE_MIB (4) MiB from warm-up to end; 1 otherwise (a
 * failing call prints nhp_last_error()); 2 for a usage error.
 *
 * Every setting is an environment variable (defaults in brackets):
 *   SOAK_THREADS [8]          caller threads sharing the network
 *   SOAK_MAX_PATCHES [1000000] total patches described, all threads together
 *   SOAK_MAX_SECONDS [600]    wall-clock limit of the soak phase
 *   SOAK_SET [4096]           patches in the fixed set
 *   SOAK_REF_BATCH [256]      patches per call for the reference
 *   SOAK_BATCHES [1,7,16,128,256,300]  batch sizes cycled by each thread
 *                             (300 is more than nhpatch's internal 256-patch
 *                             batch, so such a call is split in two inside)
 *   SOAK_POOL [0]             nhp_set_threads for the soak (0: one per core)
 *   SOAK_REPORT [30]          seconds between progress lines
 *   SOAK_RSS_PCT [10], SOAK_RSS_MIB [16]  allowed RSS growth after warm-up
 *   SOAK_LIVE_MIB [4]         allowed live-heap growth after warm-up (glibc)
 *   SOAK_MALLOC_STATS         if set, glibc's malloc_stats() (per arena, on
 *                             stderr) at the end
 *
 * Build: gcc -O2 -pthread -Iinclude bench/soak_capi.c -Ltarget/release -lnhpatch
 * (bench/soak_capi.sh builds, runs and logs everything).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#ifdef __GLIBC__
#include <malloc.h>
#endif

#include "nhpatch.h"

#define MAX_BATCHES 32
#define MAX_REPORTED_MISMATCHES 10

/* ---- settings ---- */

static size_t n_threads, max_patches, n_set, ref_batch, pool_threads;
static double max_seconds, report_every, rss_pct, rss_mib, live_mib;
static size_t batches[MAX_BATCHES], n_batches, max_batch;

static size_t env_size(const char *name, size_t def) {
    const char *s = getenv(name);
    if (s == NULL || *s == '\0') return def;
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || *end != '\0' || s[0] == '-') {
        fprintf(stderr, "soak_capi: %s=%s is not a whole number\n", name, s);
        exit(2);
    }
    return (size_t)v;
}

static double env_double(const char *name, double def) {
    const char *s = getenv(name);
    if (s == NULL || *s == '\0') return def;
    char *end;
    double v = strtod(s, &end);
    if (*end != '\0' || !(v >= 0)) {
        fprintf(stderr, "soak_capi: %s=%s is not a number >= 0\n", name, s);
        exit(2);
    }
    return v;
}

static void parse_batches(const char *s) {
    n_batches = 0;
    max_batch = 0;
    while (*s) {
        char *end;
        unsigned long v = strtoul(s, &end, 10);
        if (end == s || v == 0 || n_batches == MAX_BATCHES) {
            fprintf(stderr, "soak_capi: SOAK_BATCHES must be up to %d sizes >= 1 separated by commas\n",
                    MAX_BATCHES);
            exit(2);
        }
        batches[n_batches++] = v;
        if (v > max_batch) max_batch = v;
        s = end;
        if (*s == ',') s++;
        else if (*s) {
            fprintf(stderr, "soak_capi: bad SOAK_BATCHES near '%s'\n", s);
            exit(2);
        }
    }
    if (n_batches == 0) {
        fprintf(stderr, "soak_capi: SOAK_BATCHES is empty\n");
        exit(2);
    }
}

/* ---- helpers ---- */

static double now_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

/* A "VmRSS:" style line of /proc/self/status, in KiB; 0 if unreadable. */
static long proc_status_kib(const char *key) {
    FILE *f = fopen("/proc/self/status", "r");
    if (f == NULL) return 0;
    char line[256];
    size_t klen = strlen(key);
    long kib = 0;
    while (fgets(line, sizeof line, f)) {
        if (strncmp(line, key, klen) == 0) {
            kib = strtol(line + klen, NULL, 10);
            break;
        }
    }
    fclose(f);
    return kib;
}

static long rss_kib(void) { return proc_status_kib("VmRSS:"); }
static long threads_now(void) { return proc_status_kib("Threads:"); }
static double mib(long kib) { return (double)kib / 1024.0; }

/* A memory sample: RSS, and glibc's heap (all arenas and mmapped chunks), in
 * KiB: live = allocated and not freed, kept = freed but held by the arenas
 * (-1 without glibc). */
struct mem {
    long rss, live, kept;
};

static struct mem mem_now(void) {
    struct mem m = {rss_kib(), -1, -1};
#ifdef __GLIBC__
    struct mallinfo2 mi = mallinfo2();
    m.live = (long)((mi.uordblks + mi.hblkhd) / 1024);
    m.kept = (long)(mi.fordblks / 1024);
#endif
    return m;
}

static void print_mem(const char *what, struct mem m, const char *when) {
    printf("%-20s RSS %7.1f MiB", what, mib(m.rss));
    if (m.live >= 0) printf("; heap live %7.1f MiB, kept %7.1f MiB", mib(m.live), mib(m.kept));
    printf("%s\n", when);
}

static uint32_t lcg_next(uint32_t *s) {
    *s = *s * 1664525u + 1013904223u;
    return *s;
}

/* ---- shared state ---- */

static nhp_network *net;
static uint8_t *set_u8;
static float *set_f32;
static float *reference; /* n_set * NHP_DESC_LEN */

static atomic_size_t claimed;        /* patches handed out to calls */
static atomic_size_t done_patches;   /* patches described and checked */
static atomic_size_t mismatches;     /* descriptors that differ */
static atomic_size_t threads_cycled; /* threads through one full batch cycle */
static atomic_int stop;              /* time is up, or a call failed */
static atomic_int failed;            /* an nhp_ call failed */
static pthread_mutex_t print_lock = PTHREAD_MUTEX_INITIALIZER;

/* The gate: main closes it to park every worker between two calls. */
static pthread_mutex_t gate_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t gate_cv = PTHREAD_COND_INITIALIZER;
static int gate_closed;
static size_t parked, running;

struct worker {
    pthread_t tid;
    size_t index;
    size_t calls, patches, u8_calls, f32_calls;
    double call_s, max_call_s;
};

/* Claims up to `want` patches of the budget; 0 when it is spent. */
static size_t claim(size_t want) {
    size_t prev = atomic_load(&claimed);
    for (;;) {
        if (prev >= max_patches) return 0;
        size_t take = max_patches - prev < want ? max_patches - prev : want;
        if (atomic_compare_exchange_weak(&claimed, &prev, prev + take)) return take;
    }
}

/* Compares `b` descriptors at `out` with the reference from patch `off` on;
 * counts and reports (the first few) differing descriptors. */
static void check(const char *who, size_t call, const char *fn, size_t b, size_t off, const float *out) {
    if (memcmp(out, reference + off * NHP_DESC_LEN, b * NHP_DESC_LEN * sizeof *out) == 0) return;
    for (size_t k = 0; k < b; k++) {
        const float *got = out + k * NHP_DESC_LEN;
        const float *want = reference + (off + k) * NHP_DESC_LEN;
        if (memcmp(got, want, NHP_DESC_LEN * sizeof *got) == 0) continue;
        size_t m = atomic_fetch_add(&mismatches, 1);
        if (m >= MAX_REPORTED_MISMATCHES) continue;
        size_t first = 0, ndiff = 0;
        for (size_t j = NHP_DESC_LEN; j-- > 0;) {
            if (memcmp(&got[j], &want[j], sizeof(float)) != 0) {
                first = j;
                ndiff++;
            }
        }
        pthread_mutex_lock(&print_lock);
        printf("MISMATCH %s call %zu (%s, batch %zu, offset %zu): patch %zu, %zu of 128 values differ, "
               "first [%zu] got %.9g (%a) want %.9g (%a)\n",
               who, call, fn, b, off, off + k, ndiff, first, got[first], got[first], want[first], want[first]);
        pthread_mutex_unlock(&print_lock);
    }
}

static void call_failed(const char *who, size_t call, const char *fn, size_t b, size_t off, nhp_status st) {
    pthread_mutex_lock(&print_lock);
    printf("FAIL %s call %zu: %s(batch %zu, offset %zu) returned %d: %s\n", who, call, fn, b, off, (int)st,
           nhp_last_error());
    pthread_mutex_unlock(&print_lock);
    atomic_store(&failed, 1);
    atomic_store(&stop, 1);
}

static void *worker_main(void *arg) {
    struct worker *w = arg;
    char who[32];
    snprintf(who, sizeof who, "thread %zu", w->index);
    float *out = malloc(max_batch * NHP_DESC_LEN * sizeof *out);
    if (out == NULL) {
        printf("FAIL %s: out of memory\n", who);
        atomic_store(&failed, 1);
        atomic_store(&stop, 1);
    }
    uint32_t rng = 0x9e3779b9u * (uint32_t)(w->index + 1);
    size_t cycle_pos = w->index % n_batches;
    size_t in_cycle = 0;
    for (size_t call = 0; out != NULL && !atomic_load(&stop); call++) {
        pthread_mutex_lock(&gate_lock);
        if (gate_closed) {
            parked++;
            pthread_cond_broadcast(&gate_cv);
            while (gate_closed) pthread_cond_wait(&gate_cv, &gate_lock);
            parked--;
        }
        pthread_mutex_unlock(&gate_lock);

        size_t want = batches[cycle_pos];
        cycle_pos = (cycle_pos + 1) % n_batches;
        size_t b = claim(want);
        if (b == 0) break;
        size_t off = (size_t)(lcg_next(&rng) >> 8) % (n_set - b + 1);
        int use_f32 = call & 1;
        const char *fn = use_f32 ? "nhp_describe_f32" : "nhp_describe_u8";
        size_t out_len = b * NHP_DESC_LEN;
        /* Poison the output, so a call that writes nothing cannot pass. */
        memset(out, 0xff, out_len * sizeof *out);
        double t0 = now_s();
        nhp_status st = use_f32 ? nhp_describe_f32(net, set_f32 + off * NHP_PATCH_LEN, b, out, out_len)
                                : nhp_describe_u8(net, set_u8 + off * NHP_PATCH_LEN, b, out, out_len);
        double dt = now_s() - t0;
        if (st != NHP_OK) {
            call_failed(who, call, fn, b, off, st);
            break;
        }
        check(who, call, fn, b, off, out);
        w->call_s += dt;
        if (dt > w->max_call_s) w->max_call_s = dt;
        w->calls++;
        w->patches += b;
        if (use_f32) w->f32_calls++;
        else w->u8_calls++;
        atomic_fetch_add(&done_patches, b);
        if (++in_cycle == n_batches) atomic_fetch_add(&threads_cycled, 1);
    }
    free(out);
    pthread_mutex_lock(&gate_lock);
    running--;
    pthread_cond_broadcast(&gate_cv);
    pthread_mutex_unlock(&gate_lock);
    return NULL;
}

/* Parks every running worker between two calls. */
static void gate_close(void) {
    pthread_mutex_lock(&gate_lock);
    gate_closed = 1;
    while (parked < running) pthread_cond_wait(&gate_cv, &gate_lock);
    pthread_mutex_unlock(&gate_lock);
}

static void gate_open(void) {
    pthread_mutex_lock(&gate_lock);
    gate_closed = 0;
    pthread_cond_broadcast(&gate_cv);
    pthread_mutex_unlock(&gate_lock);
}

/* With no call in flight: describes 256 patches, then 1 (both checked), so
 * that the network's two cached workspaces are always the same, and samples. */
static struct mem settle(const char *who) {
    static size_t settles;
    static float out[256 * NHP_DESC_LEN];
    size_t sizes[2] = {n_set < 256 ? n_set : 256, 1};
    for (size_t i = 0; i < 2; i++) {
        size_t b = sizes[i];
        nhp_status st = nhp_describe_u8(net, set_u8, b, out, b * NHP_DESC_LEN);
        if (st != NHP_OK) call_failed(who, settles, "nhp_describe_u8", b, 0, st);
        else check(who, settles, "nhp_describe_u8", b, 0, out);
    }
    settles++;
    return mem_now();
}

static void die_nhp(const char *what) {
    printf("FAIL %s: %s\n", what, nhp_last_error());
    exit(1);
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: %s WEIGHTS.safetensors   (settings: SOAK_* environment variables, see the source)\n",
                argv[0]);
        return 2;
    }
    setvbuf(stdout, NULL, _IOLBF, 0);
    n_threads = env_size("SOAK_THREADS", 8);
    max_patches = env_size("SOAK_MAX_PATCHES", 1000000);
    max_seconds = env_double("SOAK_MAX_SECONDS", 600);
    n_set = env_size("SOAK_SET", 4096);
    ref_batch = env_size("SOAK_REF_BATCH", 256);
    pool_threads = env_size("SOAK_POOL", 0);
    report_every = env_double("SOAK_REPORT", 30);
    rss_pct = env_double("SOAK_RSS_PCT", 10);
    rss_mib = env_double("SOAK_RSS_MIB", 16);
    live_mib = env_double("SOAK_LIVE_MIB", 4);
    const char *bs = getenv("SOAK_BATCHES");
    parse_batches(bs && *bs ? bs : "1,7,16,128,256,300");
    if (n_threads == 0 || ref_batch == 0 || n_set < max_batch) {
        fprintf(stderr, "soak_capi: need SOAK_THREADS >= 1, SOAK_REF_BATCH >= 1, SOAK_SET >= the largest batch\n");
        return 2;
    }

    printf("nhpatch %s; pid %d; %ld CPUs online\n", nhp_version(), (int)getpid(), sysconf(_SC_NPROCESSORS_ONLN));
    printf("settings: threads %zu, max patches %zu, max seconds %.0f, set %zu patches, reference batch %zu, "
           "batches",
           n_threads, max_patches, max_seconds, n_set, ref_batch);
    for (size_t i = 0; i < n_batches; i++) printf("%s%zu", i ? "," : " ", batches[i]);
    printf(", soak pool %zu%s, report every %.0f s, RSS margin max(%.0f%%, %.0f MiB), live heap margin %.0f MiB\n",
           pool_threads, pool_threads ? "" : " (one per core)", report_every, rss_pct, rss_mib, live_mib);
    const char *mt = getenv("MALLOC_MMAP_THRESHOLD_"), *ma = getenv("MALLOC_ARENA_MAX");
    if (mt || ma)
        printf("malloc tuning: MALLOC_MMAP_THRESHOLD_=%s MALLOC_ARENA_MAX=%s\n", mt ? mt : "-", ma ? ma : "-");

    long rss_before_load = rss_kib();
    if (nhp_load_descriptor(argv[1], &net) != NHP_OK) die_nhp("nhp_load_descriptor");
    printf("loaded %s: %s, %zu values per patch; RSS %.1f MiB before load, %.1f MiB after\n", argv[1],
           nhp_arch_name(net), nhp_output_len(net), mib(rss_before_load), mib(rss_kib()));
    if (nhp_output_len(net) != NHP_DESC_LEN) {
        printf("FAIL nhp_output_len is %zu, not %d\n", nhp_output_len(net), NHP_DESC_LEN);
        return 1;
    }

    /* The fixed patch set. */
    set_u8 = malloc(n_set * NHP_PATCH_LEN);
    set_f32 = malloc(n_set * NHP_PATCH_LEN * sizeof *set_f32);
    reference = malloc(n_set * NHP_DESC_LEN * sizeof *reference);
    if (!set_u8 || !set_f32 || !reference) {
        printf("FAIL out of memory for the patch set\n");
        return 1;
    }
    uint32_t seed = 12345;
    uint64_t sum = 0;
    for (size_t i = 0; i < n_set * NHP_PATCH_LEN; i++) {
        set_u8[i] = (uint8_t)(lcg_next(&seed) >> 24);
        set_f32[i] = (float)set_u8[i];
        sum += set_u8[i];
    }
    printf("patch set: %zu patches, mean grey level %.3f\n", n_set, (double)sum / (double)(n_set * NHP_PATCH_LEN));

    /* Reference: one worker thread, one caller, one call per ref_batch patches. */
    if (nhp_set_threads(net, 1) != NHP_OK) die_nhp("nhp_set_threads(1)");
    double t0 = now_s();
    for (size_t off = 0; off < n_set; off += ref_batch) {
        size_t b = n_set - off < ref_batch ? n_set - off : ref_batch;
        if (nhp_describe_u8(net, set_u8 + off * NHP_PATCH_LEN, b, reference + off * NHP_DESC_LEN, b * NHP_DESC_LEN) !=
            NHP_OK)
            die_nhp("nhp_describe_u8 (reference)");
    }
    double t_ref = now_s() - t0;
    size_t nonfinite = 0;
    double norm0 = 0;
    for (size_t i = 0; i < n_set * NHP_DESC_LEN; i++)
        if (!(reference[i] - reference[i] == 0)) nonfinite++;
    for (size_t j = 0; j < NHP_DESC_LEN; j++) norm0 += (double)reference[j] * reference[j];
    printf("reference: %zu patches in %.1f s (%.0f patches/s, 1 thread); descriptor 0 norm^2 %.6f, "
           "d0[0..3] %.9g %.9g %.9g %.9g; non-finite values %zu\n",
           n_set, t_ref, (double)n_set / t_ref, norm0, reference[0], reference[1], reference[2], reference[3],
           nonfinite);
    if (nonfinite) {
        printf("FAIL the reference holds non-finite values\n");
        return 1;
    }

    /* The soak's pool, and the settled start sample. */
    if (nhp_set_threads(net, pool_threads) != NHP_OK) die_nhp("nhp_set_threads (soak)");
    struct mem m_start = settle("main (settle)");
    print_mem("settled at start:", m_start, "");
    printf("threads in the process: %ld\n", threads_now());

    size_t warm_patches = max_patches / 20;
    double warm_seconds = max_seconds / 20;
    struct mem m_warm = {0, 0, 0};
    long rss_warm_raw = 0, rss_max = m_start.rss;
    double t_warm = 0, paused_s = 0;
    size_t warm_done = 0;
    int warm = 0;

    struct worker *ws = calloc(n_threads, sizeof *ws);
    if (ws == NULL) {
        printf("FAIL out of memory\n");
        return 1;
    }
    double t_start = now_s();
    size_t started = 0;
    running = n_threads;
    for (size_t i = 0; i < n_threads; i++) {
        ws[i].index = i;
        int e = pthread_create(&ws[i].tid, NULL, worker_main, &ws[i]);
        if (e != 0) {
            printf("FAIL pthread_create: %s\n", strerror(e));
            atomic_store(&failed, 1);
            atomic_store(&stop, 1);
            pthread_mutex_lock(&gate_lock);
            running -= n_threads - i;
            pthread_mutex_unlock(&gate_lock);
            break;
        }
        started++;
    }

    double next_report = report_every, last_report_t = 0;
    size_t last_report_patches = 0;
    for (;;) {
        struct timespec nap = {0, 200 * 1000 * 1000};
        nanosleep(&nap, NULL);
        double t = now_s() - t_start;
        size_t done = atomic_load(&done_patches);
        long r = rss_kib();
        if (r > rss_max) rss_max = r;
        int finished = done >= max_patches;
        if (!warm && !finished && (done >= warm_patches || t >= warm_seconds) &&
            atomic_load(&threads_cycled) >= started) {
            double p0 = now_s();
            gate_close();
            m_warm = settle("main (settle)");
            gate_open();
            paused_s += now_s() - p0;
            warm = 1;
            rss_warm_raw = r;
            t_warm = t;
            warm_done = done;
            printf("[%7.1f s] warm-up over after %zu patches (RSS %.1f MiB while running); workers parked %.1f s "
                   "for the settled sample:\n",
                   t, done, mib(r), now_s() - p0);
            print_mem("  after warm-up", m_warm, "");
        }
        if (report_every > 0 && t >= next_report) {
            struct mem m = mem_now();
            printf("[%7.1f s] patches %zu (%.0f/s since last line), mismatches %zu, RSS %.1f MiB, max %.1f MiB",
                   t, done, (double)(done - last_report_patches) / (t - last_report_t), atomic_load(&mismatches),
                   mib(m.rss), mib(rss_max));
            if (m.live >= 0) printf("; heap live %.1f MiB, kept %.1f MiB", mib(m.live), mib(m.kept));
            printf("\n");
            last_report_t = t;
            last_report_patches = done;
            while (next_report <= t) next_report += report_every;
        }
        if (t >= max_seconds) atomic_store(&stop, 1);
        if (atomic_load(&stop) || finished) break;
    }
    for (size_t i = 0; i < started; i++) pthread_join(ws[i].tid, NULL);
    double elapsed = now_s() - t_start;
    long rss_end_raw = rss_kib();
    if (rss_end_raw > rss_max) rss_max = rss_end_raw;
    long hwm = proc_status_kib("VmHWM:");
    struct mem m_end = settle("main (settle)");
    size_t total = atomic_load(&done_patches);
    size_t bad = atomic_load(&mismatches);

    printf("\nper thread: calls (u8/f32), patches, mean and longest call\n");
    size_t calls = 0;
    for (size_t i = 0; i < started; i++) {
        printf("  thread %zu: %4zu calls (%zu/%zu), %6zu patches, %.2f s, %.2f s\n", i, ws[i].calls, ws[i].u8_calls,
               ws[i].f32_calls, ws[i].patches, ws[i].calls ? ws[i].call_s / (double)ws[i].calls : 0.0,
               ws[i].max_call_s);
        calls += ws[i].calls;
    }
    if (!warm) {
        printf("note: the run ended before warm-up was over; the warm-up sample is the end sample\n");
        m_warm = m_end;
        rss_warm_raw = rss_end_raw;
        t_warm = elapsed;
        warm_done = total;
    }
    double growth_kib = (double)(m_end.rss - m_warm.rss);
    double margin_kib = rss_pct / 100.0 * (double)m_warm.rss;
    if (margin_kib < rss_mib * 1024.0) margin_kib = rss_mib * 1024.0;
    int rss_ok = growth_kib <= margin_kib;
    double live_growth_kib = m_end.live >= 0 ? (double)(m_end.live - m_warm.live) : 0;
    int live_ok = live_growth_kib <= live_mib * 1024.0;

    printf("\n== soak_capi summary\n");
    printf("threads            %zu callers sharing one network, pool %zu%s\n", started, pool_threads,
           pool_threads ? "" : " (one per core)");
    printf("total patches      %zu in %zu calls (%s)\n", total, calls,
           total < max_patches ? "stopped by the time limit" : "stopped by the patch limit");
    printf("elapsed            %.1f s (%.1f s of it with the workers parked for the warm-up sample)\n", elapsed,
           paused_s);
    printf("patches/s          %.1f\n", (double)total / elapsed);
    printf("mismatches         %zu (descriptors not bit-identical to the single-threaded reference)\n", bad);
    printf("call failures      %d\n", atomic_load(&failed));
    printf("memory             RSS, and glibc's heap: live (allocated) and kept (freed, held by malloc)\n");
    print_mem("  start", m_start, " (settled; after load, reference and pool)");
    print_mem("  after warm-up", m_warm, "");
    printf("                     (settled, at %.1f s, %zu patches; RSS %.1f MiB while running just before)\n",
           t_warm, warm_done, mib(rss_warm_raw));
    printf("  max                RSS %7.1f MiB (while running, sampled every 0.2 s; VmHWM %.1f MiB)\n",
           mib(rss_max), mib(hwm));
    print_mem("  end", m_end, "");
    printf("                     (settled; RSS %.1f MiB when the workers had stopped)\n", mib(rss_end_raw));
    printf("RSS growth         %+.1f MiB after warm-up (allowed +%.1f MiB)\n", growth_kib / 1024.0,
           margin_kib / 1024.0);
    if (m_end.live >= 0)
        printf("live heap growth   %+.1f MiB after warm-up (allowed +%.1f MiB)\n", live_growth_kib / 1024.0,
               live_mib);

#ifdef __GLIBC__
    if (getenv("SOAK_MALLOC_STATS")) {
        fflush(stdout);
        malloc_stats(); /* per arena, on stderr */
    }
    malloc_trim(0);
    printf("  after malloc_trim  RSS %7.1f MiB (free pages given back to the system; information only)\n",
           mib(rss_kib()));
#endif
    nhp_free(net);
    free(ws);
    free(set_u8);
    free(set_f32);
    free(reference);
    struct mem m_free = mem_now();
    print_mem("  after nhp_free", m_free, " (and the patch set freed; information only)");

    int ok = !atomic_load(&failed) && bad == 0 && rss_ok && live_ok;
    printf("result             %s%s%s%s%s\n", ok ? "PASS" : "FAIL", atomic_load(&failed) ? " (a call failed)" : "",
           bad ? " (descriptors differ)" : "", rss_ok ? "" : " (RSS grew after warm-up)",
           live_ok ? "" : " (live heap grew after warm-up)");
    return ok ? 0 : 1;
}
