/*
 * blas.h: the one place that includes a CBLAS (Accelerate on macOS, OpenBLAS or any
 * cblas.h elsewhere) and decides who parallelizes a GEMM.
 *
 * GPT_BLAS_SPLIT 1: the kernels split every GEMM by rows over their own thread pool
 * and call a single-threaded BLAS from each thread (OpenBLAS: fusing the epilogue on
 * the rows a thread just computed, no second thread pool fighting for the cores).
 * GPT_BLAS_SPLIT 0: one BLAS call per GEMM, threaded by the BLAS (Accelerate).
 */
#ifndef GPT_BLAS_H
#define GPT_BLAS_H

#if defined(__APPLE__)
#ifndef ACCELERATE_NEW_LAPACK
#define ACCELERATE_NEW_LAPACK
#endif
#include <Accelerate/Accelerate.h>
#ifndef GPT_BLAS_SPLIT
#define GPT_BLAS_SPLIT 0
#endif
#else
#include <cblas.h>
#ifndef GPT_BLAS_SPLIT
#define GPT_BLAS_SPLIT 1
#endif
#endif

#endif
