// edgeattn HLS test bench: runs the top function on every test vector and compares with the golden model.
//
// tb_data/tb_input.dat   first line "vectors in_len out_len", then one vector of raw input ints per line
// tb_data/tb_golden.dat  one vector of raw output ints per line (edgeattn/fpga_hls/golden.py)
// tb_data/weights.dat    the DDR weight image: first line "words lanes", then one word per line, its lanes' raw
//                        weight ints (lane 0 first); the top reads it through the wmem port
// tb_data/csim_results.dat  written here: the top function's raw output ints, one vector per line
// Returns 0 only when every output equals the golden model bit for bit; the summary line names the first
// output that does not. An optional argument N runs only the first N vectors (build_prj.tcl's cosim_vectors).
#include <cstdio>
#include <cstdlib>

#include "../firmware/edgeattn_top.h"

#if EA_TOP_VIT
static ea::act_t in_buf[EA_IN_CHANS][EA_IMG][EA_IMG];
static ea::act_t out_buf[EA_CLASSES];
static const int IN_LEN = EA_IN_CHANS * EA_IMG * EA_IMG;
static const int OUT_LEN = EA_CLASSES;
#define EA_RUN_TOP() vit_top(in_buf, out_buf, wmem)
#else
static ea::act_t in_buf[EA_TOKENS][EA_DIM];
static ea::act_t out_buf[EA_TOKENS][EA_DIM];
static const int IN_LEN = EA_TOKENS * EA_DIM;
static const int OUT_LEN = EA_TOKENS * EA_DIM;
#define EA_RUN_TOP() encoder_layer_top(in_buf, out_buf, wmem)
#endif

static ea::wword_t wmem[EA_WEIGHT_WORDS];  // the DDR the accelerator reads its weights from

// Fill wmem from tb_data/weights.dat; false (after printing why) if the file is missing or does not match.
static bool load_weights() {
    FILE *f = fopen("tb_data/weights.dat", "r");
    int words = 0, lanes = 0;
    if (!f) {
        printf("EDGEATTN_CSIM error=cannot open tb_data/weights.dat\n");
        return false;
    }
    if (fscanf(f, "%d %d", &words, &lanes) != 2 || words != EA_WEIGHT_WORDS || lanes != EA_MAC_R) {
        printf("EDGEATTN_CSIM error=weights.dat header does not match the generated sizes\n");
        fclose(f);
        return false;
    }
    for (int i = 0; i < words; i++) {
        for (int k = 0; k < lanes; k++) {
            long long raw;
            if (fscanf(f, "%lld", &raw) != 1) {
                printf("EDGEATTN_CSIM error=weights.dat is short\n");
                fclose(f);
                return false;
            }
            wmem[i].range(k * EA_W_W + EA_W_W - 1, k * EA_W_W) = raw;
        }
    }
    fclose(f);
    return true;
}

int main(int argc, char **argv) {
    long limit = -1;  // every vector
    if (argc > 1) {
        char *end = 0;
        limit = strtol(argv[1], &end, 10);
        if (*argv[1] == '\0' || *end != '\0' || limit < 1) {
            printf("EDGEATTN_CSIM error=the argument must be a positive number of vectors, got '%s'\n", argv[1]);
            return 2;
        }
    }
    if (!load_weights()) return 2;
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
    if (limit > 0 && limit < vectors) vectors = (int)limit;
    ea::act_t *in_flat = reinterpret_cast<ea::act_t *>(in_buf);
    ea::act_t *out_flat = reinterpret_cast<ea::act_t *>(out_buf);
    long mismatches = 0;
    int bad_v = -1, bad_i = -1;
    long long bad_got = 0, bad_want = 0;
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
            if (got != gold && mismatches++ == 0) {
                bad_v = v;
                bad_i = i;
                bad_got = got;
                bad_want = gold;
            }
            fprintf(fout, i + 1 < OUT_LEN ? "%lld " : "%lld\n", got);
        }
    }
    fclose(fin);
    fclose(fgold);
    fclose(fout);
    printf("EDGEATTN_CSIM vectors=%d outputs_per_vector=%d mismatches=%ld", vectors, OUT_LEN, mismatches);
    if (mismatches) printf(" first_mismatch=vector%d[%d] got=%lld want=%lld", bad_v, bad_i, bad_got, bad_want);
    printf("\n");
    return mismatches == 0 ? 0 : 1;
}
