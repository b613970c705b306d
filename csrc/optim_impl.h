/* optim_impl.h: the optimizers' arithmetic on one vector of elements, shared by the update
 * kernels (ops_impl.h) and the GEMM's update epilogue (gemm_ukernel.h), so that a step fused into
 * the weight gradient's product gives the bits of the product followed by the kernel. Compiled
 * once per ISA by isa_*.c, after simd.h. */

/* An update's constants in float32, each rounded once from the caller's double (fastmlp.h). */
typedef struct {
    int kernel; /* FM_K_SGD_UPDATE, FM_K_RMSPROP_UPDATE or FM_K_ADAM_UPDATE */
    float lr, l2, a, b, c, d, eps, decay;
    int nesterov;
    /* the buffers of a kernel call (update_range); the epilogue passes its own pointers */
    float *p, *s1, *s2;
    const float *g;
} update_ctx;

/* sgd: a = momentum; rmsprop: a = rho, b = 1 - rho; adam: lr = the step size with the bias
 * corrections hoisted in (scikit-learn's form), a = b1, b = 1 - b1, c = b2, d = 1 - b2,
 * decay = 1 - lr wd. */
static inline update_ctx update_constants(const fm_update *up)
{
    update_ctx u = {.kernel = up->kernel, .lr = (float)up->lr, .l2 = (float)up->l2};
    if (up->kernel == FM_K_SGD_UPDATE) {
        u.a = (float)up->momentum, u.nesterov = up->nesterov;
    } else if (up->kernel == FM_K_RMSPROP_UPDATE) {
        u.a = (float)up->rho, u.b = (float)(1.0 - up->rho), u.eps = (float)up->eps;
    } else {
        double bc1 = 1.0 - pow(up->beta1, (double)up->step);
        double bc2 = 1.0 - pow(up->beta2, (double)up->step);
        u.lr = (float)(up->lr * sqrt(bc2) / bc1);
        u.a = (float)up->beta1, u.b = (float)(1.0 - up->beta1);
        u.c = (float)up->beta2, u.d = (float)(1.0 - up->beta2), u.eps = (float)up->eps;
        u.decay = (float)(1.0 - up->lr * up->weight_decay);
    }
    return u;
}

/* The first n lanes of p, s1, s2 take one step with gradient g (fastmlp.h, the update kernels):
 * every lane is the same float32 expression, so the bits do not depend on VLEN. */
static inline __attribute__((always_inline)) void
update_vector(const update_ctx *u, vf g, float *p, float *s1, float *s2, int n)
{
    vf pv = vload_n(p, n);
    vf gi = g + u->l2 * pv;
    if (u->kernel == FM_K_SGD_UPDATE) {
        if (u->a == 0.0f) {
            pv = pv - u->lr * gi;
        } else {
            vf v = u->a * vload_n(s1, n) - u->lr * gi;
            vstore_n(s1, v, n);
            pv = pv + (u->nesterov ? u->a * v - u->lr * gi : v);
        }
    } else if (u->kernel == FM_K_RMSPROP_UPDATE) {
        vf s = u->a * vload_n(s1, n) + u->b * (gi * gi);
        vstore_n(s1, s, n);
        pv = pv - u->lr * gi / (vsqrt(s) + u->eps);
    } else {
        vf m = u->a * vload_n(s1, n) + u->b * gi;
        vf v = u->c * vload_n(s2, n) + u->d * (gi * gi);
        vstore_n(s1, m, n);
        vstore_n(s2, v, n);
        pv = pv * u->decay - u->lr * m / (vsqrt(v) + u->eps);
    }
    vstore_n(p, pv, n);
}
