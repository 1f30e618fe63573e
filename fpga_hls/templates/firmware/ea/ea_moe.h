// edgeattn HLS library: mixture-of-experts MLP with Edge-MoE's patch reordering.
//
// The gate (a D -> E linear on the shared MAC array) scores every token; each token picks its top-K experts
// (largest logit first, ties to the lower expert index) and their mixing weights are the online softmax of
// those K scores. Tokens are then queued per expert, and each expert with a non-empty queue runs once over
// its queue: its weights are read once per image, not once per token. The expert's second linear
// scatter-accumulates gate * output straight into the residual stream (MAC_MOE_ACC). Every linear here runs
// on the one shared MAC unit.
#ifndef EA_MOE_H
#define EA_MOE_H

#include "ea_mac.h"
#include "ea_nonlinear.h"
#include "ea_types.h"

namespace ea {

#if EA_N_MOE > 0  // the offsets it reads exist only in a model with MoE layers
// MoE MLP of MoE layer m: resid += sum over each token's top-K experts of gate * expert(xn). xq and hid are
// the caller's scratch buffers (free while the MLP runs); the gate logits go to hid before the experts reuse it.
template <int N, int D, int HID, int E, int K>
void moe_mlp(const act_buf_t xn, act_buf_t resid, act_buf_t xq, act_buf_t hid, const wword_t *wmem, int m) {
#pragma HLS INLINE
    static short queue[E][N];
    static prob_t queue_gate[E][N];
    short qlen[E];
#pragma HLS ARRAY_PARTITION variable=qlen type=complete

    mac_linear(xn, hid, N, D, E, MAC_PLAIN, wmem, gate_w_off[m], gate_b_off[m]);  // gate logits: hid[n][e]

    for (int e = 0; e < E; e++) qlen[e] = 0;
ROUTE:  // top-K per token, mixing weights, and the per-expert token queues
    for (int n = 0; n < N; n++) {
        bool taken[E];
        int pick[K];
        softmax_row_t run;
        softmax_init(run);
        for (int e = 0; e < E; e++) taken[e] = false;
        for (int k = 0; k < K; k++) {
            int best = -1;
            for (int e = 0; e < E; e++) {
                if (!taken[e] && (best < 0 || hid[n][e] > hid[n][best])) best = e;
            }
            taken[best] = true;
            pick[k] = best;
            softmax_update(run, score_t(hid[n][best]));
        }
        softmax_stats_t st = softmax_finish(run);
        i64_t carry = 0;
        for (int k = 0; k < K; k++) {
            int e = pick[k];
            queue[e][qlen[e]] = n;
            queue_gate[e][qlen[e]] = softmax_prob(score_t(hid[n][e]), st, carry);
            qlen[e]++;
        }
    }

EXPERTS:  // each active expert's weights stream through the MAC unit once for all of its tokens
    for (int e = 0; e < E; e++) {
        if (qlen[e] == 0) continue;
    GATHER:  // the expert's tokens, and their routing for the unit's scatter-accumulate
        for (int j = 0; j < qlen[e]; j++) {
#pragma HLS LOOP_TRIPCOUNT min=0 max=N
            for (int d = 0; d < D; d++) {
#pragma HLS PIPELINE II=1
                xq[j][d] = xn[queue[e][j]][d];
            }
            mac_dst[j] = queue[e][j];
            mac_gate[j] = queue_gate[e][j];
        }
        mac_linear(xq, hid, qlen[e], D, HID, MAC_GELU, wmem, efc1_w_off[m][e], efc1_b_off[m][e]);
        mac_linear(hid, resid, qlen[e], HID, D, MAC_MOE_ACC, wmem, efc2_w_off[m][e], efc2_b_off[m][e]);
    }
}
#endif

}  // namespace ea

#endif
