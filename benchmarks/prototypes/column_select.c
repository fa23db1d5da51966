/* A measurement prototype, not part of the library: the coordinate-wise median of many rows by
 * a transposed, sample-bracketed selection (AVX-512 only). benchmarks/column_select_prototype.py
 * compiles it with gcc (the sorting networks come from that script, in nets.h) and times it
 * beside the library's median; docs/performance.md (2026-12-06, 06:09 UTC) gives the numbers.
 *
 * Per block of 256 columns of the row-major n x d float32 matrix X:
 *   1. transpose: tiles of 16 rows x 16 columns, transposed in registers (64 shuffles), are
 *      stored column-major into colbuf (each column's n values contiguous); the rows two tiles
 *      ahead are prefetched (next block's rows at the block's end);
 *   2. rounds, 16 columns at a time in lockstep: a sample of 32 values per column (gathered at
 *      evenly spread positions of its current candidates; the first round loads 32 rows of
 *      X) is sorted lane-wise by a bitonic
 *      network; the bracket [plo, phi] is the sample's values SPREAD ranks either side of the
 *      wanted rank's expected place; one pass over the column's candidates counts the values
 *      <= plo, == plo, == phi and compresses (vcompressps) those strictly inside to the next
 *      candidate buffer. Wanted ranks inside: next round; on a tie band: done; astride a
 *      tie band's end: one pass for the nearest value beyond; else a second pass keeps the
 *      interval holding both ranks (a column is sorted whole only if MAX_ROUNDS run out);
 *      with set_fused(1) the first round runs inside the transposition (transpose_classify);
 *   3. final: when every column has at most 64 candidates, they are sorted lane-wise by a
 *      64-wire bitonic network and the ranks picked.
 * Values must be finite (the library's kernels map missing values to +inf first; not here).
 * The median of an even count is 0.5 * (a + b) in double, as the library computes it.
 */
#include <immintrin.h>
#include <math.h>
#include <string.h>

#include "nets.h" /* vsort32, vsort64: lane-wise bitonic networks on arrays of __m512 */

#define BL 256
#define SAMP 32
#define FIN 64
#define MAX_ROUNDS 12

#define SPREAD 6 /* the bracket: the sample's values this many ranks either side */

static int fused = 0;
void set_fused(int v) { fused = v; }
static long n_second = 0, n_rounds = 0, n_visits = 0, n_fallback = 0;
static unsigned long long cycles[3]; /* transpose, rounds, final (TSC ticks) */

/* counters since the last call: second passes, rounds (per 16 columns), values visited,
   columns finished by the scalar fallback, and the TSC ticks of the three phases */
void take_stats(long *counts, unsigned long long *ticks) {
    counts[0] = n_second; counts[1] = n_rounds; counts[2] = n_visits; counts[3] = n_fallback;
    for (int i = 0; i < 3; i++) { ticks[i] = cycles[i]; cycles[i] = 0; }
    n_second = n_rounds = n_visits = n_fallback = 0;
}

static inline void transpose16(__m512 r[16]) {
    __m512 a[16], b[16];
    for (int i = 0; i < 8; i++) {
        a[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        a[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    for (int i = 0; i < 4; i++) {
        __m512d p = _mm512_castps_pd(a[4 * i]), q = _mm512_castps_pd(a[4 * i + 2]);
        __m512d s = _mm512_castps_pd(a[4 * i + 1]), t = _mm512_castps_pd(a[4 * i + 3]);
        b[4 * i + 0] = _mm512_castpd_ps(_mm512_unpacklo_pd(p, q));
        b[4 * i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(p, q));
        b[4 * i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(s, t));
        b[4 * i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(s, t));
    }
    for (int i = 0; i < 2; i++)
        for (int q = 0; q < 4; q++) {
            __m512 x = b[8 * i + q], y = b[8 * i + 4 + q];
            a[8 * i + q] = _mm512_shuffle_f32x4(x, y, 0x88);
            a[8 * i + 4 + q] = _mm512_shuffle_f32x4(x, y, 0xdd);
        }
    for (int q = 0; q < 8; q++) {
        r[q] = _mm512_shuffle_f32x4(a[q], a[8 + q], 0x88);
        r[8 + q] = _mm512_shuffle_f32x4(a[q], a[8 + q], 0xdd);
    }
}

static void insertion_sort(float *a, long m) {
    for (long i = 1; i < m; i++) {
        float v = a[i];
        long j = i - 1;
        while (j >= 0 && a[j] > v) { a[j + 1] = a[j]; j--; }
        a[j + 1] = v;
    }
}

/* the sorted sample's ranks il <= ih bracketing rank k of m candidates: its expected place in
   the sample (clamped to the sample), reach ranks either side */
static inline void bracket(long k, long m, int reach, int *il, int *ih) {
    int at = (int)((k * SAMP + m / 2) / m);
    at = at > SAMP - 1 ? SAMP - 1 : at;
    *il = at - reach < 0 ? 0 : at - reach;
    *ih = at + reach > SAMP - 1 ? SAMP - 1 : at + reach;
}

static inline __mmask16 head(int left) {
    return left >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << left) - 1);
}

typedef struct { int below, eql, eqh, mid; } Counts;

/* values of x (lanes t) against [plo, phi]: counted, those strictly inside appended to o */
static inline void classify16(__m512 x, __mmask16 t, __m512 vlo, __m512 vhi, float *o, Counts *c) {
    __mmask16 le = _mm512_mask_cmp_ps_mask(t, x, vlo, _CMP_LE_OQ);
    __mmask16 ge = _mm512_mask_cmp_ps_mask(t, x, vhi, _CMP_GE_OQ);
    __mmask16 inside = t & ~(le | ge);
    c->below += _mm_popcnt_u32(le);
    c->eql += _mm_popcnt_u32(_mm512_mask_cmp_ps_mask(t, x, vlo, _CMP_EQ_OQ));
    c->eqh += _mm_popcnt_u32(_mm512_mask_cmp_ps_mask(t, x, vhi, _CMP_EQ_OQ));
    _mm512_mask_compressstoreu_ps(o + c->mid, inside, x);
    c->mid += _mm_popcnt_u32(inside);
}

/* prefetch the block's rows two tiles after row r (the next block's first rows at the end);
   forced inline: gcc -O2 left it a call, and the transposition took 1.3 instead of 0.8 ticks
   a value at 200 rows */
static inline __attribute__((always_inline)) void prefetch_ahead(const float *X, long n, long d, long j0, long r) {
    long rp = r + 32, jp = j0;
    if (rp >= n) { rp -= n; jp = j0 + BL; }
    if (jp >= d) return;
    for (int rr = 0; rr < 16 && rp + rr < n; rr++) {
        const char *p = (const char *)(X + (rp + rr) * d + jp);
        for (int l = 0; l < 16; l++) _mm_prefetch(p + 64 * l, _MM_HINT_T0);
    }
}

static void transpose_block(const float *X, long n, long d, long j0, long w, float *colbuf, long np) {
    for (long r = 0; r < n; r += 16) {
        int rows = n - r < 16 ? (int)(n - r) : 16;
        prefetch_ahead(X, n, d, j0, r);
        for (long c = 0; c < w; c += 16) {
            if (rows == 16 && c + 16 <= w) {
                __m512 v[16];
                for (int rr = 0; rr < 16; rr++) v[rr] = _mm512_loadu_ps(X + (r + rr) * d + j0 + c);
                transpose16(v);
                for (int q = 0; q < 16; q++) _mm512_storeu_ps(colbuf + (c + q) * np + r, v[q]);
            } else {
                for (int rr = 0; rr < rows; rr++)
                    for (long q = 0; q < 16 && c + q < w; q++)
                        colbuf[(c + q) * np + r + rr] = X[(r + rr) * d + j0 + c + q];
            }
        }
    }
}

/* transpose_block with the first round done on the way: each transposed vector (16 rows of
   one column) is also counted against its column's bracket and its inside values appended to
   the column's candidates; partial tiles go through masked loads and stores */
static void transpose_classify(const float *X, long n, long d, long j0, long w, float *colbuf,
                               long np, const float *plo, const float *phi, float *cand1,
                               Counts *counts) {
    for (long r = 0; r < n; r += 16) {
        int rows = n - r < 16 ? (int)(n - r) : 16;
        prefetch_ahead(X, n, d, j0, r);
        __mmask16 trow = head(rows);
        for (long c = 0; c < w; c += 16) {
            int cols = w - c < 16 ? (int)(w - c) : 16;
            __mmask16 tcol = head(cols);
            __m512 v[16];
            for (int rr = 0; rr < 16; rr++)
                v[rr] = rr < rows ? _mm512_maskz_loadu_ps(tcol, X + (r + rr) * d + j0 + c)
                                  : _mm512_setzero_ps();
            transpose16(v);
            for (int q = 0; q < cols; q++) {
                long col = c + q;
                _mm512_mask_storeu_ps(colbuf + col * np + r, trow, v[q]);
                classify16(v[q], trow, _mm512_set1_ps(plo[col]), _mm512_set1_ps(phi[col]),
                           cand1 + col * np, &counts[col]);
            }
        }
    }
}

/* the 32 sample values of each lane's candidates, lane-wise sorted, into sm[SAMP][16] */
static void sorted_sample(float *const src[16], const int cnt[16], float sm[SAMP][16]) {
    long base[16], step[16];
    for (int l = 0; l < 16; l++) {
        long m = cnt[l] > 0 ? cnt[l] : 1;
        base[l] = (long)src[l];
        step[l] = (m << 32) / SAMP; /* 32.32 fixed point */
    }
    __m512i b0 = _mm512_loadu_si512(base), b1 = _mm512_loadu_si512(base + 8);
    __m512i s0 = _mm512_loadu_si512(step), s1 = _mm512_loadu_si512(step + 8);
    __m512i a0 = _mm512_srli_epi64(s0, 1), a1 = _mm512_srli_epi64(s1, 1);
    __m512 s[SAMP];
    for (int i = 0; i < SAMP; i++) {
        __m512i p0 = _mm512_add_epi64(b0, _mm512_slli_epi64(_mm512_srli_epi64(a0, 32), 2));
        __m512i p1 = _mm512_add_epi64(b1, _mm512_slli_epi64(_mm512_srli_epi64(a1, 32), 2));
        __m256 g0 = _mm512_i64gather_ps(p0, (void *)0, 1);
        __m256 g1 = _mm512_i64gather_ps(p1, (void *)0, 1);
        s[i] = _mm512_insertf32x8(_mm512_castps256_ps512(g0), g1, 1);
        a0 = _mm512_add_epi64(a0, s0);
        a1 = _mm512_add_epi64(a1, s1);
    }
    vsort32(s);
    for (int i = 0; i < SAMP; i++) _mm512_storeu_ps(sm[i], s[i]);
}

/* the first round's sample: every lane holds all n values, so the sample positions are the
   same rows of X for the 16 columns: one (masked) load per sample row, no gather */
static void sorted_first_sample(const float *X, long n, long d, long col0, int lanes,
                                float sm[SAMP][16]) {
    __m512 s[SAMP];
    __mmask16 t = head(lanes);
    for (int i = 0; i < SAMP; i++) {
        long row = ((long)i * n + n / 2) / SAMP;
        s[i] = _mm512_maskz_loadu_ps(t, X + row * d + col0);
    }
    vsort32(s);
    for (int i = 0; i < SAMP; i++) _mm512_storeu_ps(sm[i], s[i]);
}

/* One round for one lane: bracket, count, compress. Returns 1 when the ranks were resolved
   on a tie band (values in *a, *b), else 0 with (*k, *cnt, *src) updated. */
static int decide(const float *col, int m, int *k, int two, float plo, float phi, float *o,
                  Counts c, int *cnt, float **src, float *a, float *b);

static int narrow(const float *col, int m, int *k, int two, float plo, float phi, float *o,
                  int *cnt, float **src, float *a, float *b) {
    __m512 vlo = _mm512_set1_ps(plo), vhi = _mm512_set1_ps(phi);
    Counts c = {0, 0, 0, 0};
    for (int i = 0; i < m; i += 16) {
        __mmask16 t = head(m - i);
        classify16(_mm512_maskz_loadu_ps(t, col + i), t, vlo, vhi, o, &c);
    }
    n_visits += m;
    return decide(col, m, k, two, plo, phi, o, c, cnt, src, a, b);
}

/* the ranks k, k + two against the counts of a bracket: narrowed (0) or answered (1) */
static int decide(const float *col, int m, int *k, int two, float plo, float phi, float *o,
                  Counts c, int *cnt, float **src, float *a, float *b) {
    __m512 vlo = _mm512_set1_ps(plo), vhi = _mm512_set1_ps(phi);
    int below = c.below, eql = c.eql, eqh = c.eqh, mid = c.mid;
    /* ranks [0, lt) < plo; [lt, below) == plo; [below, top) strictly inside; then == phi */
    int lt = below - eql, top = below + mid, k1 = *k, k2 = *k + two;
    if (plo == phi) eqh = 0;
    if (k1 >= below && k2 < top) { *k = k1 - below; *cnt = mid; *src = o; return 0; }
    int rank[2] = {k1, k2};
    float value[2];
    int banded = 1;
    for (int q = 0; q < 2; q++) {
        if (rank[q] >= lt && rank[q] < below) value[q] = plo;
        else if (rank[q] >= top && rank[q] < top + eqh) value[q] = phi;
        else banded = 0;
    }
    if (banded) { *a = value[0]; *b = value[1]; return 1; }
    /* two middle ranks astride a tie band's end (e.g. the last copy of an attack value and the
       next value up): the band gives one, one pass for the nearest value beyond gives the other */
    /* the upper tie band: phi's copies, or plo's when plo == phi */
    int upper_start = plo == phi ? lt : top, upper_ties = plo == phi ? eql : eqh;
    int up_edge = two && k1 >= lt && k1 == below - 1 && k2 == below;          /* plo band, above */
    int down_edge = two && k2 == upper_start && k1 == upper_start - 1 && upper_ties > 0;
    if (up_edge || down_edge) {
        float edge = up_edge ? plo : phi;
        __m512 ve = _mm512_set1_ps(edge);
        __m512 best = _mm512_set1_ps(up_edge ? INFINITY : -INFINITY);
        for (int j = 0; j < m; j += 16) {
            __mmask16 t = head(m - j);
            __m512 x = _mm512_maskz_loadu_ps(t, col + j);
            if (up_edge) best = _mm512_mask_min_ps(best, _mm512_mask_cmp_ps_mask(t, x, ve, _CMP_GT_OQ), best, x);
            else best = _mm512_mask_max_ps(best, _mm512_mask_cmp_ps_mask(t, x, ve, _CMP_LT_OQ), best, x);
        }
        n_visits += m;
        n_second++;
        float other = up_edge ? _mm512_reduce_min_ps(best) : _mm512_reduce_max_ps(best);
        *a = up_edge ? edge : other;
        *b = up_edge ? other : edge;
        return 1;
    }
    /* a second pass: the closed or open interval that holds both ranks */
    n_second++;
    int low = k1 < lt ? 0 : (k1 < below ? 1 : 2);                                    /* none, >=, > plo */
    int up = k2 >= upper_start + upper_ties ? 0 : (k2 >= upper_start ? 1 : 2);       /* none, <=, < phi */
    int q = 0;
    for (int j = 0; j < m; j += 16) {
        __mmask16 t = head(m - j);
        __m512 x = _mm512_maskz_loadu_ps(t, col + j);
        __mmask16 keep = t;
        if (low == 1) keep &= _mm512_cmp_ps_mask(x, vlo, _CMP_GE_OQ);
        if (low == 2) keep &= _mm512_cmp_ps_mask(x, vlo, _CMP_GT_OQ);
        if (up == 1) keep &= _mm512_cmp_ps_mask(x, vhi, _CMP_LE_OQ);
        if (up == 2) keep &= _mm512_cmp_ps_mask(x, vhi, _CMP_LT_OQ);
        _mm512_mask_compressstoreu_ps(o + q, keep, x);
        q += _mm_popcnt_u32(keep);
    }
    n_visits += m;
    *k = k1 - (low == 0 ? 0 : (low == 1 ? lt : below));
    *cnt = q;
    *src = o;
    return 0;
}

/* The median of every column of X (n x d, row-major, finite float32) into out.
   colbuf and cand1: 256 * np floats each, cand: 32 * np floats, scratch: np floats (np = n
   rounded up to 16); cand1 holds the first round's candidates when that round is fused into
   the transposition (set_fused(1)). */
void median_columns(const float *X, long n, long d, float *out, float *colbuf, float *cand,
                    float *scratch, float *cand1) {
    long np = (n + 15) & ~15L;
    float *buffers[2] = {cand, cand + 16 * np};
    int two = (int)(1 - n % 2);
    for (long j0 = 0; j0 < d; j0 += BL) {
        long w = d - j0 < BL ? d - j0 : BL;
        unsigned long long t0 = __rdtsc();
        float plo[BL], phi[BL];
        Counts counts[BL];
        if (fused) {
            int il, ih;
            bracket((n - 1) / 2, n, SPREAD, &il, &ih);
            for (long c0 = 0; c0 < w; c0 += 16) {
                float sm[SAMP][16];
                int lanes = w - c0 < 16 ? (int)(w - c0) : 16;
                sorted_first_sample(X, n, d, j0 + c0, lanes, sm);
                for (int l = 0; l < lanes; l++) { plo[c0 + l] = sm[il][l]; phi[c0 + l] = sm[ih][l]; }
            }
            memset(counts, 0, sizeof(counts));
            transpose_classify(X, n, d, j0, w, colbuf, np, plo, phi, cand1, counts);
            n_visits += n * w;
            n_rounds += (w + 15) / 16;
        } else {
            transpose_block(X, n, d, j0, w, colbuf, np);
        }
        cycles[0] += __rdtsc() - t0;
        for (long c0 = 0; c0 < w; c0 += 16) {
            unsigned long long t1 = __rdtsc();
            int lanes = w - c0 < 16 ? (int)(w - c0) : 16;
            int cnt[16], k[16], stalled = 0, done = lanes < 16 ? (0xffff << lanes) & 0xffff : 0;
            float *src[16], lo[16], hi[16];
            for (int l = 0; l < 16; l++) {
                cnt[l] = l < lanes ? (int)n : 0;
                k[l] = (int)((n - 1) / 2);
                src[l] = colbuf + (c0 + (l < lanes ? l : 0)) * np;
            }
            int first = 0;
            if (fused) {
                first = 1;
                for (int l = 0; l < lanes; l++) {
                    long col = c0 + l;
                    if (decide(colbuf + col * np, (int)n, &k[l], two, plo[col], phi[col],
                               cand1 + col * np, counts[col], &cnt[l], &src[l], &lo[l], &hi[l]))
                        done |= 1 << l;
                }
            }
            for (int round = first, cur = first; round < MAX_ROUNDS; round++, cur ^= 1) {
                int largest = 0;
                for (int l = 0; l < 16; l++)
                    if (!(done >> l & 1) && cnt[l] > largest) largest = cnt[l];
                if (largest <= FIN) break;
                n_rounds++;
                float sm[SAMP][16];
                if (round == 0) sorted_first_sample(X, n, d, j0 + c0, lanes, sm);
                else sorted_sample(src, cnt, sm);
                for (int l = 0; l < 16; l++) {
                    int m = cnt[l];
                    if ((done >> l & 1) || m <= FIN) continue;
                    /* a round that did not shrink the candidates (a tie band inside the
                       bracket) is followed by one pivot, a candidate value: < p, == p, > p
                       then always drops that value's copies or resolves the ranks */
                    int il, ih;
                    bracket(k[l], m, stalled >> l & 1 ? 0 : SPREAD, &il, &ih);
                    if (narrow(src[l], m, &k[l], two, sm[il][l], sm[ih][l], buffers[cur] + l * np,
                               &cnt[l], &src[l], &lo[l], &hi[l]))
                        done |= 1 << l;
                    stalled = (stalled & ~(1 << l)) | (cnt[l] >= m ? 1 << l : 0);
                }
            }
            unsigned long long t2 = __rdtsc();
            cycles[1] += t2 - t1;
            __m512 fin[FIN];
            float fm[FIN][16];
            for (int l = 0; l < 16; l++) {
                int use = !(done >> l & 1) && cnt[l] <= FIN;
                for (int i = 0; i < FIN; i++) fm[i][l] = (use && i < cnt[l]) ? src[l][i] : INFINITY;
            }
            for (int i = 0; i < FIN; i++) fin[i] = _mm512_loadu_ps(fm[i]);
            vsort64(fin);
            for (int i = 0; i < FIN; i++) _mm512_storeu_ps(fm[i], fin[i]);
            for (int l = 0; l < lanes; l++) {
                float a, b;
                if (done >> l & 1) { a = lo[l]; b = hi[l]; }
                else if (cnt[l] <= FIN) { a = fm[k[l]][l]; b = fm[k[l] + two][l]; }
                else { /* rounds exhausted: sort the whole column */
                    n_fallback++;
                    memcpy(scratch, colbuf + (c0 + l) * np, n * sizeof(float));
                    insertion_sort(scratch, n);
                    a = scratch[(n - 1) / 2]; b = scratch[n / 2];
                }
                out[j0 + c0 + l] = two ? (float)(0.5 * ((double)a + (double)b)) : a;
            }
            cycles[2] += __rdtsc() - t2;
        }
    }
}
