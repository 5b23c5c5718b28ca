/* The Azure store: see store.ts. */
export { AzureStore, MAX_CLEAR_PAGES_BYTES } from './store';
export { DEVSTORE_ACCOUNT, DEVSTORE_KEY } from './connection';
export { mergeRanges } from './convert';
