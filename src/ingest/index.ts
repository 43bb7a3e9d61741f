export { IngestService, InProcessSink, type WriteResult } from './service.ts';
export { HttpEntrySink, BatchingSink, IngestHttpError, clientToken, type EntrySink } from './sink.ts';
