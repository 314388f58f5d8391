// rng.h — counter-based random numbers (Philox4x32-10, Salmon et al., SC'11).
//
// A stream key names *whose* randomness it is; a counter names *which* draw. Sampling uses
//   key = rng_stream_key(seed, prompt_id, sample_index, iteration)
//   u   = rng_uniform(key, position)
// so a sample's tokens depend only on (seed, iteration, prompt id, sample index, position):
// never on batch composition, batch order, the number of threads, or the device.
#ifndef SAFE_RNG_H
#define SAFE_RNG_H

#include <stdint.h>

// The Philox4x32 block function with 10 rounds: out = philox(ctr, key).
void rng_philox4x32_10(const uint32_t ctr[4], const uint32_t key[2], uint32_t out[4]);

// 64-bit key of one random stream. The prompt id is hashed (FNV-1a 64); all fields are
// mixed with splitmix64 finalisers, so nearby seeds/indices give unrelated streams.
uint64_t rng_stream_key(uint64_t seed, const char *prompt_id, int sample_index, int iteration);

// splitmix64 (Steele et al.): advance *state by the golden-ratio step and mix it; a plain
// seedable sequence for initialisations and shuffles (not the sampling streams above).
uint64_t rng_splitmix64(uint64_t *state);

// Four independent 32-bit words for (key, counter).
void rng_u32x4(uint64_t key, uint64_t counter, uint32_t out[4]);
// Uniform float in [0, 1) with 24 random bits (first word of the block).
float rng_uniform(uint64_t key, uint64_t counter);
// Uniform double in [0, 1) with 53 random bits (first two words).
double rng_uniform_f64(uint64_t key, uint64_t counter);

#endif
