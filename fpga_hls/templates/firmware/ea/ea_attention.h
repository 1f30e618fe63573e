// edgeattn HLS library: multi-head attention with the Edge-MoE reordering and the fused online softmax.
//
// Reordering: P = EA_ATTN_P query rows are in flight. Every step t reads exactly one K (or V) row,
// key = t mod N, and broadcasts it to all P slots; a slot that starts a new query row reads that one Q row.
// Slot j serves queries j, j+P, j+2P, ...; query i starts at a step congruent to i (mod N), so it sees
// the keys in the rotated order i, i+1, ..., N-1, 0, ..., i-1 whatever P is (the results therefore do not
// depend on P). Slot j starts query j + rP at step j + r(N+P): starts of different slots never coincide,
// so at most one Q row is read per step (constant bandwidth).
//
// Softmax: while Q.K^T streams, each slot keeps the running max and running sum of its row (online
// softmax, edgeattn.approx spec); the score row is kept in score_t and A.V computes exp(s - m) * (1/d) on the
// fly, in the same reordered schedule (no stored probability matrix, no separate max or sum pass).
#ifndef EA_ATTENTION_H
#define EA_ATTENTION_H

#include "ea_nonlinear.h"
#include "ea_types.h"

namespace ea {

// Steps of the reordered schedule for N rows and P slots: the last slot to finish bounds it.
template <int N, int P>
struct attn_schedule {
    static const int ROUNDS = (N + P - 1) / P;
    static const int STEPS = (ROUNDS - 1) * (N + P) + (P - 1) + N;
};

// Which query row slot j works on at step t and how far into its key sweep it is (pos); false if idle.
template <int N, int P>
inline bool slot_task(int t, int j, int &row, int &pos) {
#pragma HLS INLINE
    int local = t - j;
    if (local < 0) return false;
    int r = local / (N + P);
    pos = local % (N + P);
    row = j + r * P;
    return row < N && pos < N;
}

// One head: qkv rows hold [q | k | v] (each D wide, head h at columns h*HD..h*HD+HD-1); o gets the head's
// columns of the merged-heads output.
template <int N, int D, int HD, int P>
void attention_head(const act_buf_t qkv, act_buf_t o, int h, qscale_t qscale) {
    static score_t S[N][N];
    static softmax_stats_t stats[N];
    qk_t qreg[P][HD];
    qk_t krow[HD];
    qk_t qrow_s[HD];  // the Q row of the slot starting this step
    softmax_row_t run[P];
    av_acc_t oacc[P][HD];
    i64_t carry[P];  // per-row rounding residual of the deferred probabilities (error diffusion)
    act_t vrow[HD];
#pragma HLS ARRAY_PARTITION variable=qreg type=complete dim=0
#pragma HLS ARRAY_PARTITION variable=krow type=complete
#pragma HLS ARRAY_PARTITION variable=qrow_s type=complete
#pragma HLS ARRAY_PARTITION variable=oacc type=complete dim=0
#pragma HLS ARRAY_PARTITION variable=vrow type=complete
#pragma HLS ARRAY_PARTITION variable=S type=cyclic factor=P dim=1
#pragma HLS ARRAY_PARTITION variable=stats type=cyclic factor=P dim=1
    // Slot j only ever holds rows with row % P == j, so cyclic banks by P give every slot its own bank.

    const int q0 = h * HD, k0 = D + h * HD, v0 = 2 * D + h * HD;
    const int T = attn_schedule<N, P>::STEPS;

QK_STEPS:  // pass 1: scores and online softmax statistics
    for (int t = 0; t < T; t++) {
#pragma HLS PIPELINE II=1
        const int key = t % N;
        for (int d = 0; d < HD; d++) {  // the one K row of this step
#pragma HLS UNROLL
            krow[d] = qk_t(qkv[key][k0 + d]);
        }
        // the one slot that can start a query at step t: js = t mod (N+P) in round t div (N+P). Its Q row is read
        // here, once, so the synthesized loop has one Q read per step rather than one guarded read per slot
        const int js = t % (N + P), qrow = js + (t / (N + P)) * P;
        if (js < P && qrow < N) {
            for (int d = 0; d < HD; d++) {
#pragma HLS UNROLL
                qrow_s[d] = qk_t(qkv[qrow][q0 + d] * qscale);
            }
        }
        for (int j = 0; j < P; j++) {
#pragma HLS UNROLL
            int row, pos;
            if (!slot_task<N, P>(t, j, row, pos)) continue;
            if (pos == 0) {  // then j == js and row == qrow
                for (int d = 0; d < HD; d++) {
#pragma HLS UNROLL
                    qreg[j][d] = qrow_s[d];
                }
                softmax_init(run[j]);
            }
            qk_acc_t dot = 0;
            for (int d = 0; d < HD; d++) {
#pragma HLS UNROLL
                dot += qreg[j][d] * krow[d];
            }
            score_t s = score_t(dot);
            S[row][key] = s;
            softmax_update(run[j], s);
            if (pos == N - 1) stats[row] = softmax_finish(run[j]);
        }
    }

AV_STEPS:  // pass 2: A.V with the deferred exp(s - m) * (1/d), same schedule, one V row per step
    for (int t = 0; t < T; t++) {
#pragma HLS PIPELINE II=1
        const int key = t % N;
        for (int d = 0; d < HD; d++) {
#pragma HLS UNROLL
            vrow[d] = qkv[key][v0 + d];
        }
        for (int j = 0; j < P; j++) {
#pragma HLS UNROLL
            int row, pos;
            if (!slot_task<N, P>(t, j, row, pos)) continue;
            if (pos == 0) carry[j] = 0;
            prob_t p = softmax_prob(S[row][key], stats[row], carry[j]);
            for (int d = 0; d < HD; d++) {
#pragma HLS UNROLL
                av_acc_t prev = (pos == 0) ? av_acc_t(0) : oacc[j][d];
                oacc[j][d] = prev + p * vrow[d];
            }
        }
        // the one slot that can finish a query at step t (its key sweep started N-1 steps ago): one o row written
        const int u = t - (N - 1), jf = u % (N + P), frow = jf + (u / (N + P)) * P;
        if (u >= 0 && jf < P && frow < N) {
            for (int d = 0; d < HD; d++) {
#pragma HLS UNROLL
                o[frow][h * HD + d] = act_t(oacc[jf][d]);
            }
        }
    }
}

template <int N, int D, int H, int P>
void multihead_attention(const act_buf_t qkv, act_buf_t o, qscale_t qscale) {
HEADS:
    for (int h = 0; h < H; h++) {
        attention_head<N, D, D / H, P>(qkv, o, h, qscale);
    }
}

}  // namespace ea

#endif
