// The data proxy's relay for authenticated PostgreSQL sessions: after JavaScript has done the start-up and the
// SCRAM exchange and opened the backend, it hands both sockets over, and this thread frames the protocol in both
// directions and forwards it. Only a client's Query, Parse and FunctionCall are looked into. A statement this
// session has seen before is forwarded (or replaced by its rewritten text) from a per-session cache, and reported
// to JavaScript as a batched notice, from which JavaScript writes the statement's audit events. A statement it has
// not seen, a FunctionCall, or a cached entry past its deadline goes to JavaScript as a decision request; the
// session's client side stops until JavaScript answers with the bytes to send upstream (and, for a refusal, the
// marker whose ErrorResponse it replaces; see session.ts). JavaScript keeps every decision and every event.
//
// Simple-protocol statements are cached by their template, as literals.ts makes one: literals become numbered
// parameters and go back into the cached rewrite. JavaScript answers a miss with the template it made itself, and
// the entry is cached only when that equals the one made here, so a difference between the two scanners can cost a
// cache miss but never a wrong rewrite.
//
// Audit lines: when events go to a file and not to the store, a hit's two NDJSON lines are written here too, from
// templates JavaScript made for the entry and the session (audit.ts, LineTemplate): only the ids, the time, the
// correlationId and the query are filled in. JavaScript's own lines for that file come through here as well
// (appendLog), so one writer keeps a session's lines in order.
//
// Threads: the JS thread calls the exported functions, which queue commands (mutex + eventfd); the relay thread
// owns every adopted socket and posts notices back through one thread-safe function call per batch.
#define _GNU_SOURCE
#define NAPI_VERSION 8
#include <errno.h>
#include <fcntl.h>
#include <node_api.h>
#include <pthread.h>
#include <poll.h>
#include <stdio.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "addon.h"

#define MAX_MESSAGE_BYTES (64u * 1024 * 1024) // as wire.ts: what one client can make the proxy buffer
#define READ_BYTES (64 * 1024)
#define HIGH_WATER (256 * 1024) // bytes waiting for one side before the other side is no longer read
#define CACHE_ENTRIES 256        // statements per session, as SESSION_STATEMENTS in session.ts
#define CACHE_BUCKETS 512
#define NOTICE_DELAY_MS 5        // hit notices wait this long to share a batch; decision requests go at once
#define FIRST_PARAMETER 9001     // as literals.ts
#define MAX_LITERALS 1000
#define MAX_ERROR_BYTES (64 * 1024)
#define MAX_REFUSALS 16
#define CLOSE_DRAIN_MS 5000 // how long an ending session may take to write what it owes either side
#define NOTICE_BACKLOG (16 * 1024 * 1024) // notices JS has not taken yet, beyond which clients are not read

enum { SIDE_CLIENT = 0, SIDE_UPSTREAM = 1 };
#define LOG_FLUSH_BYTES (256 * 1024) // as audit.ts: lines are written every 50 ms or 256 KiB
#define LOG_DELAY_MS 50
#define MAX_TEMPLATE_SLOTS 32

enum { NOTICE_HIT = 1, NOTICE_DECIDE = 2, NOTICE_CLOSED = 3, NOTICE_CACHED = 4, NOTICE_LOG_CLOSED = 5, NOTICE_LOG_FAILED = 6 };
enum { CLOSE_TERMINATED = 0, CLOSE_CLIENT_GONE = 1, CLOSE_UPSTREAM_GONE = 2, CLOSE_PROTOCOL = 3, CLOSE_ABORTED = 4 };
enum { KEY_PARSE = 'P', KEY_QUERY = 'Q', KEY_TEMPLATE = 'T' };

typedef struct {
  uint8_t *data;
  size_t start, end, capacity;
} Buf;

static size_t buf_length(const Buf *b) { return b->end - b->start; }

static bool buf_reserve(Buf *b, size_t extra) {
  if (b->capacity - b->end >= extra) return true;
  if (b->start > 0) {
    memmove(b->data, b->data + b->start, b->end - b->start);
    b->end -= b->start;
    b->start = 0;
    if (b->capacity - b->end >= extra) return true;
  }
  size_t capacity = b->capacity ? b->capacity : 4096;
  while (capacity - b->end < extra) capacity *= 2;
  uint8_t *data = realloc(b->data, capacity);
  if (!data) return false;
  b->data = data;
  b->capacity = capacity;
  return true;
}

static bool buf_append(Buf *b, const void *bytes, size_t length) {
  if (!length) return true;
  if (!buf_reserve(b, length)) return false;
  memcpy(b->data + b->end, bytes, length);
  b->end += length;
  return true;
}

static void buf_consume(Buf *b, size_t length) {
  b->start += length;
  if (b->start == b->end) b->start = b->end = 0;
}

static void buf_free(Buf *b) {
  free(b->data);
  *b = (Buf){0};
}

static uint32_t read_be32(const uint8_t *p) { return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3]; }
static void write_be32(uint8_t *p, uint32_t v) {
  p[0] = v >> 24;
  p[1] = v >> 16;
  p[2] = v >> 8;
  p[3] = v;
}

static int64_t now_ms; // the relay thread's clock, read once per epoll wake-up

static int64_t monotonic_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

// ---- statement templates (a port of templateOf and fillTemplate in src/dataproxy/literals.ts) ----

typedef struct {
  uint32_t start, end; // a literal's bytes in the statement
} Literal;

static bool is_identifier_char(uint8_t c) {
  return (c >= '0' && c <= '9') || (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || c == '_' || c == '$' || c >= 0x80;
}
static bool is_digit(uint8_t c) { return c >= '0' && c <= '9'; }
static bool may_be_space(uint8_t c) { return c == ' ' || (c >= 0x09 && c <= 0x0d) || c >= 0x80; }

static bool contains(const uint8_t *s, size_t n, const char *needle) { return memmem(s, n, needle, strlen(needle)) != NULL; }

// Writes the template of `sql` to `out` and its literals to `literals`; false when the statement has none or is
// outside what the scanner owns (the same cases as templateOf's undefined).
static bool template_of(const uint8_t *sql, size_t n, Buf *out, Literal *literals, uint32_t *literal_count) {
  if (contains(sql, n, "--") || contains(sql, n, "/*") || memchr(sql, '$', n) || memchr(sql, '\\', n)) return false;
  out->start = out->end = 0;
  uint32_t count = 0;
  size_t last = 0, i = 0;
  char parameter[16];
#define AT(k) ((k) < n ? sql[k] : 0)
#define LITERAL(from, to)                                                                          \
  do {                                                                                             \
    if (count >= MAX_LITERALS) return false;                                                       \
    int written = snprintf(parameter, sizeof parameter, "$%u", FIRST_PARAMETER + count);           \
    if (!buf_append(out, sql + last, (from) - last) || !buf_append(out, parameter, (size_t)written)) return false; \
    literals[count++] = (Literal){(uint32_t)(from), (uint32_t)(to)};                               \
    last = (to);                                                                                   \
  } while (0)
  while (i < n) {
    uint8_t c = sql[i];
    if (c == '"') {
      i++;
      while (i < n && !(sql[i] == '"' && AT(i + 1) != '"')) i += sql[i] == '"' ? 2 : 1;
      if (i >= n) return false;
      i++;
      continue;
    }
    if (c == '\'') {
      if (i > 0 && (is_identifier_char(sql[i - 1]) || sql[i - 1] == '&')) return false;
      size_t start = i++;
      while (i < n && !(sql[i] == '\'' && AT(i + 1) != '\'')) i += sql[i] == '\'' ? 2 : 1;
      if (i >= n) return false;
      i++;
      size_t next = i;
      while (next < n && may_be_space(sql[next])) next++;
      if (AT(next) == '\'') return false;
      LITERAL(start, i);
      continue;
    }
    if (is_digit(c) && (i == 0 || (!is_identifier_char(sql[i - 1]) && sql[i - 1] != '.'))) {
      size_t start = i;
      while (i < n && is_digit(sql[i])) i++;
      if (AT(i) == '.') {
        i++;
        while (i < n && is_digit(sql[i])) i++;
      }
      if (AT(i) == 'e' || AT(i) == 'E') return false;
      if (i < n && (is_identifier_char(sql[i]) || sql[i] == '.')) return false;
      LITERAL(start, i);
      continue;
    }
    if (c == '.' && is_digit(AT(i + 1))) return false;
    if (is_identifier_char(c)) {
      while (i < n && is_identifier_char(sql[i])) i++;
      continue;
    }
    i++;
  }
#undef LITERAL
#undef AT
  if (count == 0) return false;
  if (!buf_append(out, sql + last, n - last)) return false;
  *literal_count = count;
  return true;
}

// Appends `rewritten` with its parameters replaced by the statement's literals; false when a literal's parameter is
// missing from it (the caller then asks JavaScript, as fillTemplate's undefined makes session.ts take the full path).
static bool fill_template(Buf *out, const uint8_t *rewritten, size_t n, const uint8_t *sql, const Literal *literals, uint32_t count) {
  static uint8_t seen[MAX_LITERALS];
  memset(seen, 0, count);
  uint32_t seen_count = 0;
  size_t last = 0;
  for (const uint8_t *p = memchr(rewritten, '$', n); p; p = memchr(p + 1, '$', n - (size_t)(p + 1 - rewritten))) {
    size_t at = (size_t)(p - rewritten), end = at + 1;
    uint64_t number = 0;
    while (end < n && is_digit(rewritten[end])) {
      if (number < UINT32_MAX) number = number * 10 + (rewritten[end] - '0');
      end++;
    }
    if (end == at + 1 || number < FIRST_PARAMETER || number - FIRST_PARAMETER >= count) continue;
    uint32_t index = (uint32_t)(number - FIRST_PARAMETER);
    if (!buf_append(out, rewritten + last, at - last) || !buf_append(out, sql + literals[index].start, literals[index].end - literals[index].start)) return false;
    last = end;
    if (!seen[index]) {
      seen[index] = 1;
      seen_count++;
    }
    if (end >= n) break;
    p = rewritten + end - 1;
  }
  if (seen_count != count) return false;
  return buf_append(out, rewritten + last, n - last);
}

// ---- audit lines ----

enum { SLOT_ID = 0, SLOT_EVENT_TIME = 1, SLOT_CORRELATION_ID = 2, SLOT_QUERY = 3 };

// An NDJSON line as the text between its varying values: text[i] precedes slot i, the last text ends the line.
// Encoded by relay.ts as [u32 slots][u8 kind × slots][(u32 length, bytes) × (slots + 1)], little-endian.
typedef struct {
  uint8_t *bytes;
  uint32_t slots;
  uint8_t kinds[MAX_TEMPLATE_SLOTS];
  uint32_t text_start[MAX_TEMPLATE_SLOTS + 1], text_length[MAX_TEMPLATE_SLOTS + 1];
  bool has_query;
} LineTemplate;

// Takes `bytes` (freed on failure); NULL for NULL or a malformed encoding.
static LineTemplate *template_parse(uint8_t *bytes, size_t length) {
  if (!bytes) return NULL;
  LineTemplate *t = calloc(1, sizeof *t);
  uint32_t slots = 0;
  if (t && length >= 4) memcpy(&slots, bytes, 4);
  size_t at = 4 + (size_t)slots;
  bool ok = t && length >= 4 && slots <= MAX_TEMPLATE_SLOTS && at <= length;
  for (uint32_t i = 0; ok && i <= slots; i++) {
    uint32_t n;
    if (i < slots) {
      t->kinds[i] = bytes[4 + i];
      ok = t->kinds[i] <= SLOT_QUERY;
      t->has_query = t->has_query || t->kinds[i] == SLOT_QUERY;
    }
    if (!ok || at + 4 > length) {
      ok = false;
      break;
    }
    memcpy(&n, bytes + at, 4);
    at += 4;
    if (n > length - at) {
      ok = false;
      break;
    }
    t->text_start[i] = (uint32_t)at;
    t->text_length[i] = n;
    at += n;
  }
  if (!ok || at != length) {
    free(t);
    free(bytes);
    return NULL;
  }
  t->bytes = bytes;
  t->slots = slots;
  return t;
}

static void template_free(LineTemplate *t) {
  if (!t) return;
  free(t->bytes);
  free(t);
}

static uint8_t random_pool[4096];
static size_t random_used = sizeof random_pool;

// A random (version 4) UUID, as crypto.randomUUID writes it.
static bool uuid_v4(char out[36]) {
  if (random_used + 16 > sizeof random_pool) {
    for (size_t filled = 0; filled < sizeof random_pool;) {
      ssize_t n = getrandom(random_pool + filled, sizeof random_pool - filled, 0);
      if (n < 0 && errno != EINTR) return false;
      if (n > 0) filled += (size_t)n;
    }
    random_used = 0;
  }
  uint8_t b[16];
  memcpy(b, random_pool + random_used, 16);
  memset(random_pool + random_used, 0, 16);
  random_used += 16;
  b[6] = (b[6] & 0x0f) | 0x40;
  b[8] = (b[8] & 0x3f) | 0x80;
  static const char hex[] = "0123456789abcdef";
  for (int i = 0, o = 0; i < 16; i++) {
    if (i == 4 || i == 6 || i == 8 || i == 10) out[o++] = '-';
    out[o++] = hex[b[i] >> 4];
    out[o++] = hex[b[i] & 15];
  }
  return true;
}

// ISO-8601 now with milliseconds, as Date.prototype.toISOString; formatted once per millisecond.
static const char *event_time_now(void) {
  static int64_t last_ms = -1;
  static char text[64];
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  int64_t ms = (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
  if (ms != last_ms) {
    last_ms = ms;
    time_t seconds = (time_t)(ms / 1000);
    struct tm tm;
    gmtime_r(&seconds, &tm);
    snprintf(text, sizeof text, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min,
             tm.tm_sec, (int)(ms % 1000));
  }
  return text;
}

// Well-formed UTF-8 (no overlong forms, surrogates or code points past U+10FFFF): what decodes in JavaScript to
// the same characters it encodes back to.
static bool utf8_valid(const uint8_t *s, size_t n) {
  for (size_t i = 0; i < n;) {
    uint8_t c = s[i];
    if (c < 0x80) {
      i++;
      continue;
    }
    size_t extra;
    uint32_t min, cp;
    if ((c & 0xe0) == 0xc0) extra = 1, min = 0x80, cp = c & 0x1f;
    else if ((c & 0xf0) == 0xe0) extra = 2, min = 0x800, cp = c & 0x0f;
    else if ((c & 0xf8) == 0xf0) extra = 3, min = 0x10000, cp = c & 0x07;
    else return false;
    if (n - i <= extra) return false;
    for (size_t k = 1; k <= extra; k++) {
      if ((s[i + k] & 0xc0) != 0x80) return false;
      cp = cp << 6 | (s[i + k] & 0x3f);
    }
    if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return false;
    i += extra + 1;
  }
  return true;
}

// A JSON string of well-formed UTF-8, escaped exactly as JSON.stringify escapes it.
static bool json_string(Buf *out, const uint8_t *s, size_t n) {
  if (!buf_reserve(out, n * 6 + 2)) return false;
  uint8_t *o = out->data + out->end;
  *o++ = '"';
  for (size_t i = 0; i < n; i++) {
    uint8_t c = s[i];
    if (c == '"' || c == '\\') {
      *o++ = '\\';
      *o++ = c;
    } else if (c < 0x20) {
      static const char shorts[] = "btn\0fr";
      *o++ = '\\';
      if (c >= 0x08 && c <= 0x0d && c != 0x0b) {
        *o++ = (uint8_t)shorts[c - 0x08];
      } else {
        static const char hex[] = "0123456789abcdef";
        *o++ = 'u';
        *o++ = '0';
        *o++ = '0';
        *o++ = (uint8_t)hex[c >> 4];
        *o++ = (uint8_t)hex[c & 15];
      }
    } else {
      *o++ = c;
    }
  }
  *o++ = '"';
  out->end = (size_t)(o - out->data);
  return true;
}

// One line from its template. `values` by slot kind (the query as raw bytes, the rest ASCII without escapes).
static bool template_fill(Buf *out, const LineTemplate *t, const char *values[3], const uint8_t *query, size_t query_length) {
  for (uint32_t i = 0; i <= t->slots; i++) {
    if (!buf_append(out, t->bytes + t->text_start[i], t->text_length[i])) return false;
    if (i == t->slots) break;
    if (t->kinds[i] == SLOT_QUERY) {
      if (!json_string(out, query, query_length)) return false;
      continue;
    }
    const char *v = values[t->kinds[i]];
    size_t n = t->kinds[i] == SLOT_EVENT_TIME ? strlen(v) : 36;
    if (!buf_append(out, "\"", 1) || !buf_append(out, v, n) || !buf_append(out, "\"", 1)) return false;
  }
  return true;
}

typedef struct Log {
  uint32_t id;
  int fd;
  Buf buf;
  int64_t since_ms;
  uint32_t refs; // JavaScript's, until closeLog, and each relay's that writes to it
  bool failed;
  bool closed_by_js;
  struct Log *next;
} Log;

static Log *logs;
static uint64_t lines_written; // hit events written here, for the events counter (atomic)

static Log *log_find(uint32_t id) {
  for (Log *l = logs; l; l = l->next)
    if (l->id == id) return l;
  return NULL;
}

static void notice_header(uint8_t type, uint32_t relay);
static void notice_u32(uint32_t value);

static void log_flush(Log *l) {
  Buf *b = &l->buf;
  while (buf_length(b)) {
    ssize_t n = write(l->fd, b->data + b->start, buf_length(b));
    if (n > 0) {
      buf_consume(b, (size_t)n);
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      // A pipe (stdout) that is full: the audit trail is not dropped, its reader sets the pace.
      struct pollfd p = {.fd = l->fd, .events = POLLOUT};
      poll(&p, 1, 1000);
      continue;
    }
    if (!l->failed) {
      l->failed = true;
      notice_header(NOTICE_LOG_FAILED, l->id);
      notice_u32((uint32_t)errno);
    }
    b->start = b->end = 0;
  }
}

static void log_unref(Log *l) {
  if (!l || --l->refs) return;
  log_flush(l);
  for (Log **p = &logs; *p; p = &(*p)->next) {
    if (*p == l) {
      *p = l->next;
      break;
    }
  }
  notice_header(NOTICE_LOG_CLOSED, l->id);
  buf_free(&l->buf);
  free(l);
}

static bool log_append(Log *l, const uint8_t *bytes, size_t length) {
  if (!buf_length(&l->buf)) l->since_ms = now_ms;
  if (!buf_append(&l->buf, bytes, length)) return false;
  if (buf_length(&l->buf) >= LOG_FLUSH_BYTES) log_flush(l);
  return true;
}

// ---- sessions ----

typedef struct {
  uint64_t hash;
  uint8_t kind;
  uint8_t *key;
  size_t key_length;
  uint8_t *rewritten; // NULL: the statement goes as it is
  size_t rewritten_length;
  int64_t deadline_ms; // 0: none
  LineTemplate *line;  // its policy.resolution line (NULL: JavaScript writes its events from a notice)
} Entry;

typedef struct Relay Relay;
typedef struct {
  Relay *relay;
  int side; // -1: the wake-up eventfd
} Endpoint;

typedef struct {
  uint8_t *marker;
  size_t marker_length;
  uint8_t *error;
  size_t error_length;
} Refusal;

struct Relay {
  uint32_t id;
  int fd[2];
  Endpoint endpoint[2];
  uint32_t interest[2];
  Buf in[2];  // read from a side, not yet framed
  Buf out[2]; // to be written to a side
  size_t streaming[2]; // bytes of a message from a side still to be forwarded as they arrive
  bool dead;
  bool closing; // ending: nothing is read, what is owed to either side is written (relay_end)
  int close_reason;
  int64_t close_deadline_ms;
  uint32_t max_query_bytes; // longer statements are asked about (JavaScript refuses them)
  // A decision request is out: the client's messages wait, from the one asked about on.
  bool awaiting;
  uint8_t pending_kind;
  Buf pending_key;
  Entry entries[CACHE_ENTRIES];
  uint32_t entry_count;
  uint16_t buckets[CACHE_BUCKETS]; // entry index + 1, 0: empty
  uint32_t cache_epoch;
  Refusal refusals[MAX_REFUSALS]; // oldest first
  uint32_t refusal_count;
  Log *log;                // where hits' lines go (NULL: JavaScript writes every event)
  LineTemplate *auth_line; // the session's user.authentication line
  Relay *next;
};

static int relay_epoll = -1;
static int relay_wake = -1;
static pthread_mutex_t relay_lock = PTHREAD_MUTEX_INITIALIZER;
static napi_threadsafe_function deliver;
static Relay *relays;       // live sessions
static Relay *dead_relays;  // freed after the epoll batch that may still name them
static uint32_t cache_epoch; // bumped by forget(): every session's cache is cleared before its next lookup
static uint32_t closing_count; // sessions writing what they owe before they close (relay_end)

// Notices: records in one byte buffer, [type u8][relay u32][...], little-endian as this host; read by relay.ts.
static Buf notices;          // relay thread only
static Buf delivered;        // under relay_lock: handed to JS, not yet taken
static bool notices_urgent;
static int64_t notices_since_ms;
static bool notices_signalled;
static bool backlogged; // relay thread: JS is behind on notices
static bool notices_lost; // relay thread: a batch could not be queued (out of memory)

static void notice_header(uint8_t type, uint32_t relay) {
  if (!buf_length(&notices)) notices_since_ms = now_ms;
  uint8_t header[5] = {type};
  memcpy(header + 1, &relay, 4);
  buf_append(&notices, header, 5);
}
static void notice_u32(uint32_t value) { buf_append(&notices, &value, 4); }

static void flush_notices(void) {
  if (!buf_length(&notices) || (!notices_urgent && now_ms - notices_since_ms < NOTICE_DELAY_MS)) return;
  notices_urgent = false;
  pthread_mutex_lock(&relay_lock);
  bool appended = buf_append(&delivered, notices.data + notices.start, buf_length(&notices));
  bool signal = appended && !notices_signalled;
  if (signal) notices_signalled = true;
  backlogged = delivered.end - delivered.start > NOTICE_BACKLOG;
  pthread_mutex_unlock(&relay_lock);
  // A notice that cannot be queued (out of memory) would lose audit events: the sessions that wrote it end instead.
  if (!appended) notices_lost = true;
  notices.start = notices.end = 0;
  if (signal) napi_call_threadsafe_function(deliver, NULL, napi_tsfn_nonblocking);
}

static void set_interest(Relay *r, int side, uint32_t interest) {
  if (r->interest[side] == interest || r->fd[side] < 0) return;
  struct epoll_event ev = {.events = interest, .data.ptr = &r->endpoint[side]};
  epoll_ctl(relay_epoll, r->interest[side] == UINT32_MAX ? EPOLL_CTL_ADD : EPOLL_CTL_MOD, r->fd[side], &ev);
  r->interest[side] = interest;
}

static void update_interest(Relay *r) {
  for (int side = 0; side < 2; side++) {
    bool read = !r->closing && buf_length(&r->out[!side]) < HIGH_WATER && buf_length(&r->in[side]) < MAX_MESSAGE_BYTES + READ_BYTES;
    if (side == SIDE_CLIENT && ((r->awaiting && buf_length(&r->in[side]) >= HIGH_WATER) || backlogged)) read = false;
    set_interest(r, side, (read ? EPOLLIN : 0) | (buf_length(&r->out[side]) ? EPOLLOUT : 0));
  }
}

static void clear_cache(Relay *r) {
  for (uint32_t i = 0; i < r->entry_count; i++) {
    free(r->entries[i].key);
    free(r->entries[i].rewritten);
    template_free(r->entries[i].line);
  }
  r->entry_count = 0;
  memset(r->buckets, 0, sizeof r->buckets);
}

static void drop_refusal(Relay *r, uint32_t index) {
  free(r->refusals[index].marker);
  free(r->refusals[index].error);
  memmove(&r->refusals[index], &r->refusals[index + 1], (--r->refusal_count - index) * sizeof *r->refusals);
}

static void clear_refusals(Relay *r) {
  while (r->refusal_count) drop_refusal(r, r->refusal_count - 1);
}

static void relay_close(Relay *r, int reason) {
  if (r->dead) return;
  r->dead = true;
  if (r->closing) closing_count--;
  for (int side = 0; side < 2; side++) {
    if (r->fd[side] < 0) continue;
    if (r->closing) shutdown(r->fd[side], SHUT_WR);
    epoll_ctl(relay_epoll, EPOLL_CTL_DEL, r->fd[side], NULL);
    close(r->fd[side]);
    r->fd[side] = -1;
  }
  for (Relay **p = &relays; *p; p = &(*p)->next) {
    if (*p == r) {
      *p = r->next;
      break;
    }
  }
  r->next = dead_relays;
  dead_relays = r;
  log_unref(r->log);
  r->log = NULL;
  notice_header(NOTICE_CLOSED, r->id);
  uint8_t why = (uint8_t)reason;
  buf_append(&notices, &why, 1);
}

static void close_side(Relay *r, int side) {
  if (r->fd[side] < 0) return;
  epoll_ctl(relay_epoll, EPOLL_CTL_DEL, r->fd[side], NULL);
  close(r->fd[side]);
  r->fd[side] = -1;
  r->out[side].start = r->out[side].end = 0;
}

static bool owes_output(const Relay *r) {
  for (int side = 0; side < 2; side++)
    if (r->fd[side] >= 0 && buf_length(&r->out[side])) return true;
  return false;
}

static void flush_side(Relay *r, int side);
static void update_interest(Relay *r);

// Ends a session: nothing more is read; what is already framed for either side (results, a FATAL error, a
// Terminate) is written first, for up to CLOSE_DRAIN_MS, then both sockets close (relay_close, at once, is for a
// socket that failed).
static void relay_end(Relay *r, int reason) {
  if (r->dead || r->closing) return;
  r->closing = true;
  r->close_reason = reason;
  r->close_deadline_ms = now_ms + CLOSE_DRAIN_MS;
  closing_count++;
  for (int side = 0; side < 2 && !r->dead; side++)
    if (r->fd[side] >= 0 && buf_length(&r->out[side])) flush_side(r, side);
  if (r->dead) return;
  if (!owes_output(r)) relay_close(r, reason);
  else update_interest(r);
}

static void bury_dead(void) {
  while (dead_relays) {
    Relay *r = dead_relays;
    dead_relays = r->next;
    for (int side = 0; side < 2; side++) {
      buf_free(&r->in[side]);
      buf_free(&r->out[side]);
    }
    buf_free(&r->pending_key);
    clear_cache(r);
    clear_refusals(r);
    template_free(r->auth_line);
    free(r);
  }
}

static Relay *relay_find(uint32_t id) {
  for (Relay *r = relays; r; r = r->next)
    if (r->id == id) return r;
  return NULL;
}

// A FATAL ErrorResponse to the client, then the end of the session (as session.ts's fatal).
static void relay_fatal(Relay *r, const char *sqlstate, const char *text) {
  uint8_t body[512];
  int n = snprintf((char *)body + 5, sizeof body - 6, "SFATAL%cVFATAL%cC%s%cM%s%c", 0, 0, sqlstate, 0, text, 0);
  if (n < 0 || (size_t)n > sizeof body - 6) n = (int)(sizeof body - 6);
  body[5 + n] = 0;
  body[0] = 'E';
  write_be32(body + 1, (uint32_t)n + 5);
  // Not in the middle of a message the client is being sent: it could not read what follows.
  if (!r->streaming[SIDE_UPSTREAM]) buf_append(&r->out[SIDE_CLIENT], body, (size_t)n + 6);
  relay_end(r, CLOSE_PROTOCOL);
}

static const uint8_t TERMINATE[5] = {'X', 0, 0, 0, 4};

// A Terminate for the database, unless a message to it is half sent (it then sees the connection end instead).
static void terminate_upstream(Relay *r) {
  if (r->fd[SIDE_UPSTREAM] >= 0 && !r->streaming[SIDE_CLIENT]) buf_append(&r->out[SIDE_UPSTREAM], TERMINATE, sizeof TERMINATE);
}

static uint64_t hash_bytes(uint8_t kind, const uint8_t *bytes, size_t length) {
  uint64_t h = 1469598103934665603ull ^ kind;
  for (size_t i = 0; i < length; i++) h = (h ^ bytes[i]) * 1099511628211ull;
  return h;
}

static Entry *cache_find(Relay *r, uint8_t kind, const uint8_t *key, size_t length) {
  if (r->cache_epoch != __atomic_load_n(&cache_epoch, __ATOMIC_ACQUIRE)) {
    clear_cache(r);
    r->cache_epoch = __atomic_load_n(&cache_epoch, __ATOMIC_ACQUIRE);
    return NULL;
  }
  uint64_t h = hash_bytes(kind, key, length);
  for (uint32_t b = h % CACHE_BUCKETS, probes = 0; probes < CACHE_BUCKETS && r->buckets[b]; b = (b + 1) % CACHE_BUCKETS, probes++) {
    Entry *e = &r->entries[r->buckets[b] - 1];
    if (e->hash == h && e->kind == kind && e->key_length == length && memcmp(e->key, key, length) == 0) {
      if (e->deadline_ms && now_ms >= e->deadline_ms) return NULL;
      return e;
    }
  }
  return NULL;
}

// A hit past its deadline is asked about again; the fresh answer replaces it under the same key. Returns the
// entry's index, or -1 when it could not be kept.
static int cache_put(Relay *r, uint8_t kind, const uint8_t *key, size_t length, const uint8_t *rewritten, size_t rewritten_length, bool unchanged, int64_t deadline_ms, LineTemplate *line) {
  uint64_t h = hash_bytes(kind, key, length);
  uint32_t b = h % CACHE_BUCKETS;
  for (uint32_t probes = 0; probes < CACHE_BUCKETS && r->buckets[b]; b = (b + 1) % CACHE_BUCKETS, probes++) {
    Entry *e = &r->entries[r->buckets[b] - 1];
    if (e->hash == h && e->kind == kind && e->key_length == length && memcmp(e->key, key, length) == 0) break;
  }
  Entry *e;
  if (r->buckets[b]) {
    e = &r->entries[r->buckets[b] - 1];
    free(e->rewritten);
    template_free(e->line);
  } else {
    if (r->entry_count == CACHE_ENTRIES) {
      clear_cache(r);
      b = h % CACHE_BUCKETS;
    }
    e = &r->entries[r->entry_count++];
    r->buckets[b] = (uint16_t)r->entry_count;
    e->key = malloc(length ? length : 1);
    if (e->key) memcpy(e->key, key, length);
  }
  e->hash = h;
  e->kind = kind;
  e->key_length = length;
  e->rewritten = NULL;
  e->rewritten_length = 0;
  if (!unchanged) {
    e->rewritten = malloc(rewritten_length ? rewritten_length : 1);
    if (e->rewritten) memcpy(e->rewritten, rewritten, rewritten_length);
    e->rewritten_length = rewritten_length;
  }
  e->deadline_ms = deadline_ms;
  e->line = line;
  // Out of memory: no entry is better than one that forwards a statement unchanged.
  if (!e->key || (!unchanged && !e->rewritten)) {
    e->hash = ~h;
    e->key_length = SIZE_MAX;
    return -1;
  }
  return (int)(e - r->entries);
}

// ---- client → upstream ----

static Buf scratch_template;
static Buf scratch_message;
static Literal scratch_literals[MAX_LITERALS];

static bool append_message(Buf *out, uint8_t type, const uint8_t *parts[], const size_t lengths[], int count) {
  size_t length = 4;
  for (int i = 0; i < count; i++) length += lengths[i];
  if (length > MAX_MESSAGE_BYTES) return false;
  uint8_t header[5] = {type};
  write_be32(header + 1, (uint32_t)length);
  if (!buf_append(out, header, 5)) return false;
  for (int i = 0; i < count; i++)
    if (!buf_append(out, parts[i], lengths[i])) return false;
  return true;
}

static void request_decision(Relay *r, const uint8_t *message, size_t length, uint8_t kind, const uint8_t *key, size_t key_length) {
  r->awaiting = true;
  r->pending_kind = kind;
  r->pending_key.start = r->pending_key.end = 0;
  if (key) buf_append(&r->pending_key, key, key_length);
  notice_header(NOTICE_DECIDE, r->id);
  notice_u32((uint32_t)length);
  buf_append(&notices, message, length);
  notices_urgent = true;
}

static Buf scratch_lines;

// The two events of a cached statement: written here when the session and the entry have line templates, else
// reported to JavaScript (`text`: the statement, when the entry is a template).
static void report_hit(Relay *r, uint32_t entry, const uint8_t *query, size_t query_length, bool templated) {
  Entry *e = &r->entries[entry];
  if (r->log && r->auth_line && e->line && (!e->line->has_query || utf8_valid(query, query_length))) {
    char correlation_id[36], authentication_id[36], resolution_id[36];
    if (uuid_v4(correlation_id) && uuid_v4(authentication_id) && uuid_v4(resolution_id)) {
      scratch_lines.start = scratch_lines.end = 0;
      const char *authentication[3] = {authentication_id, event_time_now(), correlation_id};
      bool filled = template_fill(&scratch_lines, r->auth_line, authentication, NULL, 0);
      const char *resolution[3] = {resolution_id, event_time_now(), correlation_id};
      filled = filled && template_fill(&scratch_lines, e->line, resolution, query, query_length);
      if (filled && log_append(r->log, scratch_lines.data, buf_length(&scratch_lines))) {
        __atomic_add_fetch(&lines_written, 1, __ATOMIC_RELAXED);
        return;
      }
    }
  }
  notice_header(NOTICE_HIT, r->id);
  notice_u32(entry);
  notice_u32(templated ? (uint32_t)query_length : 0);
  if (templated) buf_append(&notices, query, query_length);
}

// One whole Query, Parse or FunctionCall message: forwarded from the cache, or asked about. False: asked (the
// message stays in the input until the answer).
static bool client_statement(Relay *r, const uint8_t *m, size_t total) {
  Buf *out = &r->out[SIDE_UPSTREAM];
  size_t owed = buf_length(out);
  uint8_t type = m[0];
  const uint8_t *body = m + 5;
  size_t body_length = total - 5;
  if (type == 'F') {
    request_decision(r, m, total, 0, NULL, 0);
    return false;
  }
  uint32_t entry;
  const uint8_t *query;
  size_t query_length;
  bool templated = false;
  bool sent;
  if (type == 'Q') {
    query = body;
    query_length = body_length ? body_length - 1 : 0;
    // Over the proxy's length limit: JavaScript refuses it (a template's literals can make a hit longer than its miss).
    if (query_length > r->max_query_bytes) {
      request_decision(r, m, total, 0, NULL, 0);
      return false;
    }
    uint32_t literal_count = 0;
    templated = template_of(body, query_length, &scratch_template, scratch_literals, &literal_count);
    uint8_t kind = templated ? KEY_TEMPLATE : KEY_QUERY;
    const uint8_t *key = templated ? scratch_template.data : body;
    size_t key_length = templated ? buf_length(&scratch_template) : query_length;
    Entry *e = cache_find(r, kind, key, key_length);
    if (!e) {
      request_decision(r, m, total, kind, key, key_length);
      return false;
    }
    entry = (uint32_t)(e - r->entries);
    if (!e->rewritten) {
      sent = buf_append(out, m, total);
    } else if (!templated) {
      const uint8_t *parts[] = {e->rewritten, (const uint8_t *)"\0"};
      size_t lengths[] = {e->rewritten_length, 1};
      sent = append_message(out, 'Q', parts, lengths, 2);
    } else {
      scratch_message.start = scratch_message.end = 0;
      sent = fill_template(&scratch_message, e->rewritten, e->rewritten_length, body, scratch_literals, literal_count);
      const uint8_t *parts[] = {scratch_message.data, (const uint8_t *)"\0"};
      size_t lengths[] = {buf_length(&scratch_message), 1};
      sent = sent && append_message(out, 'Q', parts, lengths, 2);
    }
  } else {
    // Parse: name, query, parameter types. The key is everything after the name.
    const uint8_t *name_end = memchr(body, 0, body_length);
    const uint8_t *sql = name_end ? name_end + 1 : NULL;
    const uint8_t *sql_end = sql ? memchr(sql, 0, body_length - (size_t)(sql - body)) : NULL;
    if (!sql_end) {
      request_decision(r, m, total, 0, NULL, 0); // JavaScript reports the malformed message
      return false;
    }
    if ((size_t)(sql_end - sql) > r->max_query_bytes) {
      request_decision(r, m, total, 0, NULL, 0);
      return false;
    }
    size_t key_length = body_length - (size_t)(sql - body);
    Entry *e = cache_find(r, KEY_PARSE, sql, key_length);
    if (!e) {
      request_decision(r, m, total, KEY_PARSE, sql, key_length);
      return false;
    }
    entry = (uint32_t)(e - r->entries);
    query = sql;
    query_length = (size_t)(sql_end - sql);
    if (!e->rewritten) {
      sent = buf_append(out, m, total);
    } else {
      const uint8_t *parts[] = {body, e->rewritten, sql_end};
      size_t lengths[] = {(size_t)(sql - body), e->rewritten_length, body_length - (size_t)(sql_end - body)};
      sent = append_message(out, 'P', parts, lengths, 3);
    }
  }
  if (!sent) {
    // A literal missing from the rewrite, a message that would be too long, or no memory: whatever was written of
    // it is taken back, and JavaScript decides (and reports) the statement as on a miss.
    out->end = out->start + owed;
    request_decision(r, m, total, 0, NULL, 0);
    return false;
  }
  report_hit(r, entry, query, query_length, templated);
  return true;
}

// Frames what the client sent: whole statements are looked into, every other message is forwarded as it arrives.
// Passes on `length` bytes of what `side` sent, as many as have arrived; the rest streams through as it arrives.
static void pass_on(Relay *r, int side, size_t length) {
  Buf *in = &r->in[side];
  size_t n = buf_length(in) < length ? buf_length(in) : length;
  buf_append(&r->out[!side], in->data + in->start, n);
  buf_consume(in, n);
  r->streaming[side] = length - n;
}

static void client_input(Relay *r) {
  Buf *in = &r->in[SIDE_CLIENT];
  Buf *out = &r->out[SIDE_UPSTREAM];
  while (!r->awaiting && !r->dead) {
    size_t available = buf_length(in);
    const uint8_t *p = in->data + in->start;
    if (r->streaming[SIDE_CLIENT]) {
      if (!available) return;
      pass_on(r, SIDE_CLIENT, r->streaming[SIDE_CLIENT]);
      continue;
    }
    if (available < 5) return;
    uint32_t length = read_be32(p + 1);
    if (length < 4 || length > MAX_MESSAGE_BYTES) {
      char text[96];
      snprintf(text, sizeof text, "invalid message length %u at offset 0", length);
      relay_fatal(r, "08P01", text);
      return;
    }
    size_t total = (size_t)length + 1;
    uint8_t type = p[0];
    if (type == 'X') {
      if (available < total) return;
      buf_append(out, p, total);
      relay_end(r, CLOSE_TERMINATED);
      return;
    }
    if (type != 'Q' && type != 'P' && type != 'F') {
      pass_on(r, SIDE_CLIENT, total);
      continue;
    }
    if (available < total) {
      buf_reserve(in, total - available);
      return;
    }
    if (!client_statement(r, p, total)) return;
    buf_consume(in, total);
  }
}

// ---- upstream → client ----

static Refusal *refusal_for(Relay *r, const uint8_t *message, size_t length) {
  for (uint32_t i = 0; i < r->refusal_count; i++)
    if (memmem(message, length, r->refusals[i].marker, r->refusals[i].marker_length)) return &r->refusals[i];
  return NULL;
}

static void upstream_input(Relay *r) {
  Buf *in = &r->in[SIDE_UPSTREAM];
  Buf *out = &r->out[SIDE_CLIENT];
  while (!r->dead) {
    size_t available = buf_length(in);
    const uint8_t *p = in->data + in->start;
    if (r->streaming[SIDE_UPSTREAM]) {
      if (!available) return;
      pass_on(r, SIDE_UPSTREAM, r->streaming[SIDE_UPSTREAM]);
      continue;
    }
    if (available < 5) return;
    uint32_t length = read_be32(p + 1);
    if (length < 4 || length > MAX_MESSAGE_BYTES) {
      relay_fatal(r, "08P01", "the database sent a malformed message");
      return;
    }
    size_t total = (size_t)length + 1;
    if (p[0] == 'E' && r->refusal_count && total <= MAX_ERROR_BYTES) {
      if (available < total) return;
      Refusal *refusal = refusal_for(r, p, total);
      if (refusal) {
        buf_append(out, refusal->error, refusal->error_length);
        // One marker answers once.
        drop_refusal(r, (uint32_t)(refusal - r->refusals));
      } else {
        buf_append(out, p, total);
      }
      buf_consume(in, total);
      continue;
    }
    pass_on(r, SIDE_UPSTREAM, total);
  }
}

// ---- socket I/O ----

static void flush_side(Relay *r, int side) {
  Buf *out = &r->out[side];
  while (buf_length(out)) {
    ssize_t n = send(r->fd[side], out->data + out->start, buf_length(out), MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n > 0) {
      buf_consume(out, (size_t)n);
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;
    // This side is gone; the other still gets what it is owed.
    close_side(r, side);
    relay_end(r, side == SIDE_CLIENT ? CLOSE_CLIENT_GONE : CLOSE_UPSTREAM_GONE);
    return;
  }
}

static void readable(Relay *r, int side) {
  Buf *in = &r->in[side];
  if (!buf_reserve(in, READ_BYTES)) {
    relay_fatal(r, "53200", "out of memory");
    return;
  }
  ssize_t n = recv(r->fd[side], in->data + in->end, in->capacity - in->end, MSG_DONTWAIT);
  if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) return;
  if (n <= 0) {
    // A client that goes away: the backend is told with a Terminate rather than an unexpected EOF. A database that
    // goes away: the client still gets what was read from it (its FATAL error, say).
    if (side == SIDE_CLIENT) terminate_upstream(r);
    if (n < 0) close_side(r, side);
    relay_end(r, side == SIDE_CLIENT ? CLOSE_CLIENT_GONE : CLOSE_UPSTREAM_GONE);
    return;
  }
  in->end += (size_t)n;
  if (side == SIDE_CLIENT) client_input(r);
  else upstream_input(r);
  if (!r->dead) flush_side(r, !side);
}

// ---- commands (JS → relay thread) ----

enum { CMD_ADOPT, CMD_DECIDED, CMD_CLOSE, CMD_LOG_OPEN, CMD_LOG_APPEND, CMD_LOG_CLOSE };

typedef struct {
  int type;
  uint32_t relay; // LOG_*: the log's id
  uint32_t log;   // ADOPT: the log its hits' lines go to (0: none)
  int fd[2];
  // ADOPT: client bytes already read, bytes for the client, the user.authentication line template;
  // DECIDED: send, marker, error, key, rewritten, the policy.resolution line template; LOG_APPEND: lines
  uint8_t *bytes[6];
  size_t lengths[6];
  bool unchanged;    // DECIDED: the statement goes as it is (no rewritten text)
  bool cache;
  int64_t deadline_in_ms; // DECIDED: < 0 none
  uint32_t max_query_bytes; // ADOPT
} Command;

typedef struct {
  Command *items;
  size_t count, capacity;
} Commands;

static Commands commands;
static bool wake_pending;

static void command_free(Command *c) {
  for (int i = 0; i < 6; i++) free(c->bytes[i]);
}

static void adopt(Command *c) {
  Relay *r = calloc(1, sizeof *r);
  if (!r) {
    close(c->fd[0]);
    close(c->fd[1]);
    notice_header(NOTICE_CLOSED, c->relay);
    uint8_t why = CLOSE_ABORTED;
    buf_append(&notices, &why, 1);
    return;
  }
  r->id = c->relay;
  r->max_query_bytes = c->max_query_bytes;
  r->cache_epoch = __atomic_load_n(&cache_epoch, __ATOMIC_ACQUIRE);
  for (int side = 0; side < 2; side++) {
    r->fd[side] = c->fd[side];
    r->endpoint[side] = (Endpoint){r, side};
    r->interest[side] = UINT32_MAX;
  }
  r->next = relays;
  relays = r;
  r->log = c->log ? log_find(c->log) : NULL;
  if (r->log) r->log->refs++;
  r->auth_line = template_parse(c->bytes[2], c->lengths[2]);
  c->bytes[2] = NULL;
  buf_append(&r->in[SIDE_CLIENT], c->bytes[0], c->lengths[0]);
  buf_append(&r->out[SIDE_CLIENT], c->bytes[1], c->lengths[1]);
  client_input(r);
  if (!r->dead) flush_side(r, SIDE_UPSTREAM);
  if (!r->dead) flush_side(r, SIDE_CLIENT);
  if (!r->dead) update_interest(r);
}

static void decided(Command *c) {
  Relay *r = relay_find(c->relay);
  if (!r || !r->awaiting || r->closing) return;
  Buf *in = &r->in[SIDE_CLIENT];
  const uint8_t *m = in->data + in->start;
  size_t total = (size_t)read_be32(m + 1) + 1;
  if (c->bytes[0]) buf_append(&r->out[SIDE_UPSTREAM], c->bytes[0], c->lengths[0]);
  else buf_append(&r->out[SIDE_UPSTREAM], m, total);
  if (c->bytes[1] && c->bytes[2]) {
    // A refused statement in an aborted transaction gets upstream's "commands ignored" error, not its marker's:
    // such markers are dropped oldest first.
    if (r->refusal_count == MAX_REFUSALS) drop_refusal(r, 0);
    r->refusals[r->refusal_count++] = (Refusal){c->bytes[1], c->lengths[1], c->bytes[2], c->lengths[2]};
    c->bytes[1] = c->bytes[2] = NULL;
  }
  // Cached only when JavaScript's key is the one made here (see the file comment).
  if (c->cache && r->pending_kind) {
    const uint8_t *key = r->pending_key.data + r->pending_key.start;
    size_t key_length = buf_length(&r->pending_key);
    bool same = r->pending_kind == KEY_PARSE
      ? c->lengths[3] < key_length && memcmp(key, c->bytes[3], c->lengths[3]) == 0 && key[c->lengths[3]] == 0
      : c->lengths[3] == key_length && memcmp(key, c->bytes[3], key_length) == 0;
    LineTemplate *line = same ? template_parse(c->bytes[5], c->lengths[5]) : NULL;
    if (same) c->bytes[5] = NULL;
    int entry = same ? cache_put(r, r->pending_kind, key, key_length, c->bytes[4], c->lengths[4], c->unchanged, c->deadline_in_ms < 0 ? 0 : now_ms + c->deadline_in_ms, line) : -1;
    // JavaScript learns the index its decision is kept at: later hits name it.
    if (entry >= 0) {
      notice_header(NOTICE_CACHED, r->id);
      notice_u32((uint32_t)entry);
    }
  }
  buf_consume(in, total);
  r->awaiting = false;
  client_input(r);
  if (!r->dead) flush_side(r, SIDE_UPSTREAM);
  if (!r->dead) flush_side(r, SIDE_CLIENT);
  if (!r->dead) update_interest(r);
}

static void run_command(Command *c) {
  switch (c->type) {
    case CMD_ADOPT:
      adopt(c);
      break;
    case CMD_DECIDED:
      decided(c);
      break;
    case CMD_CLOSE: {
      Relay *r = relay_find(c->relay);
      if (r) {
        if (c->bytes[0] && !r->streaming[SIDE_UPSTREAM]) buf_append(&r->out[SIDE_CLIENT], c->bytes[0], c->lengths[0]);
        terminate_upstream(r);
        relay_end(r, CLOSE_ABORTED);
      }
      break;
    }
    case CMD_LOG_OPEN: {
      Log *l = calloc(1, sizeof *l);
      if (!l) {
        notice_header(NOTICE_LOG_FAILED, c->relay);
        notice_u32(ENOMEM);
        break;
      }
      *l = (Log){.id = c->relay, .fd = c->fd[0], .refs = 1, .next = logs};
      logs = l;
      break;
    }
    case CMD_LOG_APPEND: {
      Log *l = log_find(c->relay);
      if (l) log_append(l, c->bytes[0], c->lengths[0]);
      break;
    }
    case CMD_LOG_CLOSE: {
      Log *l = log_find(c->relay);
      if (l && !l->closed_by_js) {
        l->closed_by_js = true;
        log_flush(l);
        log_unref(l);
      }
      break;
    }
  }
  command_free(c);
}

static void *relay_main(void *unused) {
  (void)unused;
  struct epoll_event ready[256];
  Commands taken = {0};
  Endpoint wake = {NULL, -1};
  struct epoll_event ev = {.events = EPOLLIN, .data.ptr = &wake};
  epoll_ctl(relay_epoll, EPOLL_CTL_ADD, relay_wake, &ev);
  for (;;) {
    bool logging = false;
    for (Log *l = logs; l && !logging; l = l->next) logging = buf_length(&l->buf) > 0;
    int timeout = buf_length(&notices) ? NOTICE_DELAY_MS : logging ? LOG_DELAY_MS : -1;
    if (closing_count && (timeout < 0 || timeout > 100)) timeout = 100;
    int n = epoll_wait(relay_epoll, ready, 256, timeout);
    now_ms = monotonic_ms();
    for (int i = 0; i < n; i++) {
      Endpoint *e = ready[i].data.ptr;
      if (e->side < 0) {
        uint64_t drained;
        if (read(relay_wake, &drained, sizeof drained) < 0) { /* nothing to drain */ }
        pthread_mutex_lock(&relay_lock);
        Commands swap = commands;
        commands = taken;
        taken = swap;
        commands.count = 0;
        wake_pending = false;
        pthread_mutex_unlock(&relay_lock);
        for (size_t k = 0; k < taken.count; k++) run_command(&taken.items[k]);
        taken.count = 0;
        if (backlogged) {
          pthread_mutex_lock(&relay_lock);
          backlogged = delivered.end - delivered.start > NOTICE_BACKLOG;
          pthread_mutex_unlock(&relay_lock);
          if (!backlogged)
            for (Relay *r = relays; r; r = r->next) update_interest(r);
        }
        continue;
      }
      Relay *r = e->relay;
      if (r->dead || r->fd[e->side] < 0) continue;
      uint32_t what = ready[i].events;
      if (what & (EPOLLOUT | EPOLLERR | EPOLLHUP) && buf_length(&r->out[e->side])) flush_side(r, e->side);
      if (r->dead) continue;
      if (r->closing) {
        // Error and hang-up are reported whatever the interest: a side that owes nothing closes now.
        if (what & (EPOLLERR | EPOLLHUP) && !buf_length(&r->out[e->side])) close_side(r, e->side);
        if (!owes_output(r)) relay_close(r, r->close_reason);
        else update_interest(r);
        continue;
      }
      if (what & (EPOLLIN | EPOLLERR | EPOLLHUP)) readable(r, e->side);
      if (!r->dead) update_interest(r);
    }
    for (Log *l = logs; l; l = l->next)
      if (buf_length(&l->buf) && now_ms - l->since_ms >= LOG_DELAY_MS) log_flush(l);
    flush_notices();
    // Every session when notices were lost (see flush_notices), and ending ones past their time.
    for (Relay *r = relays, *next; r; r = next) {
      next = r->next;
      if (notices_lost) relay_close(r, CLOSE_ABORTED);
      else if (r->closing && now_ms >= r->close_deadline_ms) relay_close(r, r->close_reason);
    }
    notices_lost = false;
    bury_dead();
  }
  return NULL;
}

// ---- the JS side ----

/** On the JS thread: every queued notice, as one Buffer, to the callback given to start(). */
static void call_js(napi_env env, napi_value callback, void *context, void *data) {
  (void)context;
  (void)data;
  pthread_mutex_lock(&relay_lock);
  Buf batch = delivered;
  delivered = (Buf){0};
  notices_signalled = false;
  bool wake = !wake_pending && buf_length(&batch) > NOTICE_BACKLOG;
  if (wake) wake_pending = true;
  pthread_mutex_unlock(&relay_lock);
  if (wake) {
    // The relay thread stopped reading clients while JS was behind: it looks again.
    wake_thread(relay_wake);
  }
  if (!env || !buf_length(&batch)) {
    buf_free(&batch);
    return;
  }
  napi_handle_scope scope;
  napi_open_handle_scope(env, &scope);
  napi_value bytes, global;
  void *copy;
  napi_create_buffer_copy(env, buf_length(&batch), batch.data + batch.start, &copy, &bytes);
  buf_free(&batch);
  napi_get_global(env, &global);
  napi_call_function(env, global, callback, 1, &bytes, NULL);
  napi_close_handle_scope(env, scope);
}

static bool send_command(Command *c) {
  pthread_mutex_lock(&relay_lock);
  bool queued = true;
  if (commands.count == commands.capacity) {
    size_t capacity = commands.capacity ? commands.capacity * 2 : 64;
    Command *items = realloc(commands.items, capacity * sizeof *items);
    if (items) {
      commands.items = items;
      commands.capacity = capacity;
    } else {
      queued = false;
    }
  }
  if (queued) commands.items[commands.count++] = *c;
  bool wake = queued && !wake_pending;
  if (wake) wake_pending = true;
  pthread_mutex_unlock(&relay_lock);
  if (!queued) {
    command_free(c);
    if (c->type == CMD_ADOPT) {
      close(c->fd[0]);
      close(c->fd[1]);
    }
  }
  if (wake) wake_thread(relay_wake);
  return queued;
}

// A copy of a Buffer argument; NULL (and length 0) for null or undefined. False: not a Buffer, or out of memory.
static bool arg_bytes(napi_env env, napi_value value, uint8_t **out, size_t *length) {
  napi_valuetype type;
  napi_typeof(env, value, &type);
  *out = NULL;
  *length = 0;
  if (type == napi_null || type == napi_undefined) return true;
  void *data;
  bool is_buffer = false;
  napi_is_buffer(env, value, &is_buffer);
  if (!is_buffer || napi_get_buffer_info(env, value, &data, length) != napi_ok) return false;
  *out = malloc(*length ? *length : 1);
  if (!*out) return false;
  memcpy(*out, data, *length);
  return true;
}

static bool started = false;

/** start(callback): the relay thread; notice batches reach `callback(buffer)`. Once per process. */
static napi_value start(napi_env env, napi_callback_info info) {
  ARGS(1);
  if (started) return NULL;
  relay_epoll = epoll_create1(EPOLL_CLOEXEC);
  relay_wake = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (relay_epoll < 0 || relay_wake < 0) return throw_error(env, "ERR_EPOLL", "cannot create the data proxy relay's epoll");
  napi_value name;
  napi_create_string_utf8(env, "custos data proxy relay", NAPI_AUTO_LENGTH, &name);
  if (napi_create_threadsafe_function(env, argv[0], NULL, name, 0, 1, NULL, NULL, NULL, call_js, &deliver) != napi_ok)
    return throw_error(env, "ERR_NAPI", "cannot create the data proxy relay's callback");
  napi_unref_threadsafe_function(env, deliver);
  pthread_t thread;
  if (pthread_create(&thread, NULL, relay_main, NULL) != 0) return throw_error(env, "ERR_THREAD", "cannot start the data proxy relay thread");
  pthread_detach(thread);
  started = true;
  return NULL;
}

/** hold(bool): whether the relay keeps the process alive (while it has sessions). */
static napi_value hold(napi_env env, napi_callback_info info) {
  return hold_callback(env, info, deliver);
}

/**
 * adopt(id, clientFd, upstreamFd, clientBytes, toClient, log, authenticationLine, maxQueryBytes): the relay takes
 * duplicates of both sockets (the caller closes its own), the client bytes JavaScript has read but not handled, and
 * bytes to send the client first; hits' lines go to `log` (0: none) with `authenticationLine` as the session's
 * template; longer statements than `maxQueryBytes` are always asked about.
 */
static napi_value adopt_sockets(napi_env env, napi_callback_info info) {
  ARGS(8);
  if (!started) return throw_error(env, "ERR_NOT_STARTED", "the data proxy relay is not started");
  Command c = {.type = CMD_ADOPT, .relay = (uint32_t)arg_number(env, argv[0]), .log = (uint32_t)arg_number(env, argv[5]),
               .max_query_bytes = (uint32_t)arg_number(env, argv[7])};
  for (int side = 0; side < 2; side++) {
    int fd = (int)arg_number(env, argv[1 + side]);
    c.fd[side] = fd >= 0 ? fcntl(fd, F_DUPFD_CLOEXEC, 3) : -1;
    if (c.fd[side] < 0) {
      if (side == 1 && c.fd[0] >= 0) close(c.fd[0]);
      return throw_error(env, "ERR_SOCKET", "cannot take over the session's socket");
    }
    int flags = fcntl(c.fd[side], F_GETFL);
    fcntl(c.fd[side], F_SETFL, flags | O_NONBLOCK);
  }
  if (!arg_bytes(env, argv[3], &c.bytes[0], &c.lengths[0]) || !arg_bytes(env, argv[4], &c.bytes[1], &c.lengths[1]) ||
      !arg_bytes(env, argv[6], &c.bytes[2], &c.lengths[2])) {
    close(c.fd[0]);
    close(c.fd[1]);
    command_free(&c);
    return throw_error(env, "ERR_INVALID_ARG", "clientBytes and toClient must be Buffers");
  }
  if (!send_command(&c)) return throw_error(env, "ERR_NO_MEMORY", "the relay could not queue the session");
  return NULL;
}

/**
 * decided(id, send, marker, error, key, rewritten, deadlineInMs): the answer to a decision request. `send` goes
 * upstream instead of the message (null: the message itself); `marker`/`error`: the refusal marker and the
 * ErrorResponse that replaces upstream's error for it; `key` (null: not cached) is the statement's cache key as
 * JavaScript made it, `rewritten` the text to send instead (null: unchanged), `deadlineInMs` how long the entry
 * holds (< 0: until forget()), `line` its policy.resolution line template (null: hits are notices).
 */
static napi_value decide(napi_env env, napi_callback_info info) {
  ARGS(8);
  Command c = {.type = CMD_DECIDED, .relay = (uint32_t)arg_number(env, argv[0]), .deadline_in_ms = (int64_t)arg_number(env, argv[6])};
  for (int i = 0; i < 6; i++) {
    if (!arg_bytes(env, argv[i < 5 ? 1 + i : 7], &c.bytes[i], &c.lengths[i])) {
      command_free(&c);
      return throw_error(env, "ERR_INVALID_ARG", "decided: send, marker, error, key and rewritten must be Buffers or null");
    }
  }
  napi_valuetype key_type, rewritten_type;
  napi_typeof(env, argv[4], &key_type);
  napi_typeof(env, argv[5], &rewritten_type);
  c.cache = key_type != napi_null && key_type != napi_undefined;
  c.unchanged = rewritten_type == napi_null || rewritten_type == napi_undefined;
  send_command(&c);
  return NULL;
}

/** close(id, toClient): ends a session, sending `toClient` (a FATAL error, or null) first. */
static napi_value close_relay(napi_env env, napi_callback_info info) {
  ARGS(2);
  Command c = {.type = CMD_CLOSE, .relay = (uint32_t)arg_number(env, argv[0])};
  if (!arg_bytes(env, argv[1], &c.bytes[0], &c.lengths[0])) return throw_error(env, "ERR_INVALID_ARG", "toClient must be a Buffer or null");
  send_command(&c);
  return NULL;
}

/** forget(): every session's cached statements are decided again (policies or the catalog changed). */
static napi_value forget(napi_env env, napi_callback_info info) {
  (void)env;
  (void)info;
  __atomic_add_fetch(&cache_epoch, 1, __ATOMIC_RELEASE);
  return NULL;
}

/** openLog(id, fd): lines for `id` go to `fd` (which the caller closes after the LOG_CLOSED notice). */
static napi_value open_log(napi_env env, napi_callback_info info) {
  ARGS(2);
  if (!started) return throw_error(env, "ERR_NOT_STARTED", "the data proxy relay is not started");
  Command c = {.type = CMD_LOG_OPEN, .relay = (uint32_t)arg_number(env, argv[0]), .fd = {(int)arg_number(env, argv[1]), -1}};
  send_command(&c);
  return NULL;
}

/** appendLog(id, lines): whole lines, after everything queued for the log before them. */
static napi_value append_log(napi_env env, napi_callback_info info) {
  ARGS(2);
  Command c = {.type = CMD_LOG_APPEND, .relay = (uint32_t)arg_number(env, argv[0])};
  if (!arg_bytes(env, argv[1], &c.bytes[0], &c.lengths[0])) return throw_error(env, "ERR_INVALID_ARG", "lines must be a Buffer");
  send_command(&c);
  return NULL;
}

/** closeLog(id): writes what is queued; LOG_CLOSED follows once no session writes to it. */
static napi_value close_log(napi_env env, napi_callback_info info) {
  ARGS(1);
  Command c = {.type = CMD_LOG_CLOSE, .relay = (uint32_t)arg_number(env, argv[0])};
  send_command(&c);
  return NULL;
}

/** linesWritten(): cached statements whose two events the relay wrote itself. */
static napi_value lines_written_count(napi_env env, napi_callback_info info) {
  (void)info;
  napi_value out;
  napi_create_double(env, (double)__atomic_load_n(&lines_written, __ATOMIC_RELAXED), &out);
  return out;
}

static napi_value init(napi_env env, napi_value exports) {
  napi_property_descriptor properties[] = {
      {"start", NULL, start, NULL, NULL, NULL, napi_default, NULL},
      {"hold", NULL, hold, NULL, NULL, NULL, napi_default, NULL},
      {"adopt", NULL, adopt_sockets, NULL, NULL, NULL, napi_default, NULL},
      {"decided", NULL, decide, NULL, NULL, NULL, napi_default, NULL},
      {"close", NULL, close_relay, NULL, NULL, NULL, napi_default, NULL},
      {"forget", NULL, forget, NULL, NULL, NULL, napi_default, NULL},
      {"openLog", NULL, open_log, NULL, NULL, NULL, napi_default, NULL},
      {"appendLog", NULL, append_log, NULL, NULL, NULL, napi_default, NULL},
      {"closeLog", NULL, close_log, NULL, NULL, NULL, napi_default, NULL},
      {"linesWritten", NULL, lines_written_count, NULL, NULL, NULL, napi_default, NULL},
  };
  napi_define_properties(env, exports, sizeof properties / sizeof *properties, properties);
  return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, init)
