// N-API helpers shared by the addons that run a thread of their own (egress.c, pgrelay.c).
#ifndef CUSTOS_ADDON_H
#define CUSTOS_ADDON_H
#include <node_api.h>
#include <stdint.h>
#include <unistd.h>

static napi_value throw_error(napi_env env, const char *code, const char *message) {
  napi_value error_code, error_message, error;
  napi_create_string_utf8(env, code, NAPI_AUTO_LENGTH, &error_code);
  napi_create_string_utf8(env, message, NAPI_AUTO_LENGTH, &error_message);
  napi_create_error(env, error_code, error_message, &error);
  napi_set_named_property(env, error, "code", error_code);
  napi_throw(env, error);
  return NULL;
}

#define ARGS(n)                                                   \
  size_t argc = n;                                                \
  napi_value argv[n];                                             \
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);           \
  if (argc < n) return throw_error(env, "ERR_INVALID_ARG", "missing argument")

static double arg_number(napi_env env, napi_value value) {
  double out = 0;
  napi_get_value_double(env, value, &out);
  return out;
}

/** hold(bool) for a thread's callback: whether it keeps the process alive. */
static napi_value hold_callback(napi_env env, napi_callback_info info, napi_threadsafe_function callback) {
  ARGS(1);
  bool on = false;
  napi_get_value_bool(env, argv[0], &on);
  if (on) napi_ref_threadsafe_function(env, callback);
  else napi_unref_threadsafe_function(env, callback);
  return NULL;
}

/** Wakes a thread blocked in epoll_wait on `eventfd`. */
static void wake_thread(int eventfd) {
  uint64_t one = 1;
  if (write(eventfd, &one, sizeof one) < 0) { /* the counter is already non-zero */ }
}

#endif
