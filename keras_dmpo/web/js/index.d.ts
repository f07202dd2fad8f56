// Types of keras-dmpo-web (hand-written; the sources are plain ES modules with JSDoc).

/** A bundle the runtime refuses; the message names the key, the value and what is expected. */
export class BundleError extends Error {
  name: 'BundleError';
}

export const FORMAT_VERSION: 2;
export const MANIFEST_NAME: 'manifest.json';
/** Why a dynamic-batch bundle is refused (the server says the same). */
export const DYNAMIC_BATCH_MESSAGE: string;

export type Criterion = 'confidence' | 'entropy' | 'patience';
export const CRITERIA: readonly Criterion[];

/** ExitPolicy.to_dict: the manifest's `policy`. */
export interface PolicyDict {
  criterion: Criterion;
  num_exits: number;
  thresholds: number[] | null;
  temperatures?: number[] | null;
  patience?: number | null;
  calibration?: object | null;
}

export interface TensorSpec {
  name: string;
  shape: number[];
  dtype: string;
}

export interface GraphEntry {
  file: string;
  sha256: string;
  size_bytes: number;
  signature_key?: string | null;
  inputs: TensorSpec[];
  outputs: TensorSpec[];
  flops?: number;
}

export interface StageEntry extends GraphEntry {
  index: number;
  exit_block: number;
  flops: number;
  stage_flops?: number;
  fraction_of_full_model?: number;
}

export interface Preprocessing {
  scale: number | number[];
  offset: number | number[];
  input_range: [number, number];
  resize?: [number, number];
  channels?: number;
  color_order?: string | null;
  formula?: string | null;
}

/** manifest.json, format_version 2 (docs/export.md). */
export interface Manifest {
  format: 'tflite';
  format_version: 2;
  keras_dmpo_version: string;
  image_shape: [number, number, number];
  preprocessing: Preprocessing;
  class_names: string[] | null;
  num_classes: number;
  quantization: null | 'dynamic' | 'float16' | 'int8';
  exits: number[];
  policy: PolicyDict;
  full_model_flops: number;
  stages: StageEntry[];
  monolithic?: GraphEntry | null;
  [key: string]: unknown;
}

/** Check a manifest (format 2, batch-1 graphs); throws BundleError, returns it unchanged. */
export function validateManifest(manifest: unknown, source?: string): Manifest;

/** softmax(log p / T); null or 1 leaves p unchanged. */
export function temper(probabilities: ArrayLike<number>, temperature?: number | null): Float64Array;
/** Exit score in [0, 1]: max p (confidence) or 1 - H / ln C (entropy). */
export function exitScore(
  probabilities: ArrayLike<number>,
  criterion: 'confidence' | 'entropy',
  temperature?: number | null,
): number;
/** score >= threshold. */
export function passes(score: number, threshold: number): boolean;
/** The first index of the largest value. */
export function argmax(values: ArrayLike<number>): number;

export interface PatienceState {
  label: number;
  streak: number;
}

/** Which exit answers; frozen. */
export class ExitPolicy {
  static fromDict(data: unknown, argument?: string): ExitPolicy;
  readonly criterion: Criterion;
  readonly numExits: number;
  readonly thresholds: readonly number[] | null;
  readonly temperatures: readonly number[] | null;
  readonly patience: number | null;
  readonly calibration: object | null;
  toDict(): PolicyDict;
  score(k: number, probabilities: ArrayLike<number>): number;
  start(): PatienceState | null;
  step(
    k: number,
    probabilities: ArrayLike<number>,
    state: PatienceState | null,
  ): { leave: boolean; state: PatienceState | null };
  /** The 0-based exit that answers one image, from every exit's probabilities. */
  assign(probabilitiesPerExit: ArrayLike<number>[]): number;
}

export type ImageInput =
  | ImageData
  | HTMLImageElement
  | HTMLCanvasElement
  | OffscreenCanvas
  | ImageBitmap;

/** RGBA bytes (H*W*4) to model space, NHWC [1, H, W, C]. */
export function pixelsToModelSpace(
  rgba: Uint8ClampedArray | Uint8Array,
  channels: 1 | 3,
  preprocessing: Preprocessing,
): Float32Array;
/** An image resized to image_shape and mapped to model space. */
export function preprocessImage(
  image: ImageInput,
  imageShape: [number, number, number] | number[],
  preprocessing: Preprocessing,
): Promise<Float32Array>;

export interface LoadOptions {
  /** LiteRT CPU threads per graph (default: up to 4 when threaded, else 1). */
  numThreads?: number;
  /** Load the threaded wasm (default: when the page is cross-origin isolated). */
  threads?: boolean;
  /** LiteRT.js's wasm folder (default: next to @litertjs/core in the import map). */
  wasmUrl?: string;
  /** An exit policy instead of the manifest's. */
  policy?: PolicyDict | ExitPolicy;
  /** Check every graph's sha256 (default true; needs a secure context). */
  verifyHashes?: boolean;
  fetch?: typeof fetch;
}

export interface Prediction {
  label: number;
  labelName: string | null;
  probabilities: Float32Array;
  /** 0-based position in `exits`. */
  exitIndex: number;
  /** 1-based block of the exit that answered. */
  exitBlock: number;
  /** Cumulative FLOPs spent on this image. */
  flops: number;
  /** flops / full_model_flops. */
  fractionOfFull: number;
  /** Wall time of each stage that ran, ms. */
  stageMs: number[];
}

export interface MonolithicPrediction {
  label: number;
  labelName: string | null;
  probabilities: Float32Array;
  ms: number;
}

export class StagedRuntime {
  static load(bundleUrl: string | URL, options?: LoadOptions): Promise<StagedRuntime>;
  readonly bundleUrl: string;
  readonly manifest: Manifest;
  readonly exits: number[];
  readonly imageShape: number[];
  readonly classNames: string[] | null;
  readonly numClasses: number;
  readonly flopsPerExit: number[];
  readonly fullModelFlops: number;
  /** Whether the threaded wasm runs (null: LiteRT.js was loaded by the page itself). */
  readonly threads: boolean | null;
  readonly numThreads: number;
  readonly numExits: number;
  readonly hasMonolithic: boolean;
  /** The exit policy in use; assign another one (or its dict) to change it. */
  get policy(): ExitPolicy;
  set policy(value: ExitPolicy | PolicyDict);
  /** Stage 1's model-space input for a Float32Array (checked) or an image. */
  modelInput(input: Float32Array | ImageInput): Promise<Float32Array>;
  predict(input: Float32Array | ImageInput, options?: { policy?: PolicyDict | ExitPolicy }): Promise<Prediction>;
  predictMonolithic(input: Float32Array | ImageInput): Promise<MonolithicPrediction>;
  delete(): void;
}
