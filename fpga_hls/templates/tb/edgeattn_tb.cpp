// edgeattn HLS test bench: runs the top function on every test vector and compares with the golden model.
//
// tb_data/tb_input.dat   first line "vectors in_len out_len", then one vector of raw input ints per line
// tb_data/tb_golden.dat  one vector of raw output ints per line (edgeattn/fpga_hls/golden.py)
// tb_data/csim_results.dat  written here: the top function's raw output ints, one vector per line
// Returns 0 only when every output equals the golden model bit for bit.
#include <cstdio>
#include <cstdlib>

#include "../firmware/edgeattn_top.h"

#if EA_TOP_VIT
static ea::act_t in_buf[EA_IN_CHANS][EA_IMG][EA_IMG];
static ea::act_t out_buf[EA_CLASSES];
static const int IN_LEN = EA_IN_CHANS * EA_IMG * EA_IMG;
static const int OUT_LEN = EA_CLASSES;
#define EA_RUN_TOP() vit_top(in_buf, out_buf)
#else
static ea::act_t in_buf[EA_TOKENS][EA_DIM];
static ea::act_t out_buf[EA_TOKENS][EA_DIM];
static const int IN_LEN = EA_TOKENS * EA_DIM;
static const int OUT_LEN = EA_TOKENS * EA_DIM;
#define EA_RUN_TOP() encoder_layer_top(in_buf, out_buf)
#endif

int main() {
    FILE *fin = fopen("tb_data/tb_input.dat", "r");
    FILE *fgold = fopen("tb_data/tb_golden.dat", "r");
    FILE *fout = fopen("tb_data/csim_results.dat", "w");
    if (!fin || !fgold || !fout) {
        printf("EDGEATTN_CSIM error=cannot open tb_data files\n");
        return 2;
    }
    int vectors = 0, in_len = 0, out_len = 0;
    if (fscanf(fin, "%d %d %d", &vectors, &in_len, &out_len) != 3 || in_len != IN_LEN || out_len != OUT_LEN) {
        printf("EDGEATTN_CSIM error=tb_input.dat header does not match the generated sizes\n");
        return 2;
    }
    ea::act_t *in_flat = reinterpret_cast<ea::act_t *>(in_buf);
    ea::act_t *out_flat = reinterpret_cast<ea::act_t *>(out_buf);
    long mismatches = 0;
    for (int v = 0; v < vectors; v++) {
        for (int i = 0; i < IN_LEN; i++) {
            long long raw;
            if (fscanf(fin, "%lld", &raw) != 1) {
                printf("EDGEATTN_CSIM error=tb_input.dat is short\n");
                return 2;
            }
            in_flat[i].range(EA_ACT_W - 1, 0) = raw;
        }
        EA_RUN_TOP();
        for (int i = 0; i < OUT_LEN; i++) {
            long long gold;
            if (fscanf(fgold, "%lld", &gold) != 1) {
                printf("EDGEATTN_CSIM error=tb_golden.dat is short\n");
                return 2;
            }
            long long got = ea::act_raw(out_flat[i]).to_int64();
            if (got != gold) mismatches++;
            fprintf(fout, i + 1 < OUT_LEN ? "%lld " : "%lld\n", got);
        }
    }
    fclose(fin);
    fclose(fgold);
    fclose(fout);
    printf("EDGEATTN_CSIM vectors=%d outputs=%d mismatches=%ld\n", vectors, OUT_LEN, mismatches);
    return mismatches == 0 ? 0 : 1;
}
