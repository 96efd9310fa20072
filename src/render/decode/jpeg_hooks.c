/*
 * Hooks that let iiifd's AVX2 kernels (src/render/decode/jpeg_simd.rs) stand in for two of libjpeg's
 * methods while it decodes: the full-size "islow" inverse DCT of each component and the
 * YCbCr -> RGB colour conversion. Everything else (entropy decoding, cropping, row skipping, DCT
 * scaling, upsampling) stays libjpeg's. Why: libjpeg-turbo's own SIMD code is NASM assembly,
 * compiled in only when nasm is on PATH at build time; without it these two steps, in plain C,
 * take about half the time of a full-size decode. The kernels are bit-exact with the C they
 * replace (tested in jpeg.rs).
 *
 * The method tables live in libjpeg's internal header (jpegint.h), so they are reached from C,
 * against the very headers mozjpeg-sys compiled the library with, rather than by mirroring
 * private struct layouts in Rust. The kernels are passed in through the decompressor's
 * client_data: no global state.
 */
#define JPEG_INTERNALS
#include <stddef.h>
#include <stdio.h>
#include "jpeglib.h" /* with JPEG_INTERNALS, also jpegint.h */
#include "jdct.h"

/* The IDCT kernels take the component's islow multipliers as libjpeg stores them: 16-bit when
 * it was built with its SIMD code, 32-bit without (MULTIPLIER in jmorecfg.h). */
typedef void (*iiifd_idct_fn)(const void *quant, const short *coef, unsigned char **rows,
                              unsigned int col);
typedef void (*iiifd_ycc_fn)(const unsigned char *y, const unsigned char *cb,
                             const unsigned char *cr, unsigned char *rgb, unsigned int width);

struct iiifd_kernels {
  iiifd_idct_fn idct_q16;
  iiifd_idct_fn idct_q32;
  iiifd_ycc_fn ycc_rgb;
};

static iiifd_idct_fn idct_kernel(const struct iiifd_kernels *k)
{
  return sizeof(ISLOW_MULT_TYPE) == 2 ? k->idct_q16 : sizeof(ISLOW_MULT_TYPE) == 4 ? k->idct_q32 : NULL;
}

static void idct_hook(j_decompress_ptr cinfo, jpeg_component_info *compptr, JCOEFPTR coef,
                      JSAMPARRAY output_buf, JDIMENSION output_col)
{
  const struct iiifd_kernels *k = (const struct iiifd_kernels *)cinfo->client_data;
  idct_kernel(k)(compptr->dct_table, coef, output_buf, output_col);
}

static void ycc_rgb_hook(j_decompress_ptr cinfo, JSAMPIMAGE input_buf, JDIMENSION input_row,
                         JSAMPARRAY output_buf, int num_rows)
{
  const struct iiifd_kernels *k = (const struct iiifd_kernels *)cinfo->client_data;
  while (--num_rows >= 0) {
    k->ycc_rgb(input_buf[0][input_row], input_buf[1][input_row], input_buf[2][input_row],
               *output_buf++, cinfo->output_width);
    input_row++;
  }
}

/*
 * Install the kernels for the output pass that jpeg_start_decompress (and jpeg_crop_scanline, if
 * used) just prepared. Only where they compute exactly what libjpeg would: the islow IDCT at full
 * size, and YCbCr to 3-byte RGB. Returns a bit mask: 1 = IDCT replaced (any component),
 * 2 = colour conversion replaced.
 */
int iiifd_jpeg_install(j_decompress_ptr cinfo, const struct iiifd_kernels *kernels)
{
  int done = 0, ci;
  if (kernels == NULL || cinfo->idct == NULL || cinfo->dct_method != JDCT_ISLOW)
    return 0;
  cinfo->client_data = (void *)kernels;
  if (idct_kernel(kernels) != NULL) {
    for (ci = 0; ci < cinfo->num_components && ci < MAX_COMPONENTS; ci++) {
      if (cinfo->comp_info[ci].DCT_scaled_size == DCTSIZE) {
        cinfo->idct->inverse_DCT[ci] = idct_hook;
        done |= 1;
      }
    }
  }
  if (kernels->ycc_rgb != NULL && cinfo->cconvert != NULL &&
      cinfo->jpeg_color_space == JCS_YCbCr && cinfo->out_color_space == JCS_RGB &&
      cinfo->out_color_components == 3 && cinfo->num_components == 3 &&
      !cinfo->quantize_colors) {
    cinfo->cconvert->color_convert = ycc_rgb_hook;
    done |= 2;
  }
  return done;
}
