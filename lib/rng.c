// rng.c — Philox4x32-10 and the stream keys built on it.
#include "rng.h"

#include "philox.h"   // philox4x32_10, philox_u32x4, philox_uniform: shared with kernels/sampler.cu

// The block function lives in philox.h (shared with the CUDA sampler, so both draw the same
// bits); these wrappers keep rng.h's names.
void rng_philox4x32_10(const uint32_t ctr[4], const uint32_t key[2], uint32_t out[4]) {
    philox4x32_10(ctr, key, out);
}

uint64_t rng_splitmix64(uint64_t *state) {
    uint64_t x = (*state += 0x9E3779B97F4A7C15ULL);
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ULL;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBULL;
    return x ^ (x >> 31);
}

// the finaliser alone: splitmix64's output for state x - step
static uint64_t splitmix64(uint64_t x) { return rng_splitmix64(&x); }

uint64_t rng_stream_key(uint64_t seed, const char *prompt_id, int sample_index, int iteration) {
    uint64_t h = 14695981039346656037ULL;   // FNV-1a 64 of the prompt id
    for (const unsigned char *s = (const unsigned char *)(prompt_id ? prompt_id : ""); *s; s++) {
        h ^= *s;
        h *= 1099511628211ULL;
    }
    // chain the fields through the finaliser so that no two fields can cancel
    uint64_t k = splitmix64(seed);
    k = splitmix64(k ^ h);
    k = splitmix64(k ^ (uint64_t)(uint32_t)sample_index);
    k = splitmix64(k ^ ((uint64_t)(uint32_t)iteration << 32 | 0x5AFEu));
    return k;
}

void rng_u32x4(uint64_t key, uint64_t counter, uint32_t out[4]) {
    philox_u32x4(key, counter, out);
}

float rng_uniform(uint64_t key, uint64_t counter) {
    return philox_uniform(key, counter);
}

double rng_uniform_f64(uint64_t key, uint64_t counter) {
    uint32_t r[4];
    rng_u32x4(key, counter, r);
    uint64_t x = ((uint64_t)r[0] << 32 | r[1]) >> 11;
    return (double)x * (1.0 / 9007199254740992.0);
}
