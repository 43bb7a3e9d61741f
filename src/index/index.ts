/** The DuckDB index and read path: derived from the ledger, rebuildable, queried with the filter language. */
export { DEFAULT_PAGE_SIZE, EntryIndex, IndexError, type IndexErrorCode, type IndexRow, type ListRequest, type ListResponse, MAX_PAGE_SIZE } from './entry-index.ts';
export { ThreadedEntryIndex } from './threaded-index.ts';

import type { EntryIndex } from './entry-index.ts';
/** What the write and read paths need of an index, in-thread (`EntryIndex`) or on its own thread (`ThreadedEntryIndex`). */
export type EntryIndexApi = Pick<EntryIndex, 'insert' | 'insertRun' | 'indexedSize' | 'list' | 'clear' | 'close'>;
