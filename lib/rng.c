// rng.c — Philox4x32-10 and the stream keys built on it.
#include "rng.h"


// Philox constants: round multipliers and Weyl key increments (golden ratio, sqrt(3)-1).
#define PHILOX_M0 0xD2511F53u
#define PHILOX_M1 0xCD9E8D57u
#define PHILOX_W0 0x9E3779B9u
#define PHILOX_W1 0xBB67AE85u

void rng_philox4x32_10(const uint32_t ctr[4], const uint32_t key[2], uint32_t out[4]) {
    uint32_t c0 = ctr[0], c1 = ctr[1], c2 = ctr[2], c3 = ctr[3];
    uint32_t k0 = key[0], k1 = key[1];
    for (int round = 0; round < 10; round++) {
        if (round > 0) { k0 += PHILOX_W0; k1 += PHILOX_W1; }   // key schedule: bump between rounds
        // two 32x32 -> 64 multiplies; hi halves mix with the other lanes and the key
        uint64_t p0 = (uint64_t)PHILOX_M0 * c0;
        uint64_t p1 = (uint64_t)PHILOX_M1 * c2;
        uint32_t hi0 = (uint32_t)(p0 >> 32), lo0 = (uint32_t)p0;
        uint32_t hi1 = (uint32_t)(p1 >> 32), lo1 = (uint32_t)p1;
        c0 = hi1 ^ c1 ^ k0;
        c1 = lo1;
        c2 = hi0 ^ c3 ^ k1;
        c3 = lo0;
    }
    out[0] = c0; out[1] = c1; out[2] = c2; out[3] = c3;
}

static uint64_t splitmix64(uint64_t x) {
    x += 0x9E3779B97F4A7C15ULL;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ULL;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBULL;
    return x ^ (x >> 31);
}

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
    uint32_t ctr[4] = {(uint32_t)counter, (uint32_t)(counter >> 32), 0, 0};
    uint32_t k[2] = {(uint32_t)key, (uint32_t)(key >> 32)};
    rng_philox4x32_10(ctr, k, out);
}

float rng_uniform(uint64_t key, uint64_t counter) {
    uint32_t r[4];
    rng_u32x4(key, counter, r);
    return (float)(r[0] >> 8) * (1.0f / 16777216.0f);
}

double rng_uniform_f64(uint64_t key, uint64_t counter) {
    uint32_t r[4];
    rng_u32x4(key, counter, r);
    uint64_t x = ((uint64_t)r[0] << 32 | r[1]) >> 11;
    return (double)x * (1.0 / 9007199254740992.0);
}
