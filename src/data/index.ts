/** The data layer: caches (format: docs/cache-format.md), datasets, masking, preparation. */
export { DataError } from "./errors.ts";
export * from "./tokenizer.ts";
export * from "./paths.ts";
export * from "./meta.ts";
export * from "./cache.ts";
export * from "./writer.ts";
export * from "./mask.ts";
export * from "./dataset.ts";
export { StreamDataset } from "./stream.ts";
export { SFTExampleDataset } from "./sft.ts";
export * from "./eval.ts";
