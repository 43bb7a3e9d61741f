// SHA-256 (and zlib's CRC-32) over many byte ranges of one buffer in a single call, for the ledger, which hashes every entry and every
// tree node. Two costs go away: the per-call overhead of crypto.hash (about half a microsecond, as much as hashing
// a 600-byte entry), and, where Node's bundled OpenSSL was built without its assembly (as Debian's is: ~400 MB/s),
// the slow digest itself: the system's libcrypto, when present, has the SHA-NI/AVX2 code (~1.8 GB/s here).
#define NAPI_VERSION 8
#include <dlfcn.h>
#include <pthread.h>
#include <stdlib.h>
#include <node_api.h>
#include <stddef.h>
#include <stdint.h>

// OpenSSL's SHA256_CTX (sha.h), declared here so the build needs no OpenSSL headers; its layout is part of
// OpenSSL's ABI (1.1 and 3.x).
typedef struct {
  unsigned int h[8];
  unsigned int Nl, Nh;
  unsigned int data[16];
  unsigned int num, md_len;
} Sha256Context;
typedef int (*InitFn)(Sha256Context *);
typedef int (*UpdateFn)(Sha256Context *, const void *, size_t);
typedef int (*FinalFn)(unsigned char *, Sha256Context *);
static InitFn sha256_init;
static UpdateFn sha256_update;
static FinalFn sha256_final;
static const char *digest_source = "none";

// The system library is opened privately (RTLD_LOCAL) so its symbols neither replace nor are replaced by the copy
// of OpenSSL inside the node binary; without it, that copy (exported by node) is used.
static int load_sha256(void) {
  static const char *const libraries[] = {"libcrypto.so.3", "libcrypto.so.1.1", "libcrypto.so"};
  for (size_t i = 0; i < sizeof libraries / sizeof *libraries; i++) {
    void *library = dlopen(libraries[i], RTLD_NOW | RTLD_LOCAL);
    if (library == NULL) continue;
    sha256_init = (InitFn)dlsym(library, "SHA256_Init");
    sha256_update = (UpdateFn)dlsym(library, "SHA256_Update");
    sha256_final = (FinalFn)dlsym(library, "SHA256_Final");
    if (sha256_init && sha256_update && sha256_final) {
      digest_source = libraries[i];
      return 1;
    }
  }
  sha256_init = (InitFn)dlsym(RTLD_DEFAULT, "SHA256_Init");
  sha256_update = (UpdateFn)dlsym(RTLD_DEFAULT, "SHA256_Update");
  sha256_final = (FinalFn)dlsym(RTLD_DEFAULT, "SHA256_Final");
  digest_source = "node";
  return sha256_init && sha256_update && sha256_final;
}

#define DIGEST_BYTES 32

static napi_value fail(napi_env env, const char *message) {
  napi_throw_type_error(env, NULL, message);
  return NULL;
}

static int bytes_of(napi_env env, napi_value value, uint8_t **data, size_t *length) {
  bool is_typed = false;
  if (napi_is_typedarray(env, value, &is_typed) != napi_ok || !is_typed) return 0;
  napi_typedarray_type type;
  size_t count;
  void *base;
  if (napi_get_typedarray_info(env, value, &type, &count, &base, NULL, NULL) != napi_ok) return 0;
  if (type == napi_uint8_array) {
    *data = base;
    *length = count;
    return 1;
  }
  if (type == napi_uint32_array) {
    *data = base;
    *length = count * 4;
    return 1;
  }
  return 0;
}

// Reads `arity` arguments into argv; the first three are what every batch call starts with: a buffer, a Uint32Array of (start, end) ranges in it, and how many of
// those ranges to use. Every range is checked before any work; each must start at `min_start` or later.
typedef struct {
  uint8_t *buffer;
  const uint32_t *ranges;
  uint32_t count;
} Batch;

static int read_batch(napi_env env, napi_callback_info info, size_t arity, napi_value *argv, uint32_t min_start, Batch *batch) {
  uint8_t *range_bytes;
  size_t buffer_length, range_length, argc = arity;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc != arity) { fail(env, "wrong number of arguments"); return 0; }
  if (!bytes_of(env, argv[0], &batch->buffer, &buffer_length)) { fail(env, "buffer must be a Uint8Array"); return 0; }
  if (!bytes_of(env, argv[1], &range_bytes, &range_length)) { fail(env, "ranges must be a Uint32Array"); return 0; }
  if (napi_get_value_uint32(env, argv[2], &batch->count) != napi_ok) { fail(env, "count must be a number"); return 0; }
  if ((size_t)batch->count * 8 > range_length) { fail(env, "ranges holds fewer than count ranges"); return 0; }
  batch->ranges = (const uint32_t *)range_bytes;
  for (uint32_t i = 0; i < batch->count; i++) {
    const uint32_t start = batch->ranges[2 * i], end = batch->ranges[2 * i + 1];
    if (start < min_start || start > end || end > buffer_length) { fail(env, "a range lies outside the buffer"); return 0; }
  }
  return 1;
}

static void hash_batch(const Batch *batch, unsigned char prefix, uint8_t *out) {
  Sha256Context context;
  for (uint32_t i = 0; i < batch->count; i++) {
    sha256_init(&context);
    sha256_update(&context, &prefix, 1);
    sha256_update(&context, batch->buffer + batch->ranges[2 * i], batch->ranges[2 * i + 1] - batch->ranges[2 * i]);
    sha256_final(out + (size_t)i * DIGEST_BYTES, &context);
  }
}

// hashRanges(buffer, ranges: Uint32Array [start0, end0, start1, end1, …], count, prefix: 0..255, out)
// out[32·i …] = SHA-256(prefix ‖ buffer[start_i, end_i)) for i < count.
// The arguments hashRanges and hashRangesAsync share: buffer, ranges, count, prefix, out (then, for the latter, done).
static int read_hash_arguments(napi_env env, napi_callback_info info, size_t arity, napi_value *argv, Batch *batch, unsigned char *prefix, uint8_t **out) {
  size_t out_length;
  uint32_t prefix_value;
  if (!read_batch(env, info, arity, argv, 0, batch)) return 0;
  if (napi_get_value_uint32(env, argv[3], &prefix_value) != napi_ok || prefix_value > 255) { fail(env, "prefix must be a byte"); return 0; }
  if (!bytes_of(env, argv[4], out, &out_length)) { fail(env, "out must be a Uint8Array"); return 0; }
  if ((size_t)batch->count * DIGEST_BYTES > out_length) { fail(env, "out is too small for count digests"); return 0; }
  *prefix = (unsigned char)prefix_value;
  return 1;
}

static napi_value hash_ranges(napi_env env, napi_callback_info info) {
  napi_value argv[5];
  Batch batch;
  unsigned char prefix;
  uint8_t *out;
  if (read_hash_arguments(env, info, sizeof argv / sizeof *argv, argv, &batch, &prefix, &out)) hash_batch(&batch, prefix, out);
  return NULL;
}

// hashRangesAsync(buffer, ranges, count, prefix, out, done): hashRanges on a thread of its own, then done() on the
// JavaScript thread. One thread for the process, jobs in arrival order: the ledger hashes a batch while the batch is
// written and synced and while the JavaScript thread frames the next one. (libuv's pool would put the hashing behind,
// and beside, the same pool's file writes and fsyncs.) The caller keeps every buffer alive and unchanged until done.
typedef struct HashJob {
  struct HashJob *next;
  Batch batch;
  unsigned char prefix;
  uint8_t *out;
  napi_threadsafe_function finished;
  napi_ref keep[4]; // buffer, ranges, out, done
} HashJob;

static pthread_mutex_t jobs_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t jobs_waiting = PTHREAD_COND_INITIALIZER;
static HashJob *jobs_head, *jobs_tail;
static int hash_thread_started;

static void *hash_thread(void *unused) {
  (void)unused;
  for (;;) {
    pthread_mutex_lock(&jobs_lock);
    while (jobs_head == NULL) pthread_cond_wait(&jobs_waiting, &jobs_lock);
    HashJob *job = jobs_head;
    jobs_head = job->next;
    if (jobs_head == NULL) jobs_tail = NULL;
    pthread_mutex_unlock(&jobs_lock);
    hash_batch(&job->batch, job->prefix, job->out);
    // Fails only once the job's JavaScript environment is closing; its references then go with it.
    if (napi_call_threadsafe_function(job->finished, job, napi_tsfn_blocking) != napi_ok) free(job);
  }
  return NULL;
}

// Per JavaScript environment (the main thread, each worker): the way back to it, and how many jobs it awaits, so
// that an idle hashing thread does not keep its event loop alive.
typedef struct {
  napi_threadsafe_function finished;
  uint32_t outstanding;
} HashEnv;

static void job_finished(napi_env env, napi_value unused, void *context, void *data) {
  HashEnv *state = context;
  HashJob *job = data;
  if (env == NULL) {
    // The environment is being torn down (a worker ended): its references went with it.
    free(job);
    return;
  }
  if (--state->outstanding == 0) napi_unref_threadsafe_function(env, state->finished);
  napi_value done, undefined;
  int have_done = napi_get_reference_value(env, job->keep[3], &done) == napi_ok && done != NULL;
  for (int i = 0; i < 4; i++) napi_delete_reference(env, job->keep[i]);
  free(job);
  if (have_done && napi_get_undefined(env, &undefined) == napi_ok) napi_call_function(env, undefined, done, 0, NULL, NULL);
}

static void free_hash_env(napi_env env, void *data, void *hint) { free(data); }

static napi_value hash_ranges_async(napi_env env, napi_callback_info info) {
  napi_value argv[6];
  HashJob *job = calloc(1, sizeof *job);
  if (job == NULL) return fail(env, "out of memory");
  napi_valuetype done_type;
  if (!read_hash_arguments(env, info, sizeof argv / sizeof *argv, argv, &job->batch, &job->prefix, &job->out)) return free(job), NULL;
  if (napi_typeof(env, argv[5], &done_type) != napi_ok || done_type != napi_function) return free(job), fail(env, "done must be a function");
  HashEnv *state;
  if (napi_get_instance_data(env, (void **)&state) != napi_ok || state == NULL) {
    state = calloc(1, sizeof *state);
    napi_value name;
    if (state == NULL || napi_create_string_utf8(env, "custos ledger hashing", NAPI_AUTO_LENGTH, &name) != napi_ok ||
        napi_create_threadsafe_function(env, NULL, NULL, name, 0, 1, NULL, NULL, state, job_finished, &state->finished) != napi_ok) {
      free(state);
      free(job);
      return fail(env, "could not set up the hashing thread's callback");
    }
    napi_unref_threadsafe_function(env, state->finished);
    napi_set_instance_data(env, state, free_hash_env, NULL);
  }
  job->finished = state->finished;
  for (int i = 0; i < 4; i++) napi_create_reference(env, argv[i == 3 ? 5 : i == 2 ? 4 : i], 1, &job->keep[i]);
  if (state->outstanding++ == 0) napi_ref_threadsafe_function(env, state->finished);
  pthread_mutex_lock(&jobs_lock);
  if (!hash_thread_started) {
    pthread_t thread;
    if (pthread_create(&thread, NULL, hash_thread, NULL) == 0) {
      pthread_detach(thread);
      hash_thread_started = 1;
    }
  }
  if (!hash_thread_started) {
    pthread_mutex_unlock(&jobs_lock);
    // No thread to be had: hash here, and answer as the thread would.
    hash_batch(&job->batch, job->prefix, job->out);
    job_finished(env, NULL, state, job);
    return NULL;
  }
  if (jobs_tail) jobs_tail->next = job;
  else jobs_head = job;
  jobs_tail = job;
  pthread_cond_signal(&jobs_waiting);
  pthread_mutex_unlock(&jobs_lock);
  return NULL;
}

// zlib's CRC-32 as linked into node (the same code as zlib.crc32 in JavaScript, without a call per record).
typedef unsigned long (*Crc32Fn)(unsigned long, const unsigned char *, unsigned int);
static Crc32Fn zlib_crc32;

// crc32Ranges(buffer, ranges: Uint32Array [start0, end0, …], count, out: Uint32Array)
// out[i] = CRC-32 (zlib) of buffer[start_i, end_i) for i < count.
static napi_value crc32_ranges(napi_env env, napi_callback_info info) {
  napi_value argv[4];
  Batch batch;
  uint8_t *out_bytes;
  size_t out_length;
  if (!read_batch(env, info, sizeof argv / sizeof *argv, argv, 0, &batch)) return NULL;
  if (!bytes_of(env, argv[3], &out_bytes, &out_length)) return fail(env, "out must be a Uint32Array");
  if ((size_t)batch.count * 4 > out_length) return fail(env, "out is too small for count checksums");
  uint32_t *out = (uint32_t *)out_bytes;
  for (uint32_t i = 0; i < batch.count; i++) {
    out[i] = (uint32_t)zlib_crc32(0, batch.buffer + batch.ranges[2 * i], batch.ranges[2 * i + 1] - batch.ranges[2 * i]);
  }
  return NULL;
}

// stampRecords(buffer, payloads: Uint32Array [start0, end0, …], count, firstIndex)
// For ledger records laid out as length ‖ CRC-32 ‖ index (u64) ‖ payload: writes index firstIndex + i (big-endian)
// in the 8 bytes before payload i, then the CRC-32 of index ‖ payload in the 4 bytes before those.
static napi_value stamp_records(napi_env env, napi_callback_info info) {
  napi_value argv[4];
  Batch batch;
  int64_t first_index;
  if (!read_batch(env, info, sizeof argv / sizeof *argv, argv, 12, &batch)) return NULL;
  if (napi_get_value_int64(env, argv[3], &first_index) != napi_ok || first_index < 0) return fail(env, "firstIndex must be a non-negative integer");
  for (uint32_t i = 0; i < batch.count; i++) {
    uint8_t *index_at = batch.buffer + batch.ranges[2 * i] - 8;
    uint64_t index = (uint64_t)first_index + i;
    for (int b = 7; b >= 0; b--, index >>= 8) index_at[b] = (uint8_t)(index & 0xff);
    uint32_t crc = (uint32_t)zlib_crc32(0, index_at, batch.ranges[2 * i + 1] - batch.ranges[2 * i] + 8);
    index_at[-4] = (uint8_t)(crc >> 24);
    index_at[-3] = (uint8_t)(crc >> 16);
    index_at[-2] = (uint8_t)(crc >> 8);
    index_at[-1] = (uint8_t)crc;
  }
  return NULL;
}

NAPI_MODULE_INIT(/* napi_env env, napi_value exports */) {
  if (!load_sha256()) {
    napi_throw_error(env, NULL, "no SHA-256 implementation found (neither libcrypto nor node's own)");
    return NULL;
  }
  napi_value fn, source;
  if (napi_create_function(env, "hashRanges", NAPI_AUTO_LENGTH, hash_ranges, NULL, &fn) != napi_ok) return NULL;
  if (napi_set_named_property(env, exports, "hashRanges", fn) != napi_ok) return NULL;
  if (napi_create_function(env, "hashRangesAsync", NAPI_AUTO_LENGTH, hash_ranges_async, NULL, &fn) != napi_ok) return NULL;
  if (napi_set_named_property(env, exports, "hashRangesAsync", fn) != napi_ok) return NULL;
  zlib_crc32 = (Crc32Fn)dlsym(RTLD_DEFAULT, "crc32");
  if (zlib_crc32 != NULL) {
    napi_value crc_fn;
    if (napi_create_function(env, "crc32Ranges", NAPI_AUTO_LENGTH, crc32_ranges, NULL, &crc_fn) != napi_ok) return NULL;
    if (napi_set_named_property(env, exports, "crc32Ranges", crc_fn) != napi_ok) return NULL;
    if (napi_create_function(env, "stampRecords", NAPI_AUTO_LENGTH, stamp_records, NULL, &crc_fn) != napi_ok) return NULL;
    if (napi_set_named_property(env, exports, "stampRecords", crc_fn) != napi_ok) return NULL;
  }
  if (napi_create_string_utf8(env, digest_source, NAPI_AUTO_LENGTH, &source) != napi_ok) return NULL;
  if (napi_set_named_property(env, exports, "digestSource", source) != napi_ok) return NULL;
  return exports;
}
