// edgeattn HLS library: one pre-norm transformer encoder layer and the tiny-ViT pipeline around it.
//
//   x = x + proj(attention(LN1(x)))
//   x = x + MLP(LN2(x))        MLP = fc2(gelu(fc1(.))) or the MoE MLP, per layer (ea_layer_moe[l])
// The weights of layer l are the l-th slices of the generated arrays in weights.h.
#ifndef EA_ENCODER_H
#define EA_ENCODER_H

#include "ea_attention.h"
#include "ea_layernorm.h"
#include "ea_mac.h"
#include "ea_moe.h"
#include "ea_types.h"
#include "../weights.h"

namespace ea {

static const int N = EA_TOKENS;
static const int D = EA_DIM;

inline void residual_add(act_t x[][EA_DIM], const act_t y[][EA_DIM]) {
RESID:
    for (int n = 0; n < N; n++) {
        for (int d = 0; d < D; d++) {
#pragma HLS PIPELINE II=1
#pragma HLS UNROLL factor=EA_MAC_C
            x[n][d] = act_t(x[n][d] + y[n][d]);
        }
    }
}

inline void encoder_layer(act_t x[][EA_DIM], int l) {
    static act_t xn[N][D];
    static act_t qkv[N][3 * D];
#pragma HLS ARRAY_PARTITION variable=qkv type=cyclic factor=EA_MAC_R dim=2
    static act_t ao[N][D];
    static act_t po[N][D];
#if EA_N_DENSE > 0
    static act_t hid[N][EA_HIDDEN];
#endif
    const qscale_t qscale = from_raw<qscale_t>(ap_uint<EA_SCALE_F + 1>(EA_QSCALE_RAW));

    layernorm<D>(x, xn, N, ln1_g[l], ln1_b[l]);
    mac_linear<D, 3 * D, MAC_PLAIN>(xn, qkv, N, qkv_w[l], qkv_b[l], 0, 0);
    multihead_attention<N, D, EA_HEADS, EA_ATTN_P>(qkv, ao, qscale);
    mac_linear<D, D, MAC_PLAIN>(ao, po, N, proj_w[l], proj_b[l], 0, 0);
    residual_add(x, po);

    layernorm<D>(x, xn, N, ln2_g[l], ln2_b[l]);
    const int m = layer_moe[l];
#if EA_N_DENSE > 0
    if (m < 0) {
        const int f = layer_dense[l];
        mac_linear<D, EA_HIDDEN, MAC_GELU>(xn, hid, N, fc1_w[f], fc1_b[f], 0, 0);
        mac_linear<EA_HIDDEN, D, MAC_PLAIN>(hid, po, N, fc2_w[f], fc2_b[f], 0, 0);
        residual_add(x, po);
    }
#endif
#if EA_N_MOE > 0
    if (m >= 0) {
        moe_mlp<N, D, EA_HIDDEN, EA_EXPERTS, EA_TOPK>(xn, x, gate_w[m], gate_b[m], efc1_w[m], efc1_b[m],
                                                      efc2_w[m], efc2_b[m]);
    }
#endif
    (void)m;
}

}  // namespace ea

#endif
