/* NEON path (aarch64's baseline: no run-time check). The default there; generic stays testable. */
#define FM_TARGET_NEON
#define FM_TABLE fm_kernels_neon
#define FM_TABLE_ISA FM_ISA_NEON
#include "isa_table.h"
