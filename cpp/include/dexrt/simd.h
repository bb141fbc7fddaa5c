// Hot loops of the full-resolution path compiled twice, for AVX2 and for the x86-64 baseline, the CPU picking one
// when _core loads (GCC and Clang function multiversioning, an ifunc). Both clones make the same IEEE operations
// in the same order (no FMA: -ffp-contract=off; no reassociation), so results never depend on the CPU's clone;
// AVX2 only does 8 of them at once instead of 4.
#pragma once

#if defined(__x86_64__) && defined(__linux__) && (defined(__GNUC__) || defined(__clang__))
#define DEXRT_VECTOR_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define DEXRT_VECTOR_CLONES
#endif
