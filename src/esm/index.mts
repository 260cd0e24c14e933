// ESM entry: re-exports the CommonJS build, so both share one instance of the library.
export * from '../index.js';
