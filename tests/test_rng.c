// test_rng.c — Philox4x32-10 against the Random123 known-answer vectors, and the
// properties the samplers rely on: streams are pure functions of their names.
#include "test.h"

#include "philox.h"  // philox_u32x4, philox_uniform: the header the CUDA sampler compiles too
#include "rng.h"     // rng_philox4x32_10, rng_stream_key, rng_uniform

#include <stdint.h>

TEST(philox_known_answers) {
    // Random123 kat_vectors: "philox4x32 10" ctr[4] key[2] -> out[4]
    static const uint32_t kat[3][10] = {
        {0x00000000, 0x00000000, 0x00000000, 0x00000000, 0x00000000, 0x00000000,
         0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8},
        {0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff,
         0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd},
        {0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344, 0xa4093822, 0x299f31d0,
         0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1},
    };
    for (int i = 0; i < 3; i++) {
        uint32_t out[4];
        rng_philox4x32_10(kat[i], kat[i] + 4, out);
        printf("  vector %d: %08x %08x %08x %08x (want %08x %08x %08x %08x)\n", i, out[0], out[1],
               out[2], out[3], kat[i][6], kat[i][7], kat[i][8], kat[i][9]);
        for (int j = 0; j < 4; j++) CHECK(out[j] == kat[i][6 + j], "vector %d word %d", i, j);
    }
}

TEST(streams_are_names) {
    uint64_t a = rng_stream_key(42, "ts-0001", 0, 3);
    CHECK(a == rng_stream_key(42, "ts-0001", 0, 3), "same names, same key");
    uint64_t others[] = {
        rng_stream_key(43, "ts-0001", 0, 3), rng_stream_key(42, "ts-0002", 0, 3),
        rng_stream_key(42, "ts-0001", 1, 3), rng_stream_key(42, "ts-0001", 0, 4),
        rng_stream_key(42, "", 0, 3),
    };
    for (int i = 0; i < 5; i++) CHECK(others[i] != a, "field %d does not change the key", i);
    CHECK(rng_uniform(a, 7) == rng_uniform(a, 7), "uniform is a pure function");
    CHECK(rng_uniform(a, 7) != rng_uniform(a, 8), "counter changes the draw");
}

TEST(uniform_moments) {
    // 200k draws: mean 1/2, variance 1/12, all in [0, 1)
    uint64_t k = rng_stream_key(1, "moments", 0, 0);
    double s = 0, s2 = 0;
    int out_of_range = 0, n = 200000;
    for (int i = 0; i < n; i++) {
        float u = rng_uniform(k, (uint64_t)i);
        double d = rng_uniform_f64(k, (uint64_t)i);
        out_of_range += !(u >= 0.0f && u < 1.0f) + !(d >= 0.0 && d < 1.0);
        s += u; s2 += (double)u * u;
    }
    double mean = s / n, var = s2 / n - mean * mean;
    printf("  mean %.5f (0.5), variance %.5f (%.5f)\n", mean, var, 1.0 / 12);
    CHECK(out_of_range == 0, "%d draws outside [0,1)", out_of_range);
    CHECK(fabs(mean - 0.5) < 0.005 && fabs(var - 1.0 / 12) < 0.002, "moments off");
}

TEST(philox_header_is_rng) {
    // The GPU sampler draws through philox.h; rng.c must give the same bits, and both must
    // keep giving the values recorded before the header existed (runs stay reproducible).
    uint64_t k = rng_stream_key(42, "ts-0001", 3, 7);
    CHECK(k == 0x3bb8e9100d5a6686ULL, "stream key changed: %016llx", (unsigned long long)k);
    static const float golden[4] = {0x1.56379p-4f, 0x1.425ffp-1f, 0x1.7a647ap-1f, 0x1.3898dcp-1f};
    for (int i = 0; i < 4; i++) {
        uint64_t ctr = (uint64_t)i * 1000003ULL;
        printf("  u(key, %llu) = %.9g (header %.9g, recorded %.9g)\n", (unsigned long long)ctr,
               rng_uniform(k, ctr), philox_uniform(k, ctr), golden[i]);
        CHECK(rng_uniform(k, ctr) == golden[i] && philox_uniform(k, ctr) == golden[i], "draw %d changed", i);
    }
    uint32_t a[4], b[4];
    rng_u32x4(0x0123456789abcdefULL, 0xfedcba9876543210ULL, a);
    philox_u32x4(0x0123456789abcdefULL, 0xfedcba9876543210ULL, b);
    static const uint32_t want[4] = {0x2c03a599, 0xd8a290fc, 0x4339955b, 0x8784c033};
    for (int j = 0; j < 4; j++) CHECK(a[j] == want[j] && b[j] == want[j], "word %d: %08x %08x want %08x", j, a[j], b[j], want[j]);
    int differ = 0;
    for (uint64_t i = 0; i < 100000; i++) {
        uint64_t key = i * 0x9E3779B97F4A7C15ULL, ctr = i * 7919 + (i << 40);
        differ += rng_uniform(key, ctr) != philox_uniform(key, ctr);
    }
    CHECK(differ == 0, "%d of 100000 draws differ between rng.c and philox.h", differ);
}

int main(void) {
    RUN(philox_known_answers);
    RUN(streams_are_names);
    RUN(uniform_moments);
    RUN(philox_header_is_rng);
    return test_summary();
}
