/* Generic path: portable C on 4-wide vectors, no FMA; runs on any x86-64 or aarch64 CPU. */
#define FM_TABLE fm_kernels_generic
#define FM_TABLE_ISA FM_ISA_GENERIC
#include "isa_table.h"
