/*
 * sgemm_small.h: a GEMM for the small layers of small models, next to the BLAS.
 *
 * C(M,N) = alpha A(M,K) op(B) + beta C, row-major, beta 0 or 1, A not transposed;
 * op(B) = B^T (B is N x K: an nn.Linear weight, x W^T) when tb, else B (K x N: dy W).
 * Where the weight is small (K, N <= SGEMM_SMALL_MAX) a BLAS spends a large share of
 * such a GEMM packing A; this one broadcasts A from its rows as they are and packs
 * only the small B, in 6 x 16 register tiles. Each element of C sums over k in order
 * (blocks of SGEMM_SMALL_KC): the result does not depend on how rows are split.
 */
#ifndef GPT_SGEMM_SMALL_H
#define GPT_SGEMM_SMALL_H

#include <stdint.h>

#define SGEMM_SMALL_MAX 512

/* Nonzero when gpt_sgemm_small takes this GEMM: x86-64 with AVX2 and FMA (elsewhere the
 * BLAS's own kernels are the better choice), A not transposed, beta 0 or 1, K and N
 * at most SGEMM_SMALL_MAX. */
int gpt_sgemm_small_fits(int ta, int64_t N, int64_t K, float beta);

/* M, N, K >= 1 (kernels_matmul.c's sgemm_rows deals with K = 0 before it gets here). */
void gpt_sgemm_small(int tb, int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda,
                     const float* B, int64_t ldb, float beta, float* C, int64_t ldc);

/* C(M,N) = A op(B) + bias (N floats, added to every row) with the gpt_sgemm_small_fits
 * conditions for beta 0: the sums start from the bias, so no pass writes it into C first
 * (and C is only read back for sums longer than one block of SGEMM_SMALL_KC). */
void gpt_sgemm_small_bias(int tb, int64_t M, int64_t N, int64_t K, const float* A, int64_t lda, const float* B,
                          int64_t ldb, const float* bias, float* C, int64_t ldc);

#endif
