/*
 * The extent loop of one segment, compiled: converter/erofs/zwriter.py compress_segment for
 * one-block LZ4/LZ4HC/LZMA pclusters without an inline tail, with zcodec.py
 * DestSizeCompressor.compress's offers (LZ4) or LzmaCompressor's one call per extent (MicroLZMA),
 * byte for byte the same result (tests/erofs/test_zloop.py compares the two).
 *
 * Why: through ctypes each liblz4 call releases and retakes the GIL; one call per extent (about
 * 7 KiB of input for LZ4) made the compressing threads wait for the GIL more than they
 * compressed. Called once per segment instead, the loop runs without it. It calls liblz4 through
 * the function pointers the caller passes (the libraries Python already loaded), so it needs no
 * headers and links nothing. scripts/build_native.py compiles it; without the build (or with
 * EROFS_CONVERTER_NATIVE=0) the Python loop runs.
 */
#include <stddef.h>
#include <string.h>

typedef int (*destsize_fn)(const char *src, char *dst, int *src_size, int dst_size);
typedef void (*hc_reset_fn)(void *state, int level);
typedef int (*hc_destsize_fn)(void *state, const char *src, char *dst, int *src_size, int dst_size);
typedef int (*microlzma_encoder_fn)(void *strm, const void *options);
typedef int (*lzma_code_fn)(void *strm, int action);

/* The head of liblzma's lzma_stream (lzma/base.h), the fields the loop sets and reads. */
struct lzma_stream_head {
    const char *next_in;
    size_t avail_in;
    unsigned long long total_in;
    char *next_out;
    size_t avail_out;
    unsigned long long total_out;
};

#define LZMA_FINISH 3
#define LZMA_STREAM_END 1

/* The compressor of a segment: LZ4 (`fast`), LZ4HC (`hc_reset`, `hc`, `state`, `level`) or MicroLZMA. */
struct coder {
    destsize_fn fast;
    hc_reset_fn hc_reset;
    hc_destsize_fn hc;
    void *state;
    int level;
    microlzma_encoder_fn lzma_encoder;
    lzma_code_fn lzma_code;
    void *lzma_stream;
    const void *lzma_options;
};

#define BLK 4096
#define MIN_WINDOW (16 << 10)
#define KIND_PLAIN 0
#define KIND_HEAD1 1

/*
 * One destSize call of `offer` bytes at `src` into `dst` (BLK bytes); the stream's length, or <= 0.
 * LZ4HC: LZ4_resetStreamHC_fast, then LZ4_compress_HC_continue_destSize on the caller's state,
 * which gives the stream LZ4_compress_HC_destSize gives (every call starts a new block with no
 * dictionary: the positions the state remembers from earlier calls lie outside the new
 * block's window) without clearing the state's 256 KiB of tables on every call as it does.
 */
static int attempt(const struct coder *c, const char *src, int offer, char *dst, int *used)
{
    *used = offer;
    if (c->hc) {
        c->hc_reset(c->state, c->level);
        return c->hc(c->state, src, dst, used, BLK);
    }
    return c->fast(src, dst, used, BLK);
}

/* One MicroLZMA stream of as much of `avail` bytes at `src` as fits BLK bytes (microlzma.py). */
static int attempt_lzma(const struct coder *c, const char *src, int avail, char *dst, int *used)
{
    struct lzma_stream_head *s = c->lzma_stream;

    if (c->lzma_encoder(c->lzma_stream, c->lzma_options) != 0)
        return -1;
    s->next_in = src;
    s->avail_in = (size_t)avail;
    s->next_out = dst;
    s->avail_out = BLK;
    if (c->lzma_code(c->lzma_stream, LZMA_FINISH) != LZMA_STREAM_END || s->total_in == 0 || s->total_out > BLK)
        return -1;
    *used = (int)s->total_in;
    return (int)s->total_out;
}

/*
 * The attempt(s) for one extent from `src`, `last` being what the previous extent used: the
 * stream's length in `dst` (<= 0: the compressor failed), the input it used in `used`.
 * MicroLZMA: one call, the encoder stops when its output is full. LZ4/LZ4HC: the offers of
 * DestSizeCompressor.compress (about twice what the last extent used, at least MIN_WINDOW, four
 * times more while a call uses more than three quarters of its offer; for LZ4HC after an extent
 * stored raw, first 1.25 blocks).
 */
static int extent(const struct coder *c, const char *src, int remaining, int last, char *dst, int *used)
{
    long window = 1, twice = 2L * last;
    const int probe = BLK + BLK / 4;
    int len;

    if (c->lzma_encoder)
        return attempt_lzma(c, src, remaining, dst, used);
    while (twice) {  /* 1 << (2 * last).bit_length() */
        window <<= 1;
        twice >>= 1;
    }
    if (window < MIN_WINDOW)
        window = MIN_WINDOW;
    if (c->hc && last > 0 && last <= BLK && remaining > probe) {
        len = attempt(c, src, probe, dst, used);
        if (len <= 0 || *used <= BLK)
            return len;
        if (window < 4L * probe)
            window = 4L * probe;
    }
    for (;;) {
        int offer = window < remaining ? (int)window : remaining;
        len = attempt(c, src, offer, dst, used);
        if (len <= 0 || offer == remaining || *used <= offer - offer / 4)
            return len;
        window *= 4;
    }
}

/*
 * Compress data[0:n] into `out` (room for `out_blocks` blocks) and describe its extents in `ext`
 * (room for `out_blocks` triples: kind, input length, blocks).
 * Returns the number of extents, -1 if the compressor failed, -2 if `out` is too small.
 */
static int segment(const struct coder *c, const char *data, int n, char *out, int out_blocks, int *ext)
{
    char dst[BLK];
    int pos = 0, last = 0, count = 0;
    long blocks = 0;

    while (pos < n) {
        int used = 0;
        int len = extent(c, data + pos, n - pos, last, dst, &used);

        if (len <= 0 || used <= 0)
            return -1;
        last = used;

        int nblocks = (len + BLK - 1) / BLK;
        if (used > nblocks * BLK && dst[0] != 0) {
            /* Compressed: right-aligned in its block, zeros first (0PADDING). */
            if (blocks + nblocks > out_blocks)
                return -2;
            char *at = out + blocks * BLK;
            memset(at, 0, (size_t)(nblocks * BLK - len));
            memcpy(at + nblocks * BLK - len, dst, (size_t)len);
            ext[3 * count] = KIND_HEAD1;
            ext[3 * count + 1] = used;
            ext[3 * count + 2] = nblocks;
            count++;
            blocks += nblocks;
            pos += used;
        } else {
            /* Does not shrink: whole blocks stored raw, at least one, zero-filled after. */
            int span = used <= nblocks * BLK ? used / BLK : 1;
            if (span < 1)
                span = 1;
            for (int i = 0; i < span; i++) {
                int take = n - pos < BLK ? n - pos : BLK;
                if (blocks + 1 > out_blocks)
                    return -2;
                char *at = out + blocks * BLK;
                memcpy(at, data + pos, (size_t)take);
                memset(at + take, 0, (size_t)(BLK - take));
                ext[3 * count] = KIND_PLAIN;
                ext[3 * count + 1] = take;
                ext[3 * count + 2] = 1;
                count++;
                blocks += 1;
                pos += take;
            }
        }
    }
    return count;
}

/* LZ4 (`hc` NULL, `fast`: LZ4_compress_destSize) or LZ4HC (`hc_reset`: LZ4_resetStreamHC_fast,
   `hc`: LZ4_compress_HC_continue_destSize, at `level` on `state`: LZ4_sizeofStateHC() bytes that
   LZ4_initStreamHC prepared once and only this loop has used since). */
int erofs_lz4_segment(destsize_fn fast, hc_reset_fn hc_reset, hc_destsize_fn hc, void *state, int level,
                      const char *data, int n, char *out, int out_blocks, int *ext)
{
    struct coder c = {fast, hc_reset, hc, state, level, NULL, NULL, NULL, NULL};

    return segment(&c, data, n, out, out_blocks, ext);
}

/* MicroLZMA: `encoder` is lzma_microlzma_encoder, `code` lzma_code, `stream` an lzma_stream and
   `options` the lzma_options_lzma the caller prepared (microlzma.py MicroLzmaEncoder). */
int erofs_lzma_segment(microlzma_encoder_fn encoder, lzma_code_fn code, void *stream, const void *options,
                       const char *data, int n, char *out, int out_blocks, int *ext)
{
    struct coder c = {NULL, NULL, NULL, NULL, 0, encoder, code, stream, options};

    return segment(&c, data, n, out, out_blocks, ext);
}
