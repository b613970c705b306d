/* AVX2 + FMA path (Haswell and later, Zen). Chosen at run time, never assumed at build time. */
#define FM_TARGET_AVX2
#define FM_TARGET_FEATURES "avx2,fma"
#define FM_TABLE fm_kernels_avx2
#define FM_TABLE_ISA FM_ISA_AVX2
#include "isa_table.h"
