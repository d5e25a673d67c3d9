/*
 * sgemm_check.c: native/cpu/sgemm_small.c against the BLAS, over the shapes where its
 * loops have edges: rows not a multiple of the 6-row tile, columns not a multiple of 16
 * or of the 128-column block, sums longer than one 128 block, strided operands, both
 * layouts of B, beta 0 and 1, alpha not 1; and gpt_sgemm_small_bias (sums started from a
 * bias) against the BLAS adding to rows filled with the bias.
 *
 * For each case: error = max |small - blas| / max over C of sum_k |alpha a_ik b_kj| (+|C|),
 * the size rounding can reach. Prints "fits <0|1>" (whether this CPU runs the small GEMM
 * in the library), then one line per case "<case> <error> PASS|FAIL", and exits 1 if any
 * failed. tests/native-sgemm.test.ts builds and runs it.
 */
#define _POSIX_C_SOURCE 200809L
#if defined(__APPLE__)
#define _DARWIN_C_SOURCE /* what Accelerate's headers need */
#endif
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "blas.h"
#include "sgemm_small.h"

#define TOL 1e-6

static float uniform(unsigned* s) {
    *s = *s * 1664525u + 1013904223u;
    return (float)((*s >> 8) & 0xFFFF) / 65536.0f - 0.5f;
}

/* C(M,N) = alpha A op(B) + beta C with padded leading dimensions, or with bias (alpha 1,
 * beta 0) A op(B) + bias; the error as above */
static double check(int tb, int M, int N, int K, float alpha, float beta, int with_bias) {
    const int lda = K + 3, ldb = (tb ? K : N) + 5, ldc = N + 7;
    const int brows = tb ? N : K;
    float* A = malloc(sizeof(float) * (size_t)M * lda);
    float* B = malloc(sizeof(float) * (size_t)brows * ldb);
    float* C0 = malloc(sizeof(float) * (size_t)M * ldc);
    float* C1 = malloc(sizeof(float) * (size_t)M * ldc);
    unsigned s = (unsigned)(M * 131 + N * 17 + K * 7 + tb);
    for (int i = 0; i < M * lda; i++) A[i] = uniform(&s);
    for (int i = 0; i < brows * ldb; i++) B[i] = uniform(&s);
    for (int i = 0; i < M * ldc; i++) C0[i] = C1[i] = uniform(&s);
    float* bias = malloc(sizeof(float) * (size_t)N);
    for (int j = 0; j < N; j++) bias[j] = 4.0f * uniform(&s);
    if (with_bias) {
        for (int i = 0; i < M; i++)
            for (int j = 0; j < N; j++) C0[i * ldc + j] = bias[j];
        cblas_sgemm(CblasRowMajor, CblasNoTrans, tb ? CblasTrans : CblasNoTrans, M, N, K, 1.0f, A, lda, B, ldb, 1.0f,
                    C0, ldc);
        gpt_sgemm_small_bias(tb, M, N, K, A, lda, B, ldb, bias, C1, ldc);
    } else {
        cblas_sgemm(CblasRowMajor, CblasNoTrans, tb ? CblasTrans : CblasNoTrans, M, N, K, alpha, A, lda, B, ldb,
                    beta, C0, ldc);
        gpt_sgemm_small(tb, M, N, K, alpha, A, lda, B, ldb, beta, C1, ldc);
    }
    double err = 0.0, scale = 0.0;
    for (int i = 0; i < M; i++)
        for (int j = 0; j < N; j++) {
            double mag = 0.0;
            for (int k = 0; k < K; k++) mag += fabs(alpha * A[i * lda + k] * (tb ? B[j * ldb + k] : B[k * ldb + j]));
            if (beta != 0.0f || with_bias) mag += fabs(C0[i * ldc + j]);
            if (mag > scale) scale = mag;
            const double d = fabs((double)C0[i * ldc + j] - (double)C1[i * ldc + j]);
            if (d > err) err = d;
        }
    /* the padding between rows is never written */
    int pad_ok = 1;
    unsigned t = (unsigned)(M * 131 + N * 17 + K * 7 + tb);
    for (int i = 0; i < M * lda + brows * ldb; i++) (void)uniform(&t);
    for (int i = 0; i < M * ldc; i++) {
        const float orig = uniform(&t);
        if (i % ldc >= N && C1[i] != orig) pad_ok = 0;
    }
    free(A), free(B), free(C0), free(C1), free(bias);
    return pad_ok ? err / (scale > 0.0 ? scale : 1.0) : INFINITY;
}

int main(void) {
    printf("fits %d\n", gpt_sgemm_small_fits(0, 16, 16, 0.0f));
    const int Ms[] = {1, 5, 6, 7, 13, 64};
    const int Ns[] = {1, 15, 16, 17, 128, 129, 300};
    const int Ks[] = {1, 8, 127, 128, 129, 300};
    int failures = 0;
    for (int tb = 0; tb < 2; tb++)
        for (size_t m = 0; m < sizeof Ms / sizeof *Ms; m++)
            for (size_t n = 0; n < sizeof Ns / sizeof *Ns; n++)
                for (size_t k = 0; k < sizeof Ks / sizeof *Ks; k++)
                    for (int v = 0; v < 3; v++) {
                        /* v 0: alpha 1, beta 0; v 1: alpha 0.37, beta 1; v 2: with a bias */
                        const float alpha = v == 1 ? 0.37f : 1.0f, beta = v == 1 ? 1.0f : 0.0f;
                        const double e = check(tb, Ms[m], Ns[n], Ks[k], alpha, beta, v == 2);
                        const int pass = e <= TOL;
                        failures += !pass;
                        printf("tb=%d M=%d N=%d K=%d alpha=%g beta=%g%s %.3e %s\n", tb, Ms[m], Ns[n], Ks[k], alpha,
                               beta, v == 2 ? " bias" : "", e, pass ? "PASS" : "FAIL");
                    }
    return failures ? 1 : 0;
}
