/** The DuckDB index and read path: derived from the ledger, rebuildable, queried with the filter language. */
export { DEFAULT_PAGE_SIZE, EntryIndex, IndexError, type IndexErrorCode, type IndexRow, type ListRequest, type ListResponse, MAX_PAGE_SIZE } from './entry-index.ts';
