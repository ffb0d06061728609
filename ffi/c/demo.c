/*
 * A C program on the elasticface C ABI: margins and a margin loss with its gradients, an embedding
 * conformance check, a float and an int8 gallery, a face aligned from its landmarks, and the status codes of
 * bad input.
 *
 * It prints one line per result: floats as their IEEE-754 bit patterns (hex), so that a test can compare
 * them exactly with what the Rust API computes (tests/tests/ffi_c.rs). Build and run from the repository
 * root:
 *
 *   cargo build --release -p elasticface-ffi
 *   cc -std=c11 -ffp-contract=off -Wall -Wextra -pedantic -Iffi/include ffi/c/demo.c \
 *      target/release/libelasticface_ffi.a -lm -lpthread -ldl -o target/ef_demo
 *   target/ef_demo
 *
 * (-ffp-contract=off: the inputs computed here must round as in Rust, without fused multiply-adds.)
 * Exit status: 0 when every call that should succeed did, 1 otherwise.
 */
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "elasticface.h"

/* Stops the program when a call that must succeed fails. */
#define MUST(call)                                                                                   \
    do {                                                                                             \
        EfStatus status_ = (call);                                                                   \
        if (status_ != EF_STATUS_OK) {                                                               \
            fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #call, ef_status_str(status_));    \
            return 1;                                                                                \
        }                                                                                            \
    } while (0)

enum { DIM = 16, PROBES = 5, CAPACITY = 4, BATCH = 4, HEAD_DIM = 8, CLASSES = 6 };

static uint32_t bits(float x) {
    uint32_t u;
    memcpy(&u, &x, sizeof u);
    return u;
}

static void put_f32(const char *key, int i, float x) { printf("%s[%d] %08x\n", key, i, (unsigned)bits(x)); }
static void put_int(const char *key, int i, long long x) { printf("%s[%d] %lld\n", key, i, x); }
static void put_status(const char *what, EfStatus s) { printf("status %s %d\n", what, (int)s); }
static void put_f64(const char *key, int i, double x) {
    uint64_t u;
    memcpy(&u, &x, sizeof u);
    printf("%s[%d] %016llx\n", key, i, (unsigned long long)u);
}

/* A deterministic value in [-1, 1]: exact float arithmetic, the same bits in C and in Rust. */
static float value(int k) { return (float)((k * 37 + 11) % 101) / 50.0f - 1.0f; }

/* Gallery blocks: ef_gallery_size() bytes, aligned to EF_GALLERY_ALIGN (uint32_t gives 4). */
static uint32_t gallery_f32_mem[1024];
static uint32_t gallery_i8_mem[256];

static int margins(void) {
    EfMarginConfig cfg;
    float drawn[8];
    MUST(ef_margin_parse("elastic-arc-plus", &cfg));
    MUST(ef_margin_draw(&cfg, 20261128u, 5u, drawn, 8));
    for (int i = 0; i < 8; i++) put_f32("margin", i, drawn[i]);

    /* One forward and backward pass of ElasticFace-Arc+ on a batch of 4. */
    float emb[BATCH * HEAD_DIM], w[HEAD_DIM * CLASSES], m[BATCH], d_emb[BATCH * HEAD_DIM], d_w[HEAD_DIM * CLASSES];
    float arena[256], loss;
    uint32_t order[BATCH];
    const uint32_t labels[BATCH] = {0, 5, 2, 3};
    size_t arena_len;
    for (int i = 0; i < BATCH * HEAD_DIM; i++) emb[i] = value(i);
    for (int i = 0; i < HEAD_DIM * CLASSES; i++) w[i] = value(100 + i);
    MUST(ef_margin_draw(&cfg, 42u, 0u, m, BATCH));
    MUST(ef_margin_arena_len(BATCH, HEAD_DIM, CLASSES, &arena_len));
    if (arena_len > sizeof arena / sizeof arena[0]) return 1;
    MUST(ef_margin_loss(&cfg, BATCH, HEAD_DIM, CLASSES, emb, w, labels, m, arena, arena_len, order, &loss, d_emb, d_w));
    put_f32("loss", 0, loss);
    for (int i = 0; i < BATCH * HEAD_DIM; i++) put_f32("d_emb", i, d_emb[i]);
    for (int i = 0; i < HEAD_DIM * CLASSES; i++) put_f32("d_w", i, d_w[i]);
    return 0;
}

static int conformance(float host[PROBES][DIM]) {
    const EfConformanceConfig cfg = {
        .max_disagreements = 0, .threshold = 0.3f, .min_cosine = 0.999f, .max_abs_diff = 0.01f, .diff_space = EF_DIFF_RAW};
    EfConformanceSummary summary;
    int8_t q[PROBES][DIM];
    float device[PROBES][DIM];
    MUST(ef_conformance_summary_init(&summary));
    for (int p = 0; p < PROBES; p++) {
        /* Even probes: the device emits int8 with a scale; odd ones: floats with a small error. */
        float scale = 0.0f;
        EfEmbedding dev, ref, tpl;
        if (p % 2 == 0) {
            MUST(ef_quantize_i8(host[p], DIM, q[p], &scale));
            dev = (EfEmbedding){.data = q[p], .len = DIM, .element = EF_ELEMENT_I8, .scale = scale};
        } else {
            for (int k = 0; k < DIM; k++) device[p][k] = host[p][k] + 0.001f * value(7 * k + p);
            dev = (EfEmbedding){.data = device[p], .len = DIM, .element = EF_ELEMENT_F32, .scale = 0.0f};
        }
        ref = (EfEmbedding){.data = host[p], .len = DIM, .element = EF_ELEMENT_F32, .scale = 0.0f};
        /* Probes 0 and 3 are verified against themselves (mates), the others against the next probe. */
        tpl = (EfEmbedding){.data = host[p % 3 == 0 ? p : (p + 1) % PROBES], .len = DIM, .element = EF_ELEMENT_F32};
        EfProbeReport r;
        MUST(ef_conformance_check(&cfg, &summary, &dev, &ref, p == 4 ? NULL : &tpl, &r));
        put_f32("probe.cosine", p, r.cosine);
        put_f32("probe.max_abs_diff", p, r.max_abs_diff);
        put_f32("probe.device_cosine", p, r.device_cosine);
        put_f32("probe.host_cosine", p, r.host_cosine);
        put_int("probe.flags", p,
                r.within_tolerance | r.has_decision << 1 | r.device_accepts << 2 | r.host_accepts << 3 | r.agrees << 4);
    }
    /* A device output with a NaN: rejected, recorded, and the run fails. */
    float broken[DIM];
    memcpy(broken, host[0], sizeof broken);
    broken[3] = 0.0f / 0.0f;
    const EfEmbedding dev = {.data = broken, .len = DIM, .element = EF_ELEMENT_F32};
    const EfEmbedding ref = {.data = host[0], .len = DIM, .element = EF_ELEMENT_F32};
    put_status("conformance_nan", ef_conformance_check(&cfg, &summary, &dev, &ref, NULL, NULL));
    bool passed;
    MUST(ef_conformance_passed(&cfg, &summary, &passed));
    put_int("summary.probes", 0, (long long)summary.probes);
    put_int("summary.rejected", 0, (long long)summary.rejected);
    put_int("summary.out_of_tolerance", 0, (long long)summary.out_of_tolerance);
    put_int("summary.decisions", 0, (long long)summary.decisions);
    put_int("summary.disagreements", 0, (long long)summary.disagreements);
    put_f32("summary.worst_cosine", 0, summary.worst_cosine);
    put_f32("summary.worst_max_abs_diff", 0, summary.worst_max_abs_diff);
    put_int("summary.passed", 0, passed);
    return 0;
}

static void print_matches(const char *key, const EfMatch *m, size_t n) {
    put_int(key, -1, (long long)n);
    for (size_t i = 0; i < n; i++) {
        put_int(key, (int)i, m[i].id);
        put_f32(key, (int)i, m[i].cosine);
    }
}

static int galleries(float host[PROBES][DIM]) {
    size_t bytes, n;
    EfGallery *g;
    EfMatch top[3];
    EfVerification v;
    MUST(ef_gallery_size(EF_ELEMENT_F32, DIM, CAPACITY, &bytes));
    put_int("gallery_f32.bytes", 0, (long long)bytes);
    MUST(ef_gallery_init(gallery_f32_mem, sizeof gallery_f32_mem, EF_ELEMENT_F32, DIM, CAPACITY, &g));
    for (int p = 0; p < CAPACITY; p++) MUST(ef_gallery_enroll_f32(g, 100 + p, host[p], DIM));
    put_status("enroll_full", ef_gallery_enroll_f32(g, 200, host[4], DIM));
    put_status("enroll_duplicate", ef_gallery_enroll_f32(g, 100, host[4], DIM));
    float probe[DIM];
    for (int k = 0; k < DIM; k++) probe[k] = host[1][k] + 0.25f * value(3 * k);
    MUST(ef_gallery_identify_f32(g, probe, DIM, -1.0f, top, 3, &n));
    print_matches("identify_f32", top, n);
    MUST(ef_gallery_verify_f32(g, 101, probe, DIM, 0.9f, &v));
    put_f32("verify_f32.cosine", 0, v.cosine);
    put_int("verify_f32.accepted", 0, v.accepted);
    MUST(ef_gallery_remove(g, 100));
    MUST(ef_gallery_update_f32(g, 102, host[4], DIM));
    MUST(ef_gallery_enroll_f32(g, 200, probe, DIM));
    MUST(ef_gallery_identify_f32(g, probe, DIM, 0.0f, top, 2, &n));
    print_matches("identify_f32_after", top, n);
    put_status("verify_removed", ef_gallery_verify_f32(g, 100, probe, DIM, 0.5f, &v));

    /* int8: templates and probes quantised as a device's int8 network would emit them. */
    int8_t q[PROBES][DIM], qp[DIM];
    float scale;
    MUST(ef_gallery_size(EF_ELEMENT_I8, DIM, CAPACITY, &bytes));
    put_int("gallery_i8.bytes", 0, (long long)bytes);
    MUST(ef_gallery_init(gallery_i8_mem, sizeof gallery_i8_mem, EF_ELEMENT_I8, DIM, CAPACITY, &g));
    for (int p = 0; p < CAPACITY; p++) {
        MUST(ef_quantize_i8(host[p], DIM, q[p], &scale));
        MUST(ef_gallery_enroll_i8(g, 100 + p, q[p], DIM));
    }
    MUST(ef_quantize_i8(probe, DIM, qp, &scale));
    MUST(ef_gallery_identify_i8(g, qp, DIM, -1.0f, top, 3, &n));
    print_matches("identify_i8", top, n);
    MUST(ef_gallery_verify_i8(g, 101, qp, DIM, 0.9f, &v));
    put_f32("verify_i8.cosine", 0, v.cosine);
    put_int("verify_i8.accepted", 0, v.accepted);
    put_status("wrong_element", ef_gallery_enroll_f32(g, 300, host[4], DIM));
    return 0;
}

/* A 24 x 20 photo (RGB) and its face aligned into a 12 x 12 crop from five landmarks. */
enum { PHOTO_H = 20, PHOTO_W = 24, CROP = 12 };

static int alignment(void) {
    static uint8_t photo[PHOTO_H * PHOTO_W * 3], crop[CROP * CROP * 3];
    for (int r = 0; r < PHOTO_H; r++)
        for (int c = 0; c < PHOTO_W; c++)
            for (int k = 0; k < 3; k++) photo[(r * PHOTO_W + c) * 3 + k] = (uint8_t)((r * 11 + c * 5 + k * 40) % 256);
    const float landmarks[10] = {6.5f, 8.25f, 13.0f, 7.5f, 10.0f, 11.75f, 7.25f, 15.5f, 12.75f, 15.0f};
    double m[6];
    MUST(ef_align_face(photo, PHOTO_H, PHOTO_W, landmarks, crop, CROP, CROP, m));
    for (int i = 0; i < 6; i++) put_f64("align.matrix", i, m[i]);
    for (int i = 0; i < CROP * CROP * 3; i++) put_int("align.pixel", i, crop[i]);
    float same[10] = {5.0f, 5.0f, 5.0f, 5.0f, 5.0f, 5.0f, 5.0f, 5.0f, 5.0f, 5.0f}, nan[10];
    memcpy(nan, landmarks, sizeof nan);
    nan[7] = 0.0f / 0.0f;
    put_status("align_coincide", ef_align_face(photo, PHOTO_H, PHOTO_W, same, crop, CROP, CROP, m));
    put_status("align_nan", ef_align_face(photo, PHOTO_H, PHOTO_W, nan, crop, CROP, CROP, m));
    put_status("align_null", ef_align_face(photo, PHOTO_H, PHOTO_W, NULL, crop, CROP, CROP, m));
    put_status("align_empty", ef_align_face(photo, 0, PHOTO_W, landmarks, crop, CROP, CROP, m));
    put_status("align_huge", ef_align_face(photo, (size_t)-1, 2, landmarks, crop, CROP, CROP, m));
    put_status("align_overlap", ef_align_face(photo, PHOTO_H, PHOTO_W, landmarks, photo, CROP, CROP, m));
    return 0;
}

static void bad_input(float host[PROBES][DIM]) {
    float c, nan_probe[DIM], zeros[DIM] = {0};
    size_t n;
    EfMatch top[1];
    EfVerification v;
    EfGallery *g;
    memcpy(nan_probe, host[0], sizeof nan_probe);
    nan_probe[5] = 1.0f / 0.0f;
    put_status("cosine_ok", ef_cosine_f32(host[0], host[1], DIM, &c));
    put_status("cosine_nan", ef_cosine_f32(nan_probe, host[1], DIM, &c));
    put_status("cosine_zero", ef_cosine_f32(zeros, host[1], DIM, &c));
    put_status("cosine_null", ef_cosine_f32(NULL, host[1], DIM, &c));
    put_status("cosine_null_out", ef_cosine_f32(host[0], host[1], DIM, NULL));
    /* The f32 gallery again, re-initialised: empty. */
    put_status("init", ef_gallery_init(gallery_f32_mem, sizeof gallery_f32_mem, EF_ELEMENT_F32, DIM, CAPACITY, &g));
    put_status("init_small", ef_gallery_init(gallery_f32_mem, 16, EF_ELEMENT_F32, DIM, CAPACITY, &g));
    put_status("init_dim0", ef_gallery_init(gallery_f32_mem, sizeof gallery_f32_mem, EF_ELEMENT_F32, 0, CAPACITY, &g));
    put_status("enroll_nan", ef_gallery_enroll_f32(g, 1, nan_probe, DIM));
    put_status("enroll_zero", ef_gallery_enroll_f32(g, 1, zeros, DIM));
    put_status("enroll_dim", ef_gallery_enroll_f32(g, 1, host[0], DIM - 1));
    put_status("identify_threshold", ef_gallery_identify_f32(g, host[0], DIM, 1.5f, top, 1, &n));
    put_status("identify_nan_threshold", ef_gallery_identify_f32(g, host[0], DIM, 0.0f / 0.0f, top, 1, &n));
    put_status("identify_empty", ef_gallery_identify_f32(g, host[0], DIM, 0.5f, top, 1, &n));
    put_int("identify_empty.count", 0, (long long)n);
    put_status("verify_unknown", ef_gallery_verify_f32(g, 7, host[0], DIM, 0.5f, &v));
    put_status("verify_null_out", ef_gallery_verify_f32(g, 7, host[0], DIM, 0.5f, NULL));
    static uint32_t not_a_gallery[64];
    put_status("bad_handle", ef_gallery_remove((EfGallery *)not_a_gallery, 1));
    put_status("null_handle", ef_gallery_remove(NULL, 1));
    EfMarginConfig cfg;
    put_status("margin_unknown", ef_margin_parse("sphereface", &cfg));
    put_int("status_str_known", 0, strcmp(ef_status_str(EF_STATUS_FULL), "the gallery is full") == 0);
    put_int("status_str_unknown", 0, strcmp(ef_status_str(-7), "unknown status") == 0);
}

int main(void) {
    if (ef_abi_version() != EF_ABI_VERSION) {
        fprintf(stderr, "library ABI %u, header ABI %u\n", (unsigned)ef_abi_version(), (unsigned)EF_ABI_VERSION);
        return 1;
    }
    float host[PROBES][DIM];
    for (int p = 0; p < PROBES; p++)
        for (int k = 0; k < DIM; k++) host[p][k] = value(p * DIM + k + 3);
    if (margins() || conformance(host) || galleries(host) || alignment()) return 1;
    bad_input(host);
    puts("done");
    return 0;
}
