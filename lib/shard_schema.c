// shard_schema.c — the built-in dtypes of the bin fields the safe tools write, so every
// header is self-describing without each tool declaring them. Keep in step with
// man/safe-shard.5. A dtype applies only where the field is a bin: "kl" and "entropy" are
// per-token f32 bins in records but plain numbers in stats records.
#include "shard.h"

#include <string.h>

const ShardDtype shard_schema[] = {
    // safe-rollout
    {"prompt_tokens", "i32"},     // (P) prompt token ids
    {"response_tokens", "i32"},   // (T) sampled token ids, EOS included
    {"logp", "f32"},              // (T) log pi_old(y_t | ...)
    {"ref_logp", "f32"},          // (T) log pi_ref(y_t | ...)
    {"entropy", "f32"},           // (T) entropy of the next-token distribution
    {"kept_mass", "f32"},         // (T) probability mass kept by top-k/top-p (when used)
    // safe-critic
    {"v1", "f32"},                // (T) value head 1
    {"v2", "f32"},                // (T) value head 2
    {"v_soft", "f32"},            // (T) soft minimum of v1, v2
    {"values", "f32"},            // (T) values used for GAE (v_soft; the single head for PPO)
    {"adv", "f32"},               // (T) advantages (whitened)
    {"ret", "f32"},               // (T) returns (targets of the value loss)
    {"token_reward", "f32"},      // (T) per-token reward (PPO: with the KL penalty)
    {"kl", "f32"},                // (T) per-token logp - ref_logp
};
const size_t shard_schema_len = sizeof shard_schema / sizeof shard_schema[0];

const char *shard_schema_dtype(const char *key) {
    for (size_t i = 0; i < shard_schema_len; i++)
        if (strcmp(shard_schema[i].name, key) == 0) return shard_schema[i].dtype;
    return NULL;
}
