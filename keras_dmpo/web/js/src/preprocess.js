// From a browser image to the model-space tensor stage 1 takes, following
// the manifest's `preprocessing`: resize to [H, W], take the channels, map
// each pixel byte p in [0, 255] to the raw range [low, high] the model was
// exported for (low + (high - low) * p / 255), then x * scale + offset.
//
// Resampling: the browser's own (createImageBitmap with resizeQuality
// "high", drawn on a canvas), not Pillow's bilinear filter that
// keras_dmpo.image_folders uses, so an image that needs resizing can get
// slightly different pixels than in Python. An image already at [H, W] is
// copied pixel for pixel (no color-space conversion). Alpha is dropped.

/**
 * @typedef {{scale: number|number[], offset: number|number[], input_range: [number, number]}} Preprocessing
 * @typedef {ImageData|HTMLImageElement|HTMLCanvasElement|ImageBitmap|OffscreenCanvas} ImageInput
 */

/**
 * The per-channel list of a number-or-list preprocessing field.
 * @param {number|number[]} value
 * @param {number} channels
 */
function perChannel(value, channels) {
  const list = Array.isArray(value) ? value : [value];
  return Array.from({ length: channels }, (_, c) => list.length === 1 ? list[0] : list[c]);
}

/**
 * Model-space pixels from RGBA bytes, NHWC [1, H, W, C] in a Float32Array.
 * Float32 arithmetic at each step, as StagedRuntime.preprocess does in numpy.
 * @param {Uint8ClampedArray|Uint8Array} rgba H*W*4 bytes
 * @param {number} channels 3 (RGB) or 1 (luma, as Pillow's "L")
 * @param {Preprocessing} preprocessing
 * @returns {Float32Array}
 */
export function pixelsToModelSpace(rgba, channels, preprocessing) {
  if (channels !== 1 && channels !== 3) {
    throw new Error(`image_shape has ${channels} channels; images map to 1 (grayscale) or 3 (RGB).`);
  }
  const pixels = rgba.length / 4;
  const [low, high] = preprocessing.input_range;
  const scale = perChannel(preprocessing.scale, channels).map(Math.fround);
  const offset = perChannel(preprocessing.offset, channels).map(Math.fround);
  // One lookup table per channel: 256 byte values -> model space.
  const tables = scale.map((s, c) =>
    Float32Array.from({ length: 256 }, (_, p) => {
      const raw = Math.fround(low + ((high - low) * p) / 255);
      return Math.fround(Math.fround(raw * s) + offset[c]);
    }),
  );
  const out = new Float32Array(pixels * channels);
  for (let i = 0; i < pixels; i++) {
    const r = rgba[4 * i];
    const g = rgba[4 * i + 1];
    const b = rgba[4 * i + 2];
    if (channels === 3) {
      out[3 * i] = tables[0][r];
      out[3 * i + 1] = tables[1][g];
      out[3 * i + 2] = tables[2][b];
    } else {
      // ITU-R 601-2 luma in 16-bit fixed point, rounded: Pillow's "L".
      out[i] = tables[0][(r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16];
    }
  }
  return out;
}

/**
 * The [H, W] RGBA bytes of an image, resized by the browser when needed.
 * @param {ImageInput} image
 * @param {number} height
 * @param {number} width
 * @returns {Promise<Uint8ClampedArray>}
 */
export async function imageBytes(image, height, width) {
  if (typeof ImageData !== 'undefined' && image instanceof ImageData && image.width === width && image.height === height) {
    return image.data;
  }
  const size = imageSize(image);
  if (!size) {
    throw new TypeError(
      '`input` must be a Float32Array (model space) or an ImageData, HTMLImageElement, ' +
        `HTMLCanvasElement, OffscreenCanvas or ImageBitmap; got ${Object.prototype.toString.call(image)}.`,
    );
  }
  if (!size.width || !size.height) {
    throw new Error(`The image has size ${size.width}x${size.height}; is it loaded (img.decode())?`);
  }
  const options = { colorSpaceConversion: 'none', premultiplyAlpha: 'none' };
  if (size.width !== width || size.height !== height) {
    Object.assign(options, { resizeWidth: width, resizeHeight: height, resizeQuality: 'high' });
  }
  const bitmap = await createImageBitmap(image, options);
  try {
    const canvas = makeCanvas(width, height);
    const context = canvas.getContext('2d', { willReadFrequently: true });
    context.drawImage(bitmap, 0, 0);
    return context.getImageData(0, 0, width, height).data;
  } finally {
    bitmap.close();
  }
}

/** @param {any} image */
function imageSize(image) {
  if (typeof HTMLImageElement !== 'undefined' && image instanceof HTMLImageElement) {
    return { width: image.naturalWidth, height: image.naturalHeight };
  }
  const kinds = ['ImageData', 'HTMLCanvasElement', 'OffscreenCanvas', 'ImageBitmap'];
  if (kinds.some((kind) => typeof globalThis[kind] !== 'undefined' && image instanceof globalThis[kind])) {
    return { width: image.width, height: image.height };
  }
  return null;
}

function makeCanvas(width, height) {
  if (typeof OffscreenCanvas !== 'undefined') return new OffscreenCanvas(width, height);
  const canvas = document.createElement('canvas');
  canvas.width = width;
  canvas.height = height;
  return canvas;
}

/**
 * An image as stage 1's model-space input: NHWC [1, H, W, C] float32.
 * @param {ImageInput} image
 * @param {number[]} imageShape [H, W, C] (the manifest's image_shape)
 * @param {Preprocessing} preprocessing the manifest's preprocessing
 * @returns {Promise<Float32Array>}
 */
export async function preprocessImage(image, imageShape, preprocessing) {
  const [height, width, channels] = imageShape;
  return pixelsToModelSpace(await imageBytes(image, height, width), channels, preprocessing);
}
