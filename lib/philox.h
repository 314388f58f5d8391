// philox.h — Philox4x32-10 (Salmon et al., SC'11) as static inline functions that compile as
// C (lib/rng.c) and as CUDA device code (kernels/sampler.cu), so the CPU and the GPU samplers
// draw bit-identical uniforms for the same (key, counter). Nothing here allocates or fails.
//
//   philox4x32_10(ctr, key, out)     the block function (Random123's known answers hold:
//                                    tests/test_rng.c)
//   philox_u32x4(key, counter, out)  a 64-bit key and a 64-bit counter -> four words
//   philox_uniform(key, counter)     float in [0, 1), 24 random bits of the first word
//
// rng.h builds the stream keys on top (FNV-1a of the prompt id, splitmix64); only the block
// function and the uniform are needed on the device.
#ifndef SAFE_PHILOX_H
#define SAFE_PHILOX_H

#include <stdint.h>

#if defined(__CUDACC__)
#define PHILOX_FN static inline __host__ __device__
#else
#define PHILOX_FN static inline
#endif

// Philox constants: round multipliers and Weyl key increments (golden ratio, sqrt(3)-1).
#define PHILOX_M0 0xD2511F53u
#define PHILOX_M1 0xCD9E8D57u
#define PHILOX_W0 0x9E3779B9u
#define PHILOX_W1 0xBB67AE85u

// out = philox(ctr, key), 10 rounds. Only 32x32->64 multiplies and xors: the same bits on
// every compiler and device.
PHILOX_FN void philox4x32_10(const uint32_t ctr[4], const uint32_t key[2], uint32_t out[4]) {
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

// Four words for (key, counter): counter in the low two counter words, key split in halves.
PHILOX_FN void philox_u32x4(uint64_t key, uint64_t counter, uint32_t out[4]) {
    uint32_t ctr[4] = {(uint32_t)counter, (uint32_t)(counter >> 32), 0, 0};
    uint32_t k[2] = {(uint32_t)key, (uint32_t)(key >> 32)};
    philox4x32_10(ctr, k, out);
}

// Uniform float in [0, 1): the top 24 bits of the first word times 2^-24 (exact in float).
PHILOX_FN float philox_uniform(uint64_t key, uint64_t counter) {
    uint32_t r[4];
    philox_u32x4(key, counter, r);
    return (float)(r[0] >> 8) * (1.0f / 16777216.0f);
}

#undef PHILOX_FN
#endif
