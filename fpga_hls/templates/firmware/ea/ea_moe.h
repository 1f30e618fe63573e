// edgeattn HLS library: mixture-of-experts MLP with Edge-MoE's patch reordering.
//
// The gate (a D -> E linear on the shared MAC array) scores every token; each token picks its top-K experts
// (largest logit first, ties to the lower expert index) and their mixing weights are the online softmax of
// those K scores. Tokens are then queued per expert, and each expert with a non-empty queue runs once over
// its queue: its weights are read once per image, not once per token. The expert's second linear
// scatter-accumulates gate * output straight into the residual stream (MAC_MOE_ACC).
#ifndef EA_MOE_H
#define EA_MOE_H

#include "ea_mac.h"
#include "ea_nonlinear.h"
#include "ea_types.h"

namespace ea {

template <int N, int D, int HID, int E, int K>
void moe_mlp(const act_t xn[][D], act_t resid[][D], const wraw_t gate_w[E][D], const araw_t gate_b[E],
             const wraw_t w1[E][HID][D], const araw_t b1[E][HID], const wraw_t w2[E][D][HID],
             const araw_t b2[E][D]) {
    static act_t logits[N][E];
    static short queue[E][N];
    static prob_t queue_gate[E][N];
    static act_t xq[N][D];
    static act_t hid[N][HID];
    short qlen[E];
#pragma HLS ARRAY_PARTITION variable=qlen type=complete

    mac_linear<D, E, MAC_PLAIN>(xn, logits, N, gate_w, gate_b, 0, 0);

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
                if (!taken[e] && (best < 0 || logits[n][e] > logits[n][best])) best = e;
            }
            taken[best] = true;
            pick[k] = best;
            softmax_update(run, score_t(logits[n][best]));
        }
        softmax_stats_t st = softmax_finish(run);
        i64_t carry = 0;
        for (int k = 0; k < K; k++) {
            int e = pick[k];
            queue[e][qlen[e]] = n;
            queue_gate[e][qlen[e]] = softmax_prob(score_t(logits[n][e]), st, carry);
            qlen[e]++;
        }
    }

EXPERTS:  // each active expert's weights stream through the MAC array once for all of its tokens
    for (int e = 0; e < E; e++) {
        if (qlen[e] == 0) continue;
        for (int j = 0; j < qlen[e]; j++) {
#pragma HLS LOOP_TRIPCOUNT min=0 max=N
            for (int d = 0; d < D; d++) {
#pragma HLS PIPELINE II=1
                xq[j][d] = xn[queue[e][j]][d];
            }
        }
        mac_linear<D, HID, MAC_GELU>(xq, hid, qlen[e], w1[e], b1[e], 0, 0);
        mac_linear<HID, D, MAC_MOE_ACC>(hid, resid, qlen[e], w2[e], b2[e], queue[e], queue_gate[e]);
    }
}

}  // namespace ea

#endif
