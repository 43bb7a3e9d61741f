// The egress proxy's data plane for its HTTP listeners: accept, read the request head (CONNECT, or a forward-proxy
// request that JavaScript rewrites), dial the address JavaScript chose, and relay bytes both ways, on one epoll
// thread, with no Node socket objects per connection. JavaScript keeps every decision (who the source is, which
// policy, which address) and every record: this file only moves bytes and reports what happened. A connection it
// does not take (a malformed or oversized head, a slow client, one JavaScript gives back) is handed over to
// JavaScript as a file descriptor with the bytes read so far, so every error reply and record comes from one place
// (proxy.ts).
//
// Threads: the main (JS) thread calls the exported functions; they only create listening sockets or queue commands
// (mutex + eventfd). The plane thread owns every accepted socket, and posts events back through one thread-safe
// function call per batch.
#define _GNU_SOURCE
#define NAPI_VERSION 8
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <node_api.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "addon.h"

// ---- events (plane thread → JS) ----

enum { EV_CONNECT = 1, EV_HANDOFF = 2, EV_DIAL_FAILED = 3, EV_CLOSED = 4, EV_REQUEST = 5 };
enum { CLOSE_COMPLETED = 0, CLOSE_IDLE = 1, CLOSE_CLIENT_RESET = 2, CLOSE_DESTINATION_RESET = 3, CLOSE_ABORTED = 4 };

typedef struct {
  int type;
  uint32_t listener;
  double tunnel;
  int fd;                     // EV_HANDOFF
  char *text[3];              // EV_CONNECT: peer address, target, Proxy-Authorization (or NULL); EV_REQUEST: peer
                              // address; EV_DIAL_FAILED: code
  uint8_t *bytes;             // EV_HANDOFF: what was read so far; EV_REQUEST: the request head
  size_t length;
  double numbers[4];          // EV_CONNECT: peer port, verdict (0: none, JS decides); EV_CLOSED: bytes to and from the destination, close reason, connected
  int64_t accepted_ns;        // EV_CONNECT, EV_REQUEST, EV_HANDOFF: monotonic accept time
} Event;

// ---- commands (JS → plane thread) ----

enum { CMD_ADD_LISTENER, CMD_CLOSE_LISTENER, CMD_CONFIGURE_LISTENER, CMD_REMEMBER, CMD_FORGET, CMD_DIAL, CMD_REFUSE, CMD_HANDOFF, CMD_ABORT };

typedef struct {
  int type;
  uint32_t listener;
  double tunnel;
  int fd;
  uint32_t max_head;
  uint32_t handshake_ms;
  uint32_t connect_ms;
  uint32_t idle_ms;
  struct sockaddr_storage address;
  socklen_t address_length;
  uint8_t *bytes; // CMD_REFUSE: the reply; CMD_REMEMBER: the verdict's key; CMD_DIAL: bytes for the destination first
  size_t length;
  double verdict;
  uint32_t source;
  uint32_t source_limit;
} Command;

typedef struct {
  void *items;
  size_t count, capacity, size;
} Queue;

static int queue_push(Queue *q, const void *item) {
  if (q->count == q->capacity) {
    size_t capacity = q->capacity ? q->capacity * 2 : 64;
    void *items = realloc(q->items, capacity * q->size);
    if (!items) return 0;
    q->items = items;
    q->capacity = capacity;
  }
  memcpy((char *)q->items + q->count * q->size, item, q->size);
  q->count++;
  return 1;
}

// ---- connections ----

enum { ST_HEAD, ST_AWAIT, ST_DIALING, ST_RELAY, ST_REFUSING, ST_DEAD };
enum { SIDE_CLIENT = 0, SIDE_UPSTREAM = 1 };

typedef struct Tunnel Tunnel;
typedef struct {
  int kind; // 0: tunnel side, 1: listener, 2: wake-up eventfd
  Tunnel *tunnel;
  int side;
} Endpoint;

typedef struct Listener {
  Endpoint endpoint;
  int fd;
  uint32_t id;
  uint32_t max_head;
  uint32_t handshake_ms;
  int64_t paused_until_ms; // out of file descriptors: accepting again then
  bool closed;
  struct Listener *next_dead;
} Listener;

// Bytes read from one side that the other side has not taken yet (it was full).
typedef struct {
  uint8_t *data;
  size_t offset, length;
} Pending;

struct Tunnel {
  double id;
  uint32_t slot;
  int state;
  int fd[2];
  Endpoint endpoint[2];
  uint32_t listener;
  uint32_t max_head, idle_ms;
  int64_t accepted_ns;
  int64_t deadline_ms; // for the state's own limit: handshake, connect, idle (from last_active), refusal linger
  int64_t last_active_ms;
  uint8_t *head;       // the request head and whatever followed it, until the tunnel starts
  uint8_t *preamble;   // a forwarded request's origin-form head, sent to the destination before anything else
  size_t preamble_length;
  size_t head_length, head_capacity, head_used;
  Pending pending[2];  // indexed by the side the bytes were read from
  bool eof[2];         // indexed by the side that sent FIN
  bool shut[2];        // indexed by the side whose write half was shut down
  uint32_t interest[2];
  double to_upstream, from_upstream;
  int32_t source; // counted against its source's limit while >= 0
  struct sockaddr_storage peer;
  Tunnel *prev, *next;
  Tunnel *next_dead;
};
// What an open tunnel costs beyond its sockets (docs/egress.md says so).
_Static_assert(sizeof(Tunnel) <= 512, "a tunnel's own state stays under 512 bytes");

static int plane_epoll = -1;
static int plane_wake = -1;
static pthread_t plane_thread;
static pthread_mutex_t plane_lock = PTHREAD_MUTEX_INITIALIZER;
static Queue commands = {NULL, 0, 0, sizeof(Command)};
static Queue events = {NULL, 0, 0, sizeof(Event)};
static bool wake_pending = false;
static bool events_signalled = false;
static napi_threadsafe_function deliver;

// Plane-thread state.
static Tunnel **slots;
static uint32_t slot_count;
static uint32_t *free_slots;
static uint32_t free_count;
static uint32_t sequence;
static Tunnel *tunnels; // every live tunnel, for the deadline sweep
// Freed only after the current batch of epoll events: a later event in the batch may still point at them.
static Tunnel *dead_tunnels;
static struct Listener *dead_listeners;
static Listener **listeners;
static uint32_t listener_count;
// One read per wake-up takes up to this much: at 64 KiB a 1 GiB transfer through one tunnel ran at 0.83 of HAProxy's
// rate, at 256 KiB at 0.98 (bench/egress-proxies.ts --only bulk). A reader slower than its writer leaves at most this
// much per direction held by the plane (see `forward`), besides what the kernel's socket buffers hold.
static uint8_t scratch[256 * 1024];
static Queue outgoing = {NULL, 0, 0, sizeof(Event)};

// ---- verdicts: decisions JS made that the plane may repeat on its own ----
//
// A repeat CONNECT with the same listener, Proxy-Authorization value and IP-literal target is what JS already decided
// (credentials verified, policy checked, address chosen): the plane dials at once and JS learns of it in the connect
// event, off the latency path. JS remembers only decisions that depend on nothing else, and forgets them all on
// reload. Each verdict counts against its source's connection limit here; over the limit, JS decides (and refuses).

typedef struct {
  uint64_t hash;
  uint8_t *key;
  size_t key_length;
  double verdict;
  struct sockaddr_storage address;
  socklen_t address_length;
  uint32_t connect_ms, idle_ms;
  uint32_t source;
} Verdict;

#define VERDICT_SLOTS 8192
#define VERDICT_LIMIT 4096 // at most half full; cleared when reached (keys come from clients)
static Verdict *verdicts[VERDICT_SLOTS];
static uint32_t verdict_count;
static uint32_t *source_open, *source_limit;
static uint32_t source_count;

static uint64_t key_hash(const uint8_t *key, size_t length) {
  uint64_t hash = 1469598103934665603ull;
  for (size_t i = 0; i < length; i++) hash = (hash ^ key[i]) * 1099511628211ull;
  return hash;
}

static void forget_verdicts(void) {
  for (uint32_t i = 0; i < VERDICT_SLOTS; i++) {
    if (!verdicts[i]) continue;
    free(verdicts[i]->key);
    free(verdicts[i]);
    verdicts[i] = NULL;
  }
  verdict_count = 0;
}

static Verdict *find_verdict(const uint8_t *key, size_t length) {
  uint64_t hash = key_hash(key, length);
  for (uint32_t i = 0; i < VERDICT_SLOTS; i++) {
    Verdict *v = verdicts[(hash + i) & (VERDICT_SLOTS - 1)];
    if (!v) return NULL;
    if (v->hash == hash && v->key_length == length && memcmp(v->key, key, length) == 0) return v;
  }
  return NULL;
}

static bool ensure_source(uint32_t source) {
  if (source < source_count) return true;
  uint32_t count = source + 16;
  uint32_t *open = realloc(source_open, count * sizeof *open);
  if (open) source_open = open;
  uint32_t *limit = realloc(source_limit, count * sizeof *limit);
  if (limit) source_limit = limit;
  if (!open || !limit) return false;
  for (uint32_t i = source_count; i < count; i++) source_open[i] = source_limit[i] = 0;
  source_count = count;
  return true;
}

static void remember_verdict(Command *c) {
  if (!ensure_source(c->source)) return;
  source_limit[c->source] = c->source_limit;
  if (find_verdict(c->bytes, c->length)) return;
  if (verdict_count >= VERDICT_LIMIT) forget_verdicts();
  Verdict *v = malloc(sizeof *v);
  if (!v) return;
  *v = (Verdict){key_hash(c->bytes, c->length), c->bytes, c->length, c->verdict, c->address, c->address_length, c->connect_ms, c->idle_ms, c->source};
  c->bytes = NULL;
  for (uint32_t i = 0;; i++) {
    Verdict **slot = &verdicts[(v->hash + i) & (VERDICT_SLOTS - 1)];
    if (*slot) continue;
    *slot = v;
    break;
  }
  verdict_count++;
}

/** The verdict key: listener id, then the Proxy-Authorization value and the target, each behind its length. */
static size_t verdict_key(uint8_t *out, size_t capacity, uint32_t listener, const uint8_t *auth, size_t auth_length, const uint8_t *target, size_t target_length) {
  size_t length = 12 + auth_length + target_length;
  if (length > capacity) return 0;
  uint32_t header[3] = {listener, (uint32_t)auth_length, (uint32_t)target_length};
  memcpy(out, header, 12);
  if (auth_length) memcpy(out + 12, auth, auth_length);
  memcpy(out + 12 + auth_length, target, target_length);
  return length;
}

static int64_t monotonic_ns(void) {
  struct timespec now;
  clock_gettime(CLOCK_MONOTONIC, &now);
  return (int64_t)now.tv_sec * 1000000000 + now.tv_nsec;
}

static int64_t now_ms;

// Events JS must answer (a connect to decide, a failed dial, a handed-over socket) wake it at once; the others (a
// closed tunnel's counts, a connect the plane already dialled on a verdict) wait up to RECORD_DELAY_MS to share one
// wake-up: at hundreds of tunnels a second, waking JS twice per tunnel cost CPU the plane thread was waiting for.
#define RECORD_DELAY_MS 10
static bool outgoing_urgent;
static int64_t outgoing_since_ms;

static void emit(Event *event) {
  if (!outgoing.count) outgoing_since_ms = now_ms;
  if (event->type != EV_CLOSED && !(event->type == EV_CONNECT && event->numbers[1] != 0)) outgoing_urgent = true;
  if (!queue_push(&outgoing, event)) {
    // Out of memory for the event itself: nothing sensible remains but to drop what it owns.
    for (int i = 0; i < 3; i++) free(event->text[i]);
    free(event->bytes);
    if (event->fd >= 0) close(event->fd);
  }
}

static char *copy_text(const uint8_t *start, size_t length) {
  char *text = malloc(length + 1);
  if (!text) return NULL;
  memcpy(text, start, length);
  text[length] = 0;
  return text;
}

static void set_interest(Tunnel *t, int side, uint32_t interest) {
  if (t->fd[side] < 0 || t->interest[side] == interest) return;
  struct epoll_event ev = {.events = interest, .data.ptr = &t->endpoint[side]};
  if (t->interest[side] == 0 && interest != 0) epoll_ctl(plane_epoll, EPOLL_CTL_ADD, t->fd[side], &ev);
  else if (interest == 0) epoll_ctl(plane_epoll, EPOLL_CTL_DEL, t->fd[side], NULL);
  else epoll_ctl(plane_epoll, EPOLL_CTL_MOD, t->fd[side], &ev);
  t->interest[side] = interest;
}

static Tunnel *tunnel_new(void) {
  Tunnel *t = calloc(1, sizeof *t);
  if (!t) return NULL;
  t->source = -1;
  uint32_t slot;
  if (free_count) {
    slot = free_slots[--free_count];
  } else {
    if ((slot_count & 1023) == 0) {
      Tunnel **grown = realloc(slots, (slot_count + 1024) * sizeof *slots);
      uint32_t *grown_free = realloc(free_slots, (slot_count + 1024) * sizeof *free_slots);
      if (grown) slots = grown;
      if (grown_free) free_slots = grown_free;
      if (!grown || !grown_free) {
        free(t);
        return NULL;
      }
    }
    slot = slot_count++;
  }
  sequence = (sequence + 1) & 0x1fffff;
  // Slot and a sequence number, so an id of a finished tunnel never reaches a new one in the same slot; < 2^53.
  t->id = (double)slot + (double)sequence * 4294967296.0;
  t->slot = slot;
  slots[slot] = t;
  t->fd[0] = t->fd[1] = -1;
  for (int side = 0; side < 2; side++) t->endpoint[side] = (Endpoint){0, t, side};
  t->next = tunnels;
  if (tunnels) tunnels->prev = t;
  tunnels = t;
  return t;
}

static Tunnel *tunnel_find(double id) {
  uint32_t slot = (uint32_t)((uint64_t)id & 0xffffffffu);
  if (slot >= slot_count) return NULL;
  Tunnel *t = slots[slot];
  return t && t->id == id && t->state != ST_DEAD ? t : NULL;
}

/** Forgets the tunnel; its sockets must already be closed or handed over. Memory and slot go after the batch. */
static void tunnel_free(Tunnel *t) {
  if (t->source >= 0) source_open[t->source]--;
  t->source = -1;
  if (t->prev) t->prev->next = t->next;
  else tunnels = t->next;
  if (t->next) t->next->prev = t->prev;
  t->state = ST_DEAD;
  t->next_dead = dead_tunnels;
  dead_tunnels = t;
}

static void bury_dead(void) {
  while (dead_tunnels) {
    Tunnel *t = dead_tunnels;
    dead_tunnels = t->next_dead;
    slots[t->slot] = NULL;
    free_slots[free_count++] = t->slot;
    free(t->head);
    free(t->preamble);
    free(t->pending[0].data);
    free(t->pending[1].data);
    free(t);
  }
  while (dead_listeners) {
    struct Listener *l = dead_listeners;
    dead_listeners = l->next_dead;
    free(l);
  }
}

/** Closing the descriptor also takes it out of epoll (it is never duplicated), so no EPOLL_CTL_DEL is spent. */
static void close_side(Tunnel *t, int side) {
  if (t->fd[side] < 0) return;
  close(t->fd[side]);
  t->fd[side] = -1;
  t->interest[side] = 0;
}

/** Ends a tunnel that JS knows about (it dialled): closes both sides and reports the byte counts. */
static void tunnel_finish(Tunnel *t, int reason) {
  close_side(t, SIDE_CLIENT);
  close_side(t, SIDE_UPSTREAM);
  Event event = {.type = EV_CLOSED, .tunnel = t->id, .fd = -1, .numbers = {t->to_upstream, t->from_upstream, reason, t->state == ST_RELAY}};
  emit(&event);
  tunnel_free(t);
}

/** Gives the client socket and the bytes read from it to JS, which takes the connection from here. */
static void tunnel_handoff(Tunnel *t) {
  set_interest(t, SIDE_CLIENT, 0);
  close_side(t, SIDE_UPSTREAM);
  Event event = {.type = EV_HANDOFF, .listener = t->listener, .tunnel = t->id, .fd = t->fd[SIDE_CLIENT], .accepted_ns = t->accepted_ns};
  // Everything read so far, the head included: the socket path parses it again.
  size_t length = t->head_length;
  if (length) {
    event.bytes = malloc(length);
    if (event.bytes) {
      memcpy(event.bytes, t->head, length);
      event.length = length;
    }
  }
  t->fd[SIDE_CLIENT] = -1;
  emit(&event);
  tunnel_free(t);
}

static void start_dial(Tunnel *t, const struct sockaddr_storage *address, socklen_t address_length, uint32_t connect_ms, uint32_t idle_ms, uint32_t source);

// ---- the request head ----

static bool is_token_char(uint8_t c) {
  if (c >= '0' && c <= '9') return true;
  if ((c | 0x20) >= 'a' && (c | 0x20) <= 'z') return true;
  return c && strchr("!#$%&'*+-.^_`|~", c) != NULL;
}

static bool ascii_equal_nocase(const uint8_t *a, const char *b, size_t length) {
  for (size_t i = 0; i < length; i++)
    if ((a[i] | 0x20) != (b[i] | 0x20)) return false;
  return true;
}

static const uint8_t *find_head_end(const uint8_t *data, size_t length) {
  for (size_t i = 3; i < length; i++)
    if (data[i] == '\n' && data[i - 1] == '\r' && data[i - 2] == '\n' && data[i - 3] == '\r') return data + i + 1;
  return NULL;
}

/**
 * The fast path takes only a head that proxy.ts's parser would accept as a CONNECT: `CONNECT target HTTP/1.x`, then
 * `token: value` lines without control characters. Anything else is JS's to answer. Returns 1 when the event was
 * made, 0 to hand the connection over.
 */
typedef struct {
  const uint8_t *target, *auth;
  size_t target_length, auth_length;
} ConnectHead;

static int parse_connect(Tunnel *t, const uint8_t *end, ConnectHead *out) {
  const uint8_t *p = t->head, *line_end = memchr(p, '\r', (size_t)(end - p));
  if (!line_end || line_end[1] != '\n' || line_end - p < 8 + 1 + 9) return 0;
  if (memcmp(p, "CONNECT ", 8) != 0) return 0;
  const uint8_t *target = p + 8, *space = memchr(target, ' ', (size_t)(line_end - target));
  if (!space || space == target) return 0;
  for (const uint8_t *c = target; c < space; c++)
    if (*c <= 0x20 || *c >= 0x7f) return 0;
  if (line_end - space != 9 || (memcmp(space, " HTTP/1.1", 9) != 0 && memcmp(space, " HTTP/1.0", 9) != 0)) return 0;
  const uint8_t *auth = NULL;
  size_t auth_length = 0;
  for (const uint8_t *line = line_end + 2; line < end - 2; line = line_end + 2) {
    line_end = memchr(line, '\r', (size_t)(end - line));
    if (!line_end || line_end[1] != '\n') return 0;
    const uint8_t *colon = memchr(line, ':', (size_t)(line_end - line));
    if (!colon || colon == line) return 0;
    for (const uint8_t *c = line; c < colon; c++)
      if (!is_token_char(*c)) return 0;
    const uint8_t *value = colon + 1, *value_end = line_end;
    for (const uint8_t *c = value; c < value_end; c++)
      if ((*c < 0x20 && *c != '\t') || *c == 0x7f) return 0;
    while (value < value_end && (*value == ' ' || *value == '\t')) value++;
    while (value_end > value && (value_end[-1] == ' ' || value_end[-1] == '\t')) value_end--;
    if (!auth && colon - line == 19 && ascii_equal_nocase(line, "proxy-authorization", 19)) {
      auth = value;
      auth_length = (size_t)(value_end - value);
    }
  }
  *out = (ConnectHead){target, auth, (size_t)(space - target), auth_length};
  return 1;
}

/**
 * Whether the bytes can start a request line: a method token (at most 31 characters) then a space, the check the
 * socket path makes before it has a whole head (wire.ts), so binary bytes are handed over at once.
 */
static bool plausible_request_start(const uint8_t *p, size_t n) {
  size_t limit = n < 32 ? n : 32;
  for (size_t i = 0; i < limit; i++) {
    if (p[i] == ' ') return i > 0;
    if (!is_token_char(p[i])) return false;
  }
  return n < 32;
}

static void peer_text(Tunnel *t, Event *event) {
  char address[INET6_ADDRSTRLEN] = "";
  int port = 0;
  if (t->peer.ss_family == AF_INET6) {
    inet_ntop(AF_INET6, &((struct sockaddr_in6 *)&t->peer)->sin6_addr, address, sizeof address);
    port = ntohs(((struct sockaddr_in6 *)&t->peer)->sin6_port);
  } else if (t->peer.ss_family == AF_INET) {
    inet_ntop(AF_INET, &((struct sockaddr_in *)&t->peer)->sin_addr, address, sizeof address);
    port = ntohs(((struct sockaddr_in *)&t->peer)->sin_port);
  }
  event->text[0] = copy_text((const uint8_t *)address, strlen(address));
  event->numbers[0] = port;
}

static void head_readable(Tunnel *t) {
  for (;;) {
    if (t->head_length == t->head_capacity) {
      // One byte past the limit is enough to know the head is too large: JS says so.
      if (t->head_capacity > t->max_head) {
        tunnel_handoff(t);
        return;
      }
      size_t capacity = t->head_capacity ? t->head_capacity * 2 : 1024;
      if (capacity > (size_t)t->max_head + 1) capacity = (size_t)t->max_head + 1;
      uint8_t *grown = realloc(t->head, capacity);
      if (!grown) {
        tunnel_handoff(t);
        return;
      }
      t->head = grown;
      t->head_capacity = capacity;
    }
    ssize_t n = recv(t->fd[SIDE_CLIENT], t->head + t->head_length, t->head_capacity - t->head_length, 0);
    if (n < 0 && (errno == EAGAIN || errno == EINTR)) return;
    if (n <= 0) {
      // Closed or reset during the head: JS reads the same end and records it.
      tunnel_handoff(t);
      return;
    }
    t->head_length += (size_t)n;
    if (!plausible_request_start(t->head, t->head_length)) {
      tunnel_handoff(t);
      return;
    }
    const uint8_t *end = find_head_end(t->head, t->head_length);
    if (!end) continue;
    if ((size_t)(end - t->head) > t->max_head) {
      tunnel_handoff(t);
      return;
    }
    if (t->head_length < 8 || memcmp(t->head, "CONNECT ", 8) != 0) {
      // A forward-proxy request: JS parses the whole head (it rewrites it into origin-form), the body stays here.
      Event event = {.type = EV_REQUEST, .listener = t->listener, .tunnel = t->id, .fd = -1, .accepted_ns = t->accepted_ns};
      event.length = (size_t)(end - t->head);
      event.bytes = malloc(event.length);
      if (!event.bytes) {
        tunnel_handoff(t);
        return;
      }
      memcpy(event.bytes, t->head, event.length);
      peer_text(t, &event);
      t->head_used = event.length;
      t->state = ST_AWAIT;
      emit(&event);
      return;
    }
    Event event = {.type = EV_CONNECT, .listener = t->listener, .tunnel = t->id, .fd = -1, .accepted_ns = t->accepted_ns};
    ConnectHead head;
    if (!parse_connect(t, end, &head)) {
      tunnel_handoff(t);
      return;
    }
    event.text[1] = copy_text(head.target, head.target_length);
    event.text[2] = head.auth ? copy_text(head.auth, head.auth_length) : NULL;
    uint8_t key[1024];
    size_t key_length = verdict_key(key, sizeof key, t->listener, head.auth, head.auth_length, head.target, head.target_length);
    Verdict *verdict = key_length ? find_verdict(key, key_length) : NULL;
    if (verdict && source_open[verdict->source] >= source_limit[verdict->source]) verdict = NULL;
    peer_text(t, &event);
    t->head_used = (size_t)(end - t->head);
    // Nothing more is read from the client until the destination answers: what it pipelined stays in `head`. Its
    // readiness is switched off only if it fires meanwhile (the main loop), sparing two epoll_ctl in the usual case.
    t->state = ST_AWAIT;
    if (verdict) event.numbers[1] = verdict->verdict;
    // The event goes first: JS must know the tunnel before any dial outcome.
    emit(&event);
    if (verdict) start_dial(t, &verdict->address, verdict->address_length, verdict->connect_ms, verdict->idle_ms, verdict->source);
    return;
  }
}

// ---- relaying ----

static uint32_t wanted_interest(Tunnel *t, int side) {
  uint32_t interest = 0;
  if (!t->eof[side] && !t->pending[side].length) interest |= EPOLLIN;
  if (t->pending[!side].length) interest |= EPOLLOUT;
  return interest;
}

static void update_interest(Tunnel *t) {
  for (int side = 0; side < 2; side++) set_interest(t, side, wanted_interest(t, side));
}

/** After a side's bytes are all delivered: carries its FIN across; ends the tunnel once both directions are done. */
static bool settle(Tunnel *t) {
  bool done[2];
  for (int from = 0; from < 2; from++) done[from] = t->eof[from] && !t->pending[from].length;
  if (done[0] && done[1]) {
    // Both sides finished and everything was read: close() sends the last FIN, a shutdown() first would be a syscall more.
    tunnel_finish(t, CLOSE_COMPLETED);
    return false;
  }
  for (int from = 0; from < 2; from++) {
    if (done[from] && !t->shut[!from]) {
      shutdown(t->fd[!from], SHUT_WR);
      t->shut[!from] = true;
    }
  }
  return true;
}

static void count(Tunnel *t, int to, size_t n) {
  if (to == SIDE_UPSTREAM) t->to_upstream += (double)n;
}

/** Writes bytes read from `from` to the other side; keeps what it did not take. Returns false when the tunnel ended. */
static bool forward(Tunnel *t, int from, const uint8_t *data, size_t length) {
  int to = !from;
  size_t sent = 0;
  while (sent < length) {
    ssize_t n = send(t->fd[to], data + sent, length - sent, MSG_NOSIGNAL);
    if (n > 0) {
      sent += (size_t)n;
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && errno == EAGAIN) break;
    tunnel_finish(t, to == SIDE_CLIENT ? CLOSE_CLIENT_RESET : CLOSE_DESTINATION_RESET);
    return false;
  }
  count(t, to, sent);
  if (sent < length) {
    Pending *p = &t->pending[from];
    p->data = malloc(length - sent);
    if (!p->data) {
      tunnel_finish(t, to == SIDE_CLIENT ? CLOSE_CLIENT_RESET : CLOSE_DESTINATION_RESET);
      return false;
    }
    memcpy(p->data, data + sent, length - sent);
    p->offset = 0;
    p->length = length - sent;
  }
  return true;
}

static void relay_readable(Tunnel *t, int side) {
  ssize_t n = recv(t->fd[side], scratch, sizeof scratch, 0);
  if (n < 0 && (errno == EAGAIN || errno == EINTR)) return;
  if (n < 0) {
    tunnel_finish(t, side == SIDE_CLIENT ? CLOSE_CLIENT_RESET : CLOSE_DESTINATION_RESET);
    return;
  }
  t->last_active_ms = now_ms;
  if (n == 0) {
    t->eof[side] = true;
  } else {
    if (side == SIDE_UPSTREAM) t->from_upstream += (double)n;
    if (!forward(t, side, scratch, (size_t)n)) return;
  }
  if (settle(t)) update_interest(t);
}

/** Sends what `p` holds to `fd`, as far as the socket takes it: false on an error. `*sent` gets what went. */
static bool send_pending(int fd, Pending *p, size_t *sent) {
  *sent = 0;
  while (p->length) {
    ssize_t n = send(fd, p->data + p->offset, p->length, MSG_NOSIGNAL);
    if (n > 0) {
      p->offset += (size_t)n;
      p->length -= (size_t)n;
      *sent += (size_t)n;
    } else if (n < 0 && errno == EINTR) {
      continue;
    } else {
      return n < 0 && errno == EAGAIN;
    }
  }
  return true;
}

static void relay_writable(Tunnel *t, int side) {
  Pending *p = &t->pending[!side];
  size_t sent;
  bool ok = send_pending(t->fd[side], p, &sent);
  count(t, side, sent);
  if (!ok) {
    tunnel_finish(t, side == SIDE_CLIENT ? CLOSE_CLIENT_RESET : CLOSE_DESTINATION_RESET);
    return;
  }
  t->last_active_ms = now_ms;
  if (!p->length) {
    free(p->data);
    p->data = NULL;
    p->offset = 0;
  }
  if (settle(t)) update_interest(t);
}

/** The errno's symbolic name (ECONNREFUSED, …), as Node reports `err.code`; records and JS errors carry it. */
static const char *errno_code(int error) {
#if defined(__GLIBC__) && __GLIBC_PREREQ(2, 32)
  const char *name = strerrorname_np(error);
  if (name) return name;
#endif
  return "UNKNOWN_ERRNO";
}

static void dial_failed(Tunnel *t, const char *code) {
  close_side(t, SIDE_UPSTREAM);
  t->state = ST_AWAIT;
  Event event = {.type = EV_DIAL_FAILED, .tunnel = t->id, .fd = -1};
  event.text[0] = copy_text((const uint8_t *)code, strlen(code));
  emit(&event);
}

/** The request head is answered: its buffer goes. */
static void drop_head(Tunnel *t) {
  free(t->head);
  t->head = NULL;
  t->head_length = t->head_capacity = t->head_used = 0;
}

static const char CONNECT_ESTABLISHED[] = "HTTP/1.1 200 Connection Established\r\n\r\n";

static void dial_writable(Tunnel *t) {
  int error = 0;
  socklen_t length = sizeof error;
  if (getsockopt(t->fd[SIDE_UPSTREAM], SOL_SOCKET, SO_ERROR, &error, &length) != 0) error = errno;
  if (error == EINPROGRESS || error == EALREADY) return;
  if (error) {
    dial_failed(t, errno_code(error));
    return;
  }
  t->state = ST_RELAY;
  t->last_active_ms = now_ms;
  size_t early = t->head_length - t->head_used;
  if (t->preamble) {
    // A forwarded request: its origin-form head, then whatever body followed, in one write to the destination.
    uint8_t *first = realloc(t->preamble, t->preamble_length + early);
    if (!first) {
      tunnel_finish(t, CLOSE_DESTINATION_RESET);
      return;
    }
    t->preamble = NULL;
    memcpy(first + t->preamble_length, t->head + t->head_used, early);
    bool open = forward(t, SIDE_CLIENT, first, t->preamble_length + early);
    free(first);
    if (!open) return;
  } else {
    // The reply goes first, then whatever the client pipelined after its head goes to the destination.
    if (!forward(t, SIDE_UPSTREAM, (const uint8_t *)CONNECT_ESTABLISHED, sizeof CONNECT_ESTABLISHED - 1)) return;
    if (early && !forward(t, SIDE_CLIENT, t->head + t->head_used, early)) return;
  }
  drop_head(t);
  update_interest(t);
}

static void start_dial(Tunnel *t, const struct sockaddr_storage *address, socklen_t address_length, uint32_t connect_ms, uint32_t idle_ms, uint32_t source) {
  if (t->state != ST_AWAIT) return;
  if (t->source < 0 && ensure_source(source)) {
    t->source = (int32_t)source;
    source_open[source]++;
  }
  int fd = socket(address->ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    dial_failed(t, errno_code(errno));
    return;
  }
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  t->fd[SIDE_UPSTREAM] = fd;
  t->interest[SIDE_UPSTREAM] = 0;
  t->idle_ms = idle_ms;
  t->state = ST_DIALING;
  t->deadline_ms = now_ms + connect_ms;
  if (connect(fd, (const struct sockaddr *)address, address_length) != 0 && errno != EINPROGRESS) {
    dial_failed(t, errno_code(errno));
    return;
  }
  set_interest(t, SIDE_UPSTREAM, EPOLLOUT);
}

static void refusal_end(Tunnel *t) {
  close_side(t, SIDE_CLIENT);
  tunnel_free(t);
}

/** Sends the refusal; once it is out, shuts the write half and waits for the client to close. */
static void refusal_writable(Tunnel *t) {
  Pending *p = &t->pending[SIDE_UPSTREAM];
  size_t sent;
  if (!send_pending(t->fd[SIDE_CLIENT], p, &sent)) {
    refusal_end(t);
    return;
  }
  if (p->length) {
    set_interest(t, SIDE_CLIENT, EPOLLOUT);
    return;
  }
  shutdown(t->fd[SIDE_CLIENT], SHUT_WR);
  set_interest(t, SIDE_CLIENT, EPOLLIN);
}

/** During a refusal, what the client sends is read and dropped until it closes. */
static void refusal_readable(Tunnel *t) {
  for (;;) {
    ssize_t n = recv(t->fd[SIDE_CLIENT], scratch, sizeof scratch, 0);
    if (n > 0) continue;
    if (n < 0 && (errno == EAGAIN || errno == EINTR)) return;
    refusal_end(t);
    return;
  }
}

static void start_refusal(Tunnel *t, Command *c) {
  if (t->state != ST_AWAIT) return;
  t->state = ST_REFUSING;
  t->deadline_ms = now_ms + 1000; // a client that does not close within a second is closed for it
  drop_head(t);
  if (c->length) {
    t->pending[SIDE_UPSTREAM] = (Pending){c->bytes, 0, c->length};
    c->bytes = NULL;
  }
  refusal_writable(t);
}

// ---- listeners ----

static void accept_ready(Listener *l) {
  for (int i = 0; i < 64; i++) {
    struct sockaddr_storage peer;
    socklen_t peer_length = sizeof peer;
    int fd = accept4(l->fd, (struct sockaddr *)&peer, &peer_length, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) {
      if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
        // Level-triggered readiness would spin on a full descriptor table: stop accepting for a moment.
        epoll_ctl(plane_epoll, EPOLL_CTL_DEL, l->fd, NULL);
        l->paused_until_ms = now_ms + 100;
      }
      return;
    }
    Tunnel *t = tunnel_new();
    if (!t) {
      close(fd);
      continue;
    }
    // TCP_NODELAY comes from the listening socket: Linux copies it to each accepted one.
    t->fd[SIDE_CLIENT] = fd;
    t->peer = peer;
    t->listener = l->id;
    t->max_head = l->max_head;
    t->accepted_ns = monotonic_ns();
    t->deadline_ms = now_ms + l->handshake_ms;
    t->state = ST_HEAD;
    set_interest(t, SIDE_CLIENT, EPOLLIN);
    head_readable(t); // the request is often there already
  }
}

static Listener *listener_find(uint32_t id) {
  for (uint32_t i = 0; i < listener_count; i++)
    if (listeners[i] && listeners[i]->id == id) return listeners[i];
  return NULL;
}

static void run_command(Command *c) {
  Tunnel *t = c->type >= CMD_DIAL ? tunnel_find(c->tunnel) : NULL;
  switch (c->type) {
    case CMD_ADD_LISTENER: {
      Listener *l = calloc(1, sizeof *l);
      Listener **grown = realloc(listeners, (listener_count + 1) * sizeof *listeners);
      if (!l || !grown) {
        free(l);
        close(c->fd);
        break;
      }
      listeners = grown;
      *l = (Listener){{1, NULL, 0}, c->fd, c->listener, c->max_head, c->handshake_ms, 0, false, NULL};
      listeners[listener_count++] = l;
      struct epoll_event ev = {.events = EPOLLIN, .data.ptr = &l->endpoint};
      epoll_ctl(plane_epoll, EPOLL_CTL_ADD, l->fd, &ev);
      break;
    }
    case CMD_CONFIGURE_LISTENER: {
      Listener *l = listener_find(c->listener);
      if (l) {
        l->max_head = c->max_head;
        l->handshake_ms = c->handshake_ms;
      }
      break;
    }
    case CMD_CLOSE_LISTENER:
      for (uint32_t i = 0; i < listener_count; i++) {
        Listener *l = listeners[i];
        if (!l || l->id != c->listener) continue;
        epoll_ctl(plane_epoll, EPOLL_CTL_DEL, l->fd, NULL);
        close(l->fd);
        l->closed = true;
        l->next_dead = dead_listeners;
        dead_listeners = l;
        listeners[i] = listeners[--listener_count];
        break;
      }
      break;
    case CMD_REMEMBER:
      remember_verdict(c);
      break;
    case CMD_FORGET:
      forget_verdicts();
      break;
    case CMD_DIAL:
      if (t && t->state == ST_AWAIT && c->bytes) {
        free(t->preamble);
        t->preamble = c->bytes;
        t->preamble_length = c->length;
        c->bytes = NULL;
      }
      if (t) start_dial(t, &c->address, c->address_length, c->connect_ms, c->idle_ms, c->source);
      break;
    case CMD_REFUSE:
      if (t) start_refusal(t, c);
      break;
    case CMD_HANDOFF:
      if (t && t->state == ST_AWAIT) tunnel_handoff(t);
      break;
    case CMD_ABORT:
      if (t && t->state == ST_REFUSING) {
        refusal_end(t);
      } else if (t) {
        tunnel_finish(t, CLOSE_ABORTED);
      }
      break;
  }
  free(c->bytes);
}

static void sweep(void) {
  for (uint32_t i = 0; i < listener_count; i++) {
    Listener *l = listeners[i];
    if (!l->paused_until_ms || now_ms < l->paused_until_ms) continue;
    l->paused_until_ms = 0;
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = &l->endpoint};
    epoll_ctl(plane_epoll, EPOLL_CTL_ADD, l->fd, &ev);
  }
  for (Tunnel *t = tunnels, *next; t; t = next) {
    next = t->next;
    switch (t->state) {
      case ST_HEAD:
        // The client is slow: JS gets it with the handshake deadline already past and answers 408.
        if (now_ms >= t->deadline_ms) tunnel_handoff(t);
        break;
      case ST_DIALING:
        if (now_ms >= t->deadline_ms) dial_failed(t, "CONNECT_DEADLINE");
        break;
      case ST_RELAY:
        if (t->idle_ms && now_ms - t->last_active_ms >= t->idle_ms) tunnel_finish(t, CLOSE_IDLE);
        break;
      case ST_REFUSING:
        if (now_ms >= t->deadline_ms) refusal_end(t);
        break;
    }
  }
}

static void flush_events(void) {
  if (!outgoing.count || (!outgoing_urgent && now_ms - outgoing_since_ms < RECORD_DELAY_MS)) return;
  outgoing_urgent = false;
  pthread_mutex_lock(&plane_lock);
  for (size_t i = 0; i < outgoing.count; i++) {
    Event *event = (Event *)outgoing.items + i;
    if (!queue_push(&events, event)) {
      for (int k = 0; k < 3; k++) free(event->text[k]);
      free(event->bytes);
      if (event->fd >= 0) close(event->fd);
    }
  }
  outgoing.count = 0;
  bool signal = !events_signalled && events.count;
  if (signal) events_signalled = true;
  pthread_mutex_unlock(&plane_lock);
  if (signal) napi_call_threadsafe_function(deliver, NULL, napi_tsfn_nonblocking);
}

#define SWEEP_MS 50

static void *plane_main(void *unused) {
  (void)unused;
  struct epoll_event ready[256];
  Queue taken = {NULL, 0, 0, sizeof(Command)};
  int64_t next_sweep = 0;
  for (;;) {
    // With no tunnel, no event waiting and no listener paused, nothing has a deadline: sleep until something happens.
    bool paused = false;
    for (uint32_t i = 0; i < listener_count; i++) paused = paused || listeners[i]->paused_until_ms;
    int timeout = outgoing.count ? RECORD_DELAY_MS : tunnels || paused ? SWEEP_MS : -1;
    int n = epoll_wait(plane_epoll, ready, 256, timeout);
    now_ms = monotonic_ns() / 1000000;
    for (int i = 0; i < n; i++) {
      Endpoint *e = ready[i].data.ptr;
      if (e->kind == 2) {
        uint64_t drained;
        if (read(plane_wake, &drained, sizeof drained) < 0) { /* nothing to drain */ }
        pthread_mutex_lock(&plane_lock);
        Queue swap = commands;
        commands = taken;
        taken = swap;
        commands.count = 0;
        wake_pending = false;
        pthread_mutex_unlock(&plane_lock);
        for (size_t k = 0; k < taken.count; k++) run_command((Command *)taken.items + k);
        taken.count = 0;
        continue;
      }
      if (e->kind == 1) {
        Listener *l = (Listener *)((char *)e - offsetof(Listener, endpoint));
        if (!l->closed && !l->paused_until_ms) accept_ready(l);
        continue;
      }
      Tunnel *t = e->tunnel;
      if (t->state == ST_DEAD || t->fd[e->side] < 0) continue;
      uint32_t what = ready[i].events;
      switch (t->state) {
        case ST_HEAD:
          head_readable(t);
          break;
        case ST_AWAIT:
          if (e->side == SIDE_CLIENT) set_interest(t, SIDE_CLIENT, 0); // see head_readable
          break;
        case ST_DIALING:
          if (e->side == SIDE_UPSTREAM) dial_writable(t);
          else set_interest(t, SIDE_CLIENT, 0);
          break;
        case ST_RELAY:
          if (what & (EPOLLOUT | EPOLLERR | EPOLLHUP) && t->pending[!e->side].length) {
            relay_writable(t, e->side);
            if (t->state == ST_DEAD) break;
          }
          if (what & (EPOLLIN | EPOLLERR | EPOLLHUP) && !t->eof[e->side] && !t->pending[e->side].length) relay_readable(t, e->side);
          break;
        case ST_REFUSING:
          if (what & (EPOLLOUT | EPOLLERR) && t->pending[SIDE_UPSTREAM].length) {
            refusal_writable(t);
            if (t->state == ST_DEAD) break;
          }
          if (what & (EPOLLIN | EPOLLHUP | EPOLLERR) && !t->pending[SIDE_UPSTREAM].length) refusal_readable(t);
          break;
      }
    }
    if (now_ms >= next_sweep) {
      sweep();
      next_sweep = now_ms + SWEEP_MS;
    }
    flush_events();
    bury_dead();
  }
  return NULL;
}

// ---- the JS side ----

static napi_value number(napi_env env, double value) {
  napi_value out;
  napi_create_double(env, value, &out);
  return out;
}

static napi_value text_or_undefined(napi_env env, const char *text) {
  napi_value out;
  if (text) napi_create_string_latin1(env, text, NAPI_AUTO_LENGTH, &out);
  else napi_get_undefined(env, &out);
  return out;
}

/** On the JS thread: every queued event, flattened into one array, to the callback given to start(). */
static void call_js(napi_env env, napi_value callback, void *context, void *data) {
  (void)context;
  (void)data;
  pthread_mutex_lock(&plane_lock);
  Queue batch = events;
  events = (Queue){NULL, 0, 0, sizeof(Event)};
  events_signalled = false;
  pthread_mutex_unlock(&plane_lock);
  if (!env) {
    free(batch.items);
    return;
  }
  napi_handle_scope scope;
  napi_open_handle_scope(env, &scope);
  napi_value list;
  napi_create_array(env, &list);
  uint32_t at = 0;
  int64_t now = monotonic_ns();
#define PUSH(value) napi_set_element(env, list, at++, (value))
  for (size_t i = 0; i < batch.count; i++) {
    Event *e = (Event *)batch.items + i;
    PUSH(number(env, e->type));
    switch (e->type) {
      case EV_CONNECT:
        PUSH(number(env, e->listener));
        PUSH(number(env, e->tunnel));
        PUSH(text_or_undefined(env, e->text[0] ? e->text[0] : ""));
        PUSH(number(env, e->numbers[0]));
        PUSH(text_or_undefined(env, e->text[1]));
        PUSH(text_or_undefined(env, e->text[2]));
        PUSH(number(env, (double)(now - e->accepted_ns) / 1e6));
        PUSH(number(env, e->numbers[1]));
        break;
      case EV_HANDOFF: {
        napi_value bytes;
        void *copy;
        napi_create_buffer_copy(env, e->length, e->bytes ? (void *)e->bytes : (void *)"", &copy, &bytes);
        PUSH(number(env, e->listener));
        PUSH(number(env, e->tunnel));
        PUSH(number(env, e->fd));
        PUSH(bytes);
        PUSH(number(env, (double)(now - e->accepted_ns) / 1e6));
        break;
      }
      case EV_REQUEST: {
        napi_value bytes;
        void *copy;
        napi_create_buffer_copy(env, e->length, e->bytes, &copy, &bytes);
        PUSH(number(env, e->listener));
        PUSH(number(env, e->tunnel));
        PUSH(text_or_undefined(env, e->text[0] ? e->text[0] : ""));
        PUSH(number(env, e->numbers[0]));
        PUSH(bytes);
        PUSH(number(env, (double)(now - e->accepted_ns) / 1e6));
        break;
      }
      case EV_DIAL_FAILED:
        PUSH(number(env, e->tunnel));
        PUSH(text_or_undefined(env, e->text[0]));
        break;
      case EV_CLOSED:
        PUSH(number(env, e->tunnel));
        PUSH(number(env, e->numbers[0]));
        PUSH(number(env, e->numbers[1]));
        PUSH(number(env, e->numbers[2]));
        PUSH(number(env, e->numbers[3]));
        break;
    }
    for (int k = 0; k < 3; k++) free(e->text[k]);
    free(e->bytes);
  }
#undef PUSH
  free(batch.items);
  napi_value global;
  napi_get_global(env, &global);
  napi_call_function(env, global, callback, 1, &list, NULL);
  napi_close_handle_scope(env, scope);
}

static void send_command(Command *c) {
  pthread_mutex_lock(&plane_lock);
  int queued = queue_push(&commands, c);
  bool wake = queued && !wake_pending;
  if (wake) wake_pending = true;
  pthread_mutex_unlock(&plane_lock);
  if (!queued) free(c->bytes);
  if (wake) {
    wake_thread(plane_wake);
  }
}

static bool started = false;
static Endpoint wake_endpoint = {2, NULL, 0};

/** start(callback): the plane thread; events reach `callback(flatArray)`. Once per process. */
static napi_value start(napi_env env, napi_callback_info info) {
  ARGS(1);
  if (started) return NULL;
  plane_epoll = epoll_create1(EPOLL_CLOEXEC);
  plane_wake = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (plane_epoll < 0 || plane_wake < 0) return throw_error(env, errno_code(errno), "cannot create the egress plane's epoll");
  struct epoll_event ev = {.events = EPOLLIN, .data.ptr = &wake_endpoint};
  epoll_ctl(plane_epoll, EPOLL_CTL_ADD, plane_wake, &ev);
  napi_value name;
  napi_create_string_utf8(env, "custos egress plane", NAPI_AUTO_LENGTH, &name);
  if (napi_create_threadsafe_function(env, argv[0], NULL, name, 0, 1, NULL, NULL, NULL, call_js, &deliver) != napi_ok)
    return throw_error(env, "ERR_NAPI", "cannot create the egress plane's callback");
  napi_unref_threadsafe_function(env, deliver);
  if (pthread_create(&plane_thread, NULL, plane_main, NULL) != 0) return throw_error(env, "ERR_THREAD", "cannot start the egress plane thread");
  pthread_detach(plane_thread);
  started = true;
  return NULL;
}

/** hold(bool): whether the plane keeps the process alive (while it has listeners or tunnels). */
static napi_value hold(napi_env env, napi_callback_info info) {
  return hold_callback(env, info, deliver);
}

static int parse_address(const char *text, int port, struct sockaddr_storage *out, socklen_t *length) {
  memset(out, 0, sizeof *out);
  struct sockaddr_in *v4 = (struct sockaddr_in *)out;
  struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)out;
  if (inet_pton(AF_INET, text, &v4->sin_addr) == 1) {
    v4->sin_family = AF_INET;
    v4->sin_port = htons((uint16_t)port);
    *length = sizeof *v4;
    return 1;
  }
  if (inet_pton(AF_INET6, text, &v6->sin6_addr) == 1) {
    v6->sin6_family = AF_INET6;
    v6->sin6_port = htons((uint16_t)port);
    *length = sizeof *v6;
    return 1;
  }
  return 0;
}

static int read_address(napi_env env, napi_value value, double port, struct sockaddr_storage *out, socklen_t *length) {
  char text[INET6_ADDRSTRLEN + 1];
  size_t copied = 0;
  if (napi_get_value_string_latin1(env, value, text, sizeof text, &copied) != napi_ok) return 0;
  return port >= 0 && port <= 65535 && parse_address(text, (int)port, out, length);
}

static uint32_t next_listener_id = 1;

/** listen(ip, port, maxHeadBytes, handshakeMs) → [id, boundIp, boundPort]; throws with the errno code. */
static napi_value listen_on(napi_env env, napi_callback_info info) {
  ARGS(4);
  Command c = {.type = CMD_ADD_LISTENER};
  if (!read_address(env, argv[0], arg_number(env, argv[1]), &c.address, &c.address_length))
    return throw_error(env, "ERR_INVALID_ADDRESS", "listen address must be an IP literal");
  int fd = socket(c.address.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return throw_error(env, errno_code(errno), strerror(errno));
  int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  // The kernel hands over a connection once its first bytes (the request head) are there: a wake-up and an empty
  // read fewer per tunnel. A client that stays silent is still accepted after about a second, and met by the
  // handshake deadline as before.
  setsockopt(fd, IPPROTO_TCP, TCP_DEFER_ACCEPT, &one, sizeof one);
  if (bind(fd, (struct sockaddr *)&c.address, c.address_length) != 0 || listen(fd, 4096) != 0) {
    int error = errno;
    close(fd);
    return throw_error(env, errno_code(error), strerror(error));
  }
  struct sockaddr_storage bound;
  socklen_t bound_length = sizeof bound;
  getsockname(fd, (struct sockaddr *)&bound, &bound_length);
  char address[INET6_ADDRSTRLEN] = "";
  int port;
  if (bound.ss_family == AF_INET6) {
    inet_ntop(AF_INET6, &((struct sockaddr_in6 *)&bound)->sin6_addr, address, sizeof address);
    port = ntohs(((struct sockaddr_in6 *)&bound)->sin6_port);
  } else {
    inet_ntop(AF_INET, &((struct sockaddr_in *)&bound)->sin_addr, address, sizeof address);
    port = ntohs(((struct sockaddr_in *)&bound)->sin_port);
  }
  c.fd = fd;
  c.listener = next_listener_id++;
  c.max_head = (uint32_t)arg_number(env, argv[2]);
  c.handshake_ms = (uint32_t)arg_number(env, argv[3]);
  send_command(&c);
  napi_value out, address_value;
  napi_create_array_with_length(env, 3, &out);
  napi_create_string_latin1(env, address, NAPI_AUTO_LENGTH, &address_value);
  napi_set_element(env, out, 0, number(env, c.listener));
  napi_set_element(env, out, 1, address_value);
  napi_set_element(env, out, 2, number(env, port));
  return out;
}

/** configureListener(id, maxHeadBytes, handshakeMs): new limits for connections accepted from now on. */
static napi_value configure_listener(napi_env env, napi_callback_info info) {
  ARGS(3);
  Command c = {.type = CMD_CONFIGURE_LISTENER, .listener = (uint32_t)arg_number(env, argv[0])};
  c.max_head = (uint32_t)arg_number(env, argv[1]);
  c.handshake_ms = (uint32_t)arg_number(env, argv[2]);
  send_command(&c);
  return NULL;
}

/** closeListener(id): stops accepting; open tunnels go on. */
static napi_value close_listener(napi_env env, napi_callback_info info) {
  ARGS(1);
  Command c = {.type = CMD_CLOSE_LISTENER, .listener = (uint32_t)arg_number(env, argv[0])};
  send_command(&c);
  return NULL;
}

static napi_value boolean(napi_env env, bool value) {
  napi_value out;
  napi_get_boolean(env, value, &out);
  return out;
}

/** A dial's arguments, `ip, port, connectTimeoutMs, idleMs, source`, from argv[0]; false when ip is not an IP literal. */
static bool read_dial(napi_env env, const napi_value *argv, Command *c) {
  if (!read_address(env, argv[0], arg_number(env, argv[1]), &c->address, &c->address_length)) return false;
  c->connect_ms = (uint32_t)arg_number(env, argv[2]);
  c->idle_ms = (uint32_t)arg_number(env, argv[3]);
  c->source = (uint32_t)arg_number(env, argv[4]);
  return true;
}

/**
 * dial(tunnel, ip, port, connectTimeoutMs, idleMs, source, preamble?) → false when ip is not an IP literal. With a
 * preamble (a Buffer), the tunnel sends it to the destination first and the client gets no 200 (forward HTTP).
 */
static napi_value dial(napi_env env, napi_callback_info info) {
  size_t argc = 7;
  napi_value argv[7];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  if (argc < 6) return throw_error(env, "ERR_INVALID_ARG", "missing argument");
  Command c = {.type = CMD_DIAL, .tunnel = arg_number(env, argv[0])};
  if (!read_dial(env, argv + 1, &c)) return boolean(env, false);
  void *data;
  size_t length = 0;
  if (argc == 7 && napi_get_buffer_info(env, argv[6], &data, &length) == napi_ok && length) {
    c.bytes = malloc(length);
    if (!c.bytes) return throw_error(env, "ENOMEM", "out of memory");
    memcpy(c.bytes, data, length);
    c.length = length;
  }
  send_command(&c);
  return boolean(env, true);
}

/**
 * remember(listener, authorization, target, verdict, ip, port, connectTimeoutMs, idleMs, source, sourceLimit): the
 * plane dials repeats of this CONNECT itself, reporting `verdict` in their connect events. False when ip is not an IP
 * literal or the key is too long to keep.
 */
static napi_value remember(napi_env env, napi_callback_info info) {
  ARGS(10);
  Command c = {.type = CMD_REMEMBER, .verdict = arg_number(env, argv[3])};
  char auth[512], target[512];
  size_t auth_length = 0, target_length = 0;
  napi_valuetype auth_type;
  napi_typeof(env, argv[1], &auth_type);
  bool ok = read_dial(env, argv + 4, &c);
  if (ok && auth_type == napi_string) ok = napi_get_value_string_latin1(env, argv[1], auth, sizeof auth, &auth_length) == napi_ok && auth_length < sizeof auth - 1;
  if (ok) ok = napi_get_value_string_latin1(env, argv[2], target, sizeof target, &target_length) == napi_ok && target_length < sizeof target - 1;
  uint8_t key[1024];
  size_t key_length = ok ? verdict_key(key, sizeof key, (uint32_t)arg_number(env, argv[0]), (uint8_t *)auth, auth_length, (uint8_t *)target, target_length) : 0;
  if (key_length) c.bytes = malloc(key_length);
  if (!c.bytes) return boolean(env, false);
  memcpy(c.bytes, key, key_length);
  c.length = key_length;
  c.source_limit = (uint32_t)arg_number(env, argv[9]);
  send_command(&c);
  return boolean(env, true);
}

/** forget(): drops every verdict (a reload); connections already dialled keep theirs. */
static napi_value forget(napi_env env, napi_callback_info info) {
  Command c = {.type = CMD_FORGET};
  send_command(&c);
  return NULL;
}

/** refuse(tunnel, reply: Buffer): sends the reply, closes; no further event for this tunnel. */
static napi_value refuse(napi_env env, napi_callback_info info) {
  ARGS(2);
  Command c = {.type = CMD_REFUSE, .tunnel = arg_number(env, argv[0])};
  void *data;
  size_t length = 0;
  if (napi_get_buffer_info(env, argv[1], &data, &length) != napi_ok) return throw_error(env, "ERR_INVALID_ARG", "reply must be a Buffer");
  if (length) {
    c.bytes = malloc(length);
    if (!c.bytes) return throw_error(env, "ENOMEM", "out of memory");
    memcpy(c.bytes, data, length);
    c.length = length;
  }
  send_command(&c);
  return NULL;
}

static napi_value tunnel_command(napi_env env, napi_callback_info info, int type) {
  ARGS(1);
  Command c = {.type = type, .tunnel = arg_number(env, argv[0])};
  send_command(&c);
  return NULL;
}

/** handoff(tunnel): the client socket comes back to JS as an EV_HANDOFF event. */
static napi_value handoff(napi_env env, napi_callback_info info) {
  return tunnel_command(env, info, CMD_HANDOFF);
}

/** abort(tunnel): closes both sides now; EV_CLOSED follows with reason aborted. */
static napi_value abort_tunnel(napi_env env, napi_callback_info info) {
  return tunnel_command(env, info, CMD_ABORT);
}

static napi_value init(napi_env env, napi_value exports) {
  napi_property_descriptor properties[] = {
      {"start", NULL, start, NULL, NULL, NULL, napi_default, NULL},
      {"hold", NULL, hold, NULL, NULL, NULL, napi_default, NULL},
      {"listen", NULL, listen_on, NULL, NULL, NULL, napi_default, NULL},
      {"configureListener", NULL, configure_listener, NULL, NULL, NULL, napi_default, NULL},
      {"closeListener", NULL, close_listener, NULL, NULL, NULL, napi_default, NULL},
      {"dial", NULL, dial, NULL, NULL, NULL, napi_default, NULL},
      {"remember", NULL, remember, NULL, NULL, NULL, napi_default, NULL},
      {"forget", NULL, forget, NULL, NULL, NULL, napi_default, NULL},
      {"refuse", NULL, refuse, NULL, NULL, NULL, napi_default, NULL},
      {"handoff", NULL, handoff, NULL, NULL, NULL, napi_default, NULL},
      {"abort", NULL, abort_tunnel, NULL, NULL, NULL, napi_default, NULL},
  };
  napi_define_properties(env, exports, sizeof properties / sizeof *properties, properties);
  return exports;
}

#ifndef CUSTOS_EGRESS_FUZZ // native/fuzz/egress-head.c includes this file without Node
NAPI_MODULE(NODE_GYP_MODULE_NAME, init)
#endif
