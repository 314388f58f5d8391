// trainbatch.h — turn in-memory records (recstore.h) into model batches for training:
// a padded SeqBatch over chosen rows, and per-response-token fields packed in its order.
#ifndef SAFE_TRAINBATCH_H
#define SAFE_TRAINBATCH_H

#include "recstore.h"
#include "seqbatch.h"

// Batch of records rows[0..n) (rows NULL: all records in order), from their prompt_tokens
// and response_tokens. Dies (exit 2) naming the record when either is missing or empty prompt.
SeqBatch *records_seqbatch(const RecStore *s, const int *rows, int n);
// A per-response-token f32 field of those rows, packed like sb (sb->n_resp floats); every
// record's array must have exactly its response length (exit 2 naming record and field).
// Non-finite values stop with exit 3 naming the record and field.
float *records_tokfield(const RecStore *s, const int *rows, int n, const SeqBatch *sb, const char *key);
// A per-record number (n values); non-finite values stop with exit 3 naming record and field.
float *records_scalar(const RecStore *s, const int *rows, int n, const char *key);
// Per-record 1/0: the record's "finish" field equals "eos".
uint8_t *records_eos(const RecStore *s, const int *rows, int n);
// idx (n) = a permutation of 0..n-1 drawn from `seed` (splitmix64 + Fisher-Yates): the
// minibatch order of an epoch, the same on every machine and rank.
void minibatch_order(int *idx, int n, unsigned long long seed);
// Copy packed per-token values of row subset `rows` of `full` into the packing of `sub`.
void pack_rows(const SeqBatch *full, const float *src, const int *rows, int n, const SeqBatch *sub,
               float *dst);

#endif
