// libFuzzer harness for what the egress plane reads from untrusted clients: the request head, fed through a socket
// pair in chunks of a size the input chooses, under a head limit the input chooses, exactly as the plane thread reads
// it (head_readable). Checks, besides what AddressSanitizer and UBSan catch: a connection either stays waiting, is
// handed over with every byte read, yields a connect event whose target and credentials are plain header text, or a
// forward request event carrying exactly its head.
//
//   clang-14 -g -O1 -fsanitize=fuzzer,address,undefined -DCUSTOS_EGRESS_FUZZ -I/usr/include/node \
//     native/fuzz/egress-head.c -o /tmp/egress-head-fuzz -Wl,--unresolved-symbols=ignore-all
//   /tmp/egress-head-fuzz -max_total_time=300 -max_len=4096 native/fuzz/corpus
#include "../egress.c"

static void check_text(const char *text, bool is_target) {
  if (!text) abort();
  size_t length = strlen(text);
  if (is_target && length == 0) abort();
  for (size_t i = 0; i < length; i++) {
    uint8_t c = (uint8_t)text[i];
    if (is_target && (c <= 0x20 || c >= 0x7f)) abort();
    if (!is_target && ((c < 0x20 && c != '\t') || c == 0x7f)) abort();
  }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 2) return 0;
  uint32_t max_head = 16 + (uint32_t)data[0] * 16;
  size_t chunk = 1 + data[1] % 97;
  data += 2;
  size -= 2;
  int pair[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, pair) != 0) return 0;
  Tunnel *t = tunnel_new();
  t->fd[SIDE_CLIENT] = pair[0];
  t->max_head = max_head;
  t->listener = 1;
  t->state = ST_HEAD;
  size_t written = 0;
  while (t->state == ST_HEAD && written < size) {
    size_t n = size - written < chunk ? size - written : chunk;
    if (write(pair[1], data + written, n) != (ssize_t)n) abort();
    written += n;
    head_readable(t);
  }
  if (t->state == ST_HEAD) {
    close(pair[1]);
    pair[1] = -1;
    head_readable(t); // the end of the input: handed over
    if (t->state == ST_HEAD) abort();
  }
  for (size_t i = 0; i < outgoing.count; i++) {
    Event *e = (Event *)outgoing.items + i;
    if (e->type == EV_CONNECT) {
      if (t->state != ST_AWAIT || t->head_used > max_head || memcmp(t->head, "CONNECT ", 8) != 0) abort();
      check_text(e->text[1], true);
      if (e->text[2]) check_text(e->text[2], false);
    } else if (e->type == EV_REQUEST) {
      // A forward request's whole head, as sent, ending in the blank line, within the limit.
      if (t->state != ST_AWAIT || e->length > max_head || e->length < 4 || memcmp(e->bytes, data, e->length) != 0) abort();
      if (memcmp(e->bytes + e->length - 4, "\r\n\r\n", 4) != 0) abort();
      check_text(e->text[0], false);
    } else if (e->type == EV_HANDOFF) {
      // Every byte the client sent so far goes to the socket path, in order.
      if (e->length > written || (e->length && memcmp(e->bytes, data, e->length) != 0)) abort();
      close(e->fd);
    } else {
      abort();
    }
    for (int k = 0; k < 3; k++) free(e->text[k]);
    free(e->bytes);
  }
  outgoing.count = 0;
  if (t->state == ST_AWAIT) {
    close_side(t, SIDE_CLIENT);
    tunnel_free(t);
  }
  bury_dead();
  if (pair[1] >= 0) close(pair[1]);
  return 0;
}
