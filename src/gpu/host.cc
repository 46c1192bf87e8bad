// The kernels of kernels.cu compiled for the host: each becomes
// `extern "C" void name(const KArgs*)`, a sequential loop over `idx`, which
// `nhpatch::gpu::emu` calls. Built by build.rs with the `cuda` feature.
#include <math.h>

#define __device__

// Must match `KArgs` in backend.rs and the device prelude there.
struct KArgs {
  unsigned long long p[8];
  long long i[12];
  float f[8];
  long long n;
};

#define NH_KERNEL(name)                                                  \
  static inline void name##_body(const KArgs& a, long long idx);         \
  extern "C" void name(const KArgs* a) {                                 \
    for (long long idx = 0; idx < a->n; ++idx) name##_body(*a, idx);     \
  }                                                                      \
  static inline void name##_body(const KArgs& a, long long idx)

#include "kernels.cu"
