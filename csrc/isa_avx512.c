/* AVX-512 path (F, DQ, BW, VL: Skylake-X and later, Zen 4 and later). Chosen at run time. */
#define FM_TARGET_AVX512
#define FM_TARGET_FEATURES "avx512f,avx512dq,avx512bw,avx512vl,avx2,fma"
#define FM_TABLE fm_kernels_avx512
#define FM_TABLE_ISA FM_ISA_AVX512
#include "isa_table.h"
