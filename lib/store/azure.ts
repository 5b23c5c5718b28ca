/* The Azure store, whose parts live in azure/: store.ts (the BlobStore), connection.ts
 * (credentials to a client), convert.ts (shapes and limits), errors.ts (SDK failures to
 * BlobdiskError). Importers name this file. */
export { AzureStore, MAX_CLEAR_PAGES_BYTES } from './azure/store';
export { DEVSTORE_ACCOUNT, DEVSTORE_KEY } from './azure/connection';
export { mergeRanges } from './azure/convert';
