/*
 * decode.h: incremental decoding with a KV cache on the CPU backend (internal; the
 * ABI is gpt_decode_begin / gpt_decode_step in native/include/gpt.h, reached through
 * model.c's backend table).
 */
#ifndef GPT_CPU_DECODE_H
#define GPT_CPU_DECODE_H

#include <stddef.h>
#include <stdint.h>

#include "../backend.h"
#include "pool.h"

typedef struct cpu_decoder cpu_decoder;

/* The prompt pass: tokens[0..n) from position 0 (1 <= n <= T, ids valid: gpt.c checked).
 * *dec is allocated on the first call (the cache and every buffer a step needs) and
 * regrown only when the pool has more threads than before. logits: (n, V) with all,
 * else (V) of position n - 1. params is the flat parameter buffer of spec's layout. */
int cpu_decode_begin(cpu_decoder** dec, const gpt_spec* spec, const float* params, gpt_pool* pool,
                     const int32_t* tokens, int32_t n, float* logits, int32_t all, char* err, size_t errlen);
/* One token at position pos (the cache holds positions 0..pos-1, pos < T): logits (V). */
int cpu_decode_step(cpu_decoder* dec, const float* params, gpt_pool* pool, int32_t token, int32_t pos,
                    float* logits);
void cpu_decode_free(cpu_decoder* dec);

#endif
