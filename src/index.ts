// blipdiff: subject-driven image generation with BLIP-Diffusion (public API).
export { BlipDiffusionPipeline, resolveDevice } from "./pipeline/pipeline.js";
export type {
  EncodeSubjectOptions,
  GenerateOptions,
  GenerateResult,
  GenerateTimings,
  GeneratedImage,
  GenerationParameters,
  LoadOptions,
  ProgressEvent,
} from "./pipeline/pipeline.js";
export { saveSubjectEmbedding, loadSubjectEmbedding, serializeSubjectEmbedding, checkSubjectEmbedding } from "./pipeline/embedding.js";
export type { FinetuneOptions, FinetuneParameters, FinetuneProgress, FinetuneResult, FinetuneTimings } from "./pipeline/finetune.js";
export { preflightFinetune } from "./pipeline/finetune.js";
export type { EditOptions, EditParameters, EditPreflight, EditPreflightOptions, EditProgress, EditResult, EditTimings } from "./pipeline/edit.js";
export { preflightEdit, preprocessPhoto, resizePhoto } from "./pipeline/edit.js";
export { EDIT_DEFAULTS, editPrompts, resolveEditPrompt, resolveEditSettings, tokenizeEdit } from "./edit/options.js";
export type { EditPromptOptions, EditSettings, EditTokens, ResolvedEditPrompt, ResolvedEditSettings } from "./edit/options.js";
export { alignTokens, alignmentSequence, subjectPositions, tokenAlignment } from "./edit/align.js";
export { FINETUNE_FORMAT, FINETUNE_VERSION, baseModelOf, checkBaseModel, loadSubjectFile, saveFinetunedSubject } from "./finetune/file.js";
export type { BaseModelIdentity, FinetuneInfo, FinetuneMode, SaveDType } from "./finetune/file.js";
export { FINETUNE_DEFAULTS, FINETUNE_LIMITS, maxLoraRank, resolveFinetune } from "./finetune/options.js";
export type { FinetuneSettings, ResolvedFinetune } from "./finetune/options.js";
export { checkDraws, readDrawsFile } from "./finetune/draws.js";
export type { LoadedDraws } from "./finetune/draws.js";
export { readSafetensors, writeSafetensors, SafetensorsReader, SafetensorsError } from "./io/safetensors.js";
export type { RawTensor } from "./io/safetensors.js";
export type { BlendComponent, EmbeddingShape, SubjectEmbedding } from "./pipeline/embedding.js";
export { BLEND_MIN_SUBJECTS, BLEND_RATIO_TOLERANCE, blendSubjects, checkBlendRatios, loadBlendInput } from "./pipeline/blend.js";
export type { BlendOptions } from "./pipeline/blend.js";
export { DEFAULTS, LIMITS, SCHEDULERS, parseScheduler, parseDevice, parseDType, randomSeed } from "./pipeline/options.js";
export type { DTypeOption, DeviceOption, PromptOptions, SamplingOptions, SchedulerKind } from "./pipeline/options.js";
export { buildPrompt } from "./pipeline/prompt.js";
export { LATENT_TOKEN_FACTOR, maxLatentTokens, preflightGenerate, qformerMaxTextLength } from "./pipeline/preflight.js";
export type { Preflight, PreflightOptions } from "./pipeline/preflight.js";
export { ClipTokenizer, WordPieceTokenizer, tokenizePrompts } from "./pipeline/tokenize.js";
export { preprocessSubject, preprocessCondition, resizeSubject } from "./pipeline/preprocess.js";
export type { SubjectCrop } from "./pipeline/preprocess.js";
export { ATTENTION_CONTROL, readManifest, requireCapability, MANIFEST_FORMAT, MANIFEST_VERSION } from "./pipeline/manifest.js";
export type { ModelManifest } from "./pipeline/manifest.js";
export { decodeRgb } from "./image/decode.js";
export type { ImageSource, NamedBytes } from "./image/decode.js";
export { cropImage, resizeBicubic, resizeBicubicWindow } from "./image/resample.js";
export type { PixelWindow, RawImage } from "./image/resample.js";
export { encodeImage, formatFromPath } from "./image/encode.js";
export { insertPngText, readPngText } from "./image/png-text.js";
export { loadAddon, addonPath, AddonNotFoundError } from "./bindings/index.js";
export type {
  NativeBuildInfo,
  NativeEditProgress,
  NativeEditRecord,
  NativeEditStepRecord,
  NativeFinetuneDraws,
  NativeImage,
  NativeProgress,
  NativeRawTensor,
  NativeTensor,
  NativeTimings,
  NativeUnetOverride,
} from "./bindings/types.js";
export { AbortError, InputError, ModelError } from "./errors.js";
